"""HTTP/2 abuse classes against the node's HTTPS port, end to end (raw frames over TLS through
the harness's front and the peerAPI ingress): each ends in a closed connection (GOAWAY first)
with the node's memory bounded, and the node serves an ordinary HTTP/2 request afterwards.

Memory is measured with tracemalloc over the whole process (node, front and the client's
thread): what the node keeps of a flood shows as growth that the close does not give back.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
)
from twisted.internet import reactor, task, threads
from twisted.trial.unittest import TestCase

from funnel_tw.web.httplimits import HTTPLimits
from tests.serve.harness import HOSTNAME, ServeHarness
from tests.serve.rawh2 import RawH2, h2_get

ENHANCE_YOUR_CALM, PROTOCOL_ERROR = 0xB, 0x1
MIB = 1 << 20


def request_block(stream: int = 1, path: str = "/") -> bytes:
    return hpack.Encoder().encode(
        [(":method", "GET"), (":path", path), (":authority", HOSTNAME), (":scheme", "https")]
    )


class HTTP2AbuseTests(TestCase):
    timeout = 120

    async def setUp(self) -> None:  # type: ignore[override]
        files = Path(self.mktemp()).absolute()
        files.mkdir()
        (files / "big.bin").write_bytes(b"x" * (1 << 20))
        self.harness = ServeHarness(
            self, f"[serve 443]\nfunnel = yes\n/ = text:ok\n/files/ = {files}\n"
        )
        # last cleanup but the harness's: the front's ends see the clients' closes first
        self.addCleanup(task.deferLater, reactor, 0.5, lambda: None)
        dispatcher = self.harness.node.dispatcher
        dispatcher.close_timeout = 1.0
        dispatcher.http_timeout = 3.0
        dispatcher.http_limits = HTTPLimits(head_timeout=1.0)
        self.dispatcher = dispatcher
        _, self.port = self.harness.front(443)
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)

    def traced(self) -> int:
        gc.collect()
        return tracemalloc.get_traced_memory()[0]

    async def client(self, settings: dict[int, int] | None = None) -> RawH2:
        raw: RawH2 = await threads.deferToThread(RawH2, self.port, self.harness.ca_file, settings)
        self.addCleanup(raw.close)
        return raw

    async def node_settings(self, raw: RawH2) -> dict[int, int]:
        """The node's first SETTINGS (read within 5 s)."""
        for _ in range(10):
            await self.in_thread(raw.drain, 0.5)
            found = [f for f in raw.frames() if isinstance(f, SettingsFrame) and not f.flags]
            if found:
                return dict(found[0].settings)
        self.fail(f"no SETTINGS from the node: {raw.received[:40]!r} {raw.closed} {raw.error!r}")

    async def in_thread(self, f: Any, *args: Any) -> Any:
        return await threads.deferToThread(f, *args)

    async def still_serving(self) -> None:
        status, body = await threads.deferToThread(h2_get, self.port, self.harness.ca_file)
        self.assertEqual((status, body), (200, b"ok"))

    async def assertClosedWithGoaway(self, raw: RawH2, code: int, seconds: float = 5.0) -> None:
        closed = await self.in_thread(raw.wait_closed, seconds)
        self.assertTrue(closed, "the node kept the connection open")
        goaway = raw.goaway()
        self.assertIsNotNone(goaway, f"no GOAWAY before the close: {raw.frames()[-3:]}")
        assert goaway is not None
        self.assertEqual(goaway.error_code, code)

    # --- the header block ------------------------------------------------------------------

    async def test_continuation_flood(self) -> None:
        """CVE-2024-27316: HEADERS without END_HEADERS, then CONTINUATION frames without end.
        The node stops it at 64 KiB (a GOAWAY), drops the rest unread, and closes; what it
        holds does not grow with what the client sends."""
        before = self.traced()
        raw = await self.client()

        def frames() -> Iterator[bytes]:
            yield HeadersFrame(1, data=request_block()[:5]).serialize()  # no END_HEADERS
            chunk = b"\x00" * 16384
            while True:
                yield ContinuationFrame(1, data=chunk).serialize()

        sent = await self.in_thread(raw.flood, frames(), 15.0)
        await self.assertClosedWithGoaway(raw, ENHANCE_YOUR_CALM)
        grown = self.traced() - before
        self.assertLess(grown, 4 * MIB, f"{grown} bytes kept after {sent} sent")
        self.assertEqual(self.dispatcher.counters.get("h2_header_block_too_large"), 1)
        await self.still_serving()

    async def test_too_many_continuation_frames(self) -> None:
        raw = await self.client()
        block = request_block()
        frames = [HeadersFrame(1, data=block[:1]).serialize()]
        frames += [ContinuationFrame(1, data=b"").serialize() for _ in range(17)]
        frames.append(ContinuationFrame(1, data=block[1:], flags=["END_HEADERS"]).serialize())
        await self.in_thread(raw.send, b"".join(frames))
        await self.assertClosedWithGoaway(raw, ENHANCE_YOUR_CALM)
        await self.still_serving()

    async def test_header_block_deadline(self) -> None:
        """A header block left open (HEADERS without END_HEADERS, then silence) is closed at
        the head deadline (1 s here), not at the idle timeout (3 s)."""
        raw = await self.client()
        await self.in_thread(raw.send, HeadersFrame(1, data=request_block()[:3]).serialize())
        await self.assertClosedWithGoaway(raw, PROTOCOL_ERROR, seconds=2.5)
        self.assertEqual(self.dispatcher.counters.get("h2_head_timeout"), 1)
        await self.still_serving()

    async def test_hpack_bomb(self) -> None:
        """A 4 KiB header in the dynamic table, then referenced thousands of times (a few
        bytes each): the decoded list passes SETTINGS_MAX_HEADER_LIST_SIZE, which the node
        advertises, and the connection is closed."""
        raw = await self.client()
        settings = await self.node_settings(raw)
        self.assertEqual(settings.get(SettingsFrame.MAX_HEADER_LIST_SIZE), 65536)
        encoder = hpack.Encoder()
        first = encoder.encode(
            [
                (":method", "GET"),
                (":path", "/"),
                (":scheme", "https"),
                (":authority", HOSTNAME),
                ("x-bomb", "a" * 4000),
            ]
        )
        indexed = b"\xbe" * 3000  # index 62: the x-bomb entry, 3000 times (12 MB decoded)
        before = self.traced()
        await self.in_thread(
            raw.send,
            HeadersFrame(1, data=first, flags=["END_HEADERS", "END_STREAM"]).serialize()
            + HeadersFrame(3, data=indexed, flags=["END_HEADERS", "END_STREAM"]).serialize(),
        )
        closed = await self.in_thread(raw.wait_closed, 5.0)
        self.assertTrue(closed)
        self.assertIsNotNone(raw.goaway())
        self.assertLess(self.traced() - before, 4 * MIB)
        await self.still_serving()

    # --- streams ---------------------------------------------------------------------------

    async def test_too_many_concurrent_streams(self) -> None:
        """MAX_CONCURRENT_STREAMS is 100: the 101st open stream closes the connection."""
        raw = await self.client()
        settings = await self.node_settings(raw)
        self.assertEqual(settings.get(SettingsFrame.MAX_CONCURRENT_STREAMS), 100)
        encoder = hpack.Encoder()
        heads = b"".join(
            HeadersFrame(
                stream,
                data=encoder.encode(
                    [
                        (":method", "POST"),
                        (":path", "/"),
                        (":scheme", "https"),
                        (":authority", HOSTNAME),
                    ]
                ),
                flags=["END_HEADERS"],  # no END_STREAM: every stream stays open
            ).serialize()
            for stream in range(1, 2 * 110, 2)
        )
        await self.in_thread(raw.send, heads)
        await self.assertClosedWithGoaway(raw, PROTOCOL_ERROR)
        await self.still_serving()

    async def test_rapid_reset(self) -> None:
        """CVE-2023-44487: streams opened and reset at once, thousands of them."""
        raw = await self.client()
        encoder = hpack.Encoder()

        def frames() -> Iterator[bytes]:
            for stream in range(1, 2 * 5000, 2):
                block = encoder.encode(
                    [
                        (":method", "GET"),
                        (":path", "/"),
                        (":scheme", "https"),
                        (":authority", HOSTNAME),
                    ]
                )
                yield HeadersFrame(stream, data=block, flags=["END_HEADERS"]).serialize()
                yield RstStreamFrame(stream, error_code=8).serialize()

        await self.in_thread(raw.flood, frames(), 10.0)
        await self.assertClosedWithGoaway(raw, ENHANCE_YOUR_CALM)
        await self.still_serving()

    # --- control frames a client does not read the answers of ------------------------------

    async def flood(self, frame: bytes, count: int = 5000) -> RawH2:
        before = self.traced()
        raw = await self.client()
        await self.in_thread(raw.flood, iter([frame] * count), 10.0)
        await self.assertClosedWithGoaway(raw, ENHANCE_YOUR_CALM)
        self.assertLess(self.traced() - before, 4 * MIB)
        self.assertGreaterEqual(self.dispatcher.counters.get("h2_flood", 0), 1)
        await self.still_serving()
        return raw

    async def test_ping_flood(self) -> None:
        """CVE-2019-9512: each PING is answered; a client that sends them without end."""
        await self.flood(PingFrame(0, opaque_data=b"12345678").serialize())

    async def test_settings_flood(self) -> None:
        """CVE-2019-9515: each SETTINGS is acknowledged."""
        await self.flood(SettingsFrame(0, settings={SettingsFrame.ENABLE_PUSH: 0}).serialize())

    async def test_empty_data_flood(self) -> None:
        """CVE-2019-9518: empty DATA frames on an open stream, each costing a parse."""
        raw = await self.client()
        encoder = hpack.Encoder()
        block = encoder.encode(
            [(":method", "POST"), (":path", "/"), (":scheme", "https"), (":authority", HOSTNAME)]
        )
        head = HeadersFrame(1, data=block, flags=["END_HEADERS"]).serialize()
        empty = DataFrame(1, data=b"").serialize()
        await self.in_thread(raw.flood, iter([head] + [empty] * 5000), 10.0)
        await self.assertClosedWithGoaway(raw, ENHANCE_YOUR_CALM)
        await self.still_serving()

    async def test_priority_flood(self) -> None:
        """PRIORITY for streams never opened: each would add to Twisted's priority tree."""
        before = self.traced()
        raw = await self.client()
        frames = (
            PriorityFrame(stream, depends_on=0, stream_weight=16).serialize()
            for stream in range(1, 2 * 5000, 2)
        )
        await self.in_thread(raw.flood, frames, 10.0)
        await self.assertClosedWithGoaway(raw, ENHANCE_YOUR_CALM)
        self.assertLess(self.traced() - before, 4 * MIB)
        await self.still_serving()

    async def test_slow_body_stream_is_408(self) -> None:
        """A request body below the minimum rate: 408 on that stream (then RST_STREAM
        NO_ERROR); the connection and its other streams go on."""
        self.dispatcher.http_limits = HTTPLimits(body_timeout=1.0, body_min_rate=1000)
        raw = await self.client()
        block = hpack.Encoder().encode(
            [
                (":method", "POST"),
                (":path", "/"),
                (":scheme", "https"),
                (":authority", HOSTNAME),
                ("content-length", "100000"),
            ]
        )
        await self.in_thread(
            raw.send, HeadersFrame(1, data=block, flags=["END_HEADERS"]).serialize()
        )
        for _ in range(15):
            await self.in_thread(raw.send, DataFrame(1, data=b"x" * 10).serialize())
            await task.deferLater(reactor, 0.15, lambda: None)
        await self.in_thread(raw.drain, 0.5)
        frames = raw.frames()
        heads = [f for f in frames if isinstance(f, HeadersFrame) and f.stream_id == 1]
        self.assertTrue(heads, frames)
        self.assertEqual(hpack.Decoder().decode(heads[0].data), [(":status", "408")])
        resets = [f for f in frames if isinstance(f, RstStreamFrame) and f.stream_id == 1]
        self.assertEqual(resets[0].error_code, 0)  # later ones: h2's STREAM_CLOSED to our DATA
        self.assertFalse(raw.closed)
        self.assertEqual(self.dispatcher.counters.get("http_body_too_slow"), 1)
        await self.still_serving()

    async def test_zero_window_stall(self) -> None:
        """A client that opens many streams for 1 MiB files with a zero window and never
        reads: the responses wait, bounded (the proxy and files pause on flow control), and
        the silent connection is closed at the idle timeout (3 s here)."""
        before = self.traced()
        raw = await self.client({SettingsFrame.INITIAL_WINDOW_SIZE: 0})
        encoder = hpack.Encoder()
        heads = b"".join(
            HeadersFrame(
                stream,
                data=encoder.encode(
                    [
                        (":method", "GET"),
                        (":path", "/files/big.bin"),
                        (":scheme", "https"),
                        (":authority", HOSTNAME),
                    ]
                ),
                flags=["END_HEADERS", "END_STREAM"],
            ).serialize()
            for stream in range(1, 2 * 50, 2)
        )
        await self.in_thread(raw.send, heads)
        await self.in_thread(raw.drain, 1.0)
        self.assertLess(self.traced() - before, 16 * MIB)  # not 50 MiB of queued files
        closed = await self.in_thread(raw.wait_closed, 6.0)
        self.assertTrue(closed)
        await self.still_serving()
