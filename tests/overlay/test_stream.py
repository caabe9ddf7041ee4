"""The TCP fallback's framing and link protocol, without a network (overlay/stream.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.overlay.stream import (
    MAX_DATAGRAM,
    FrameReader,
    FramingError,
    StreamLink,
    frame,
    is_stream_address,
    link_label,
)
from funnel_tw.overlay.tunnel import display_endpoint

datagrams = st.lists(st.binary(min_size=1, max_size=1500), max_size=20)


class FramingTests(SynchronousTestCase):
    @given(datagrams, st.lists(st.integers(1, 4000), max_size=30))
    def test_any_split_gives_back_the_datagrams(self, sent: list[bytes], cuts: list[int]) -> None:
        stream = b"".join(frame(d) for d in sent)
        reader = FrameReader()
        got: list[bytes] = []
        offset = 0
        for cut in cuts:
            got += reader.feed(stream[offset : offset + cut])
            offset += cut
        got += reader.feed(stream[offset:])
        self.assertEqual(got, sent)
        self.assertEqual(reader.buffer, b"")

    @given(st.binary(max_size=3000))
    def test_hostile_bytes_bounded(self, data: bytes) -> None:
        """Whatever comes in: whole datagrams, a FramingError, or at most one partial frame."""
        reader = FrameReader()
        try:
            out = reader.feed(data)
        except FramingError:
            return
        self.assertTrue(all(0 < len(d) <= MAX_DATAGRAM for d in out))
        self.assertLess(len(reader.buffer), 2 + MAX_DATAGRAM)

    def test_zero_length_is_an_error(self) -> None:
        with self.assertRaises(FramingError):
            FrameReader().feed(b"\x00\x00")

    def test_oversize_is_an_error(self) -> None:
        with self.assertRaises(FramingError):
            FrameReader().feed(b"\xff\xff")
        with self.assertRaises(ValueError):
            frame(b"")

    def test_pseudo_address(self) -> None:
        link = StreamLink(Clock(), "192.0.2.1:443", _no, _no, _no)
        self.assertTrue(is_stream_address(link.address))
        self.assertFalse(is_stream_address(("192.0.2.1", 443)))
        self.assertFalse(is_stream_address(("tcp://x", 1)))
        self.assertEqual(link_label(link.address), "192.0.2.1:443")
        self.assertEqual(display_endpoint(link.address), "tcp://192.0.2.1:443")


def _no(*args: object) -> None:
    pass


class TCPTransport(StringTransport):
    """A StringTransport with the Nagle switch of a TCP one."""

    nodelay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.nodelay = enabled


class LinkTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.delivered: list[tuple[list[bytes], object]] = []
        self.events: list[str] = []
        self.link = StreamLink(
            self.clock,
            "198.51.100.2:5000",
            lambda d, a: self.delivered.append((d, a)),
            lambda link: self.events.append("open"),
            lambda link, why: self.events.append(f"closed: {why}"),
            idle=60.0,
        )
        self.transport = TCPTransport()
        self.link.makeConnection(self.transport)

    def test_no_nagle(self) -> None:
        """A datagram goes out when sent, not after the peer acknowledged the one before."""
        self.assertTrue(self.transport.nodelay)

    def test_datagrams_in_and_out(self) -> None:
        self.assertEqual(self.events, ["open"])
        self.link.dataReceived(frame(b"one") + frame(b"two")[:3])
        self.link.dataReceived(frame(b"two")[3:])
        self.assertEqual(
            self.delivered, [([b"one"], self.link.address), ([b"two"], self.link.address)]
        )
        self.link.send([b"abc", b"de"])
        self.assertEqual(self.transport.value(), frame(b"abc") + frame(b"de"))

    def test_full_stream_drops_and_counts(self) -> None:
        """UDP's semantics on the way out: no queue without bound while TCP is backed up."""
        self.assertIs(self.transport.producer, self.link)
        self.link.pauseProducing()
        self.link.send([b"x" * 1000] * 5)
        self.assertEqual((self.transport.value(), self.link.dropped), (b"", 5))
        self.link.resumeProducing()
        self.link.send([b"y"])
        self.assertEqual(self.transport.value(), frame(b"y"))

    def test_garbage_closes(self) -> None:
        self.link.dataReceived(b"\x00\x00junk")
        self.assertTrue(self.transport.disconnecting)
        self.link.connectionLost()
        self.assertEqual(self.events[-1], "closed: not a framed datagram stream (frame length 0)")

    def test_idle_link_closes(self) -> None:
        self.clock.advance(59)
        self.link.dataReceived(frame(b"keepalive"))
        self.clock.advance(59)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)
        self.link.connectionLost()
        self.assertEqual(self.events[-1], "closed: no datagram for 60 s")
        self.assertEqual(self.clock.getDelayedCalls(), [])
