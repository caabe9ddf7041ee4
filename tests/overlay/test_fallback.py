"""When the node moves a relay peer to the TCP fallback and back (overlay/fallback.py).

Fed a fake clock, a memory reactor for the dial and a stand-in device; the real path (nftables
dropping UDP, the relay's public port) is tests/e2e/test_fallback.py.
"""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.overlay.fallback import AFTER, TCPFallback
from funnel_tw.overlay.stream import ALPN, frame, is_stream_address

UDP = ("203.0.113.1", 41641)


class FakePeer:
    name = "relay"

    def __init__(self) -> None:
        self.endpoint: Any = UDP
        self.handshake_attempts = 1
        self.last_handshake: float | None = None
        self.rx_bytes = 0


class FakeDevice:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.probe_ok = True

    def handshake_now(self, peer: FakePeer, now: float) -> None:
        self.calls.append(("handshake", peer.endpoint))

    def probe(self, peer: FakePeer, endpoint: Any, now: float) -> bool:
        self.calls.append(("probe", endpoint))
        return self.probe_ok


class FakeTunnel:
    def __init__(self) -> None:
        self.streams: dict[Any, Any] = {}
        self.received: list[tuple[list[bytes], Any]] = []

    def attach_stream(self, address: Any, sink: Any) -> None:
        self.streams[address] = sink

    def detach_stream(self, address: Any) -> None:
        self.streams.pop(address, None)

    def receive_stream(self, datagrams: list[bytes], address: Any) -> None:
        self.received.append((datagrams, address))

    def after_work(self) -> None:
        pass


class FallbackTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.peer = FakePeer()
        self.device = FakeDevice()
        self.tunnel = FakeTunnel()
        self.watch = TCPFallback(
            self.reactor,
            lambda: self.tunnel,  # type: ignore[arg-type, return-value]
            self.device,  # type: ignore[arg-type]
            self.peer,  # type: ignore[arg-type]
            ("relay.example", 443),
            probe_every=60.0,
        )
        self.watch.start()

    def tick(self, seconds: float) -> None:
        for _ in range(int(seconds)):
            self.reactor.advance(1.0)

    def open_link(self) -> StringTransport:
        self.tick(AFTER + 1)
        (host, port, factory, options, _timeout, _), *_ = self.reactor.sslClients
        self.assertEqual((host, port), ("relay.example", 443))
        self.assertEqual(options._acceptableProtocols, [ALPN])
        transport = StringTransport()
        factory.buildProtocol(None).makeConnection(transport)
        return transport

    def test_udp_working_never_dials(self) -> None:
        self.peer.handshake_attempts = 0
        self.peer.last_handshake = 0.0
        for _ in range(200):
            self.peer.rx_bytes += 100  # keepalives keep coming
            self.reactor.advance(1.0)
        self.assertEqual(self.reactor.sslClients, [])
        self.assertEqual(self.watch.mode, "udp")

    def test_unanswered_handshake_dials_after_a_rekey_timeout(self) -> None:
        self.tick(AFTER - 1)
        self.assertEqual(self.reactor.sslClients, [])
        transport = self.open_link()
        link = self.watch.link
        assert link is not None
        self.assertEqual(self.watch.mode, "tcp")
        self.assertTrue(is_stream_address(self.peer.endpoint))
        self.assertIs(self.tunnel.streams[self.peer.endpoint], link)
        # the handshake goes through the link at once, whatever the rate limit
        self.assertEqual(self.device.calls, [("handshake", link.address)])
        link.dataReceived(frame(b"from relay"))
        self.assertEqual(self.tunnel.received, [([b"from relay"], link.address)])
        self.assertFalse(transport.disconnecting)

    def test_silent_session_dials_too(self) -> None:
        """A session that was up and went quiet (UDP blocked later) counts as failing."""
        self.peer.handshake_attempts = 0
        self.peer.last_handshake = 0.0
        self.tick(74)
        self.assertEqual(self.reactor.sslClients, [])
        self.tick(2)
        self.assertEqual(len(self.reactor.sslClients), 1)

    def test_probe_only_when_settled_and_back_to_udp(self) -> None:
        transport = self.open_link()
        link = self.watch.link
        assert link is not None
        self.tick(70)  # handshake not complete yet: no probe may replace it
        self.assertNotIn(("probe", UDP), self.device.calls)
        self.peer.handshake_attempts = 0
        self.peer.last_handshake = self.reactor.seconds()
        self.tick(2)
        self.assertEqual(self.device.calls[-1], ("probe", UDP))
        # the relay answered over UDP: roaming put the peer back there
        self.peer.endpoint = ("203.0.113.1", 41641)
        self.tick(1)
        self.assertTrue(transport.disconnecting)
        link.connectionLost(Failure(ConnectionRefusedError()))
        self.assertEqual((self.watch.mode, self.watch.counters["back_to_udp"]), ("udp", 1))
        self.assertEqual(self.tunnel.streams, {})

    def test_probes_back_off_while_udp_stays_blocked(self) -> None:
        self.open_link()
        self.peer.handshake_attempts = 0
        probes: list[float] = []
        for _ in range(400):
            self.peer.last_handshake = self.reactor.seconds()
            before = len(self.device.calls)
            self.reactor.advance(1.0)
            if len(self.device.calls) > before:
                probes.append(self.reactor.seconds())
        gaps = [b - a for a, b in itertools.pairwise(probes)]
        self.assertEqual(gaps[:2], [60.0, 120.0])  # then 240, 480... up to 600

    def test_failed_dial_backs_off(self) -> None:
        self.tick(AFTER + 1)
        when: list[float] = []
        for _ in range(4):
            connector_factory = self.reactor.sslClients[-1][2]
            connector_factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
            before = len(self.reactor.sslClients)
            while len(self.reactor.sslClients) == before:
                self.reactor.advance(1.0)
            when.append(self.reactor.seconds())
        gaps = [b - a for a, b in itertools.pairwise(when)]
        self.assertEqual(gaps, [4.0, 8.0, 16.0])
        self.assertEqual(self.watch.counters["link_failures"], 4)

    def test_link_lost_returns_to_udp(self) -> None:
        self.open_link()
        link = self.watch.link
        assert link is not None
        link.connectionLost(Failure(ConnectionRefusedError()))
        self.assertEqual(self.peer.endpoint, UDP)
        self.assertEqual(self.watch.mode, "udp")
