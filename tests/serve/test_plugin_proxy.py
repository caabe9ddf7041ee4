"""Backpressure of the plugin proxy helper (``funnel_tw.plugin.proxy_to``) through a real relay
and node in this process (``funnel_tw.testing.funnel``), with the tcp-proxy example plugin.

A public client that sends without ever reading, to a backend that never reads, or that echoes
everything back: the node must stop reading the client when the backend's side is full, and stop
reading the backend when the client's side is full, so what the node holds for the flow stays
bounded (a few MiB: the overlay send buffer's high-water mark, a socket buffer's worth towards
the backend) however long the client keeps trying, and the client's sends stop by themselves.

What was once seen as "the client keeps sending for seconds" was the test's own echo backend,
which wrote back without backpressure and so kept everything in its own memory while the node
had paused reading from it: ``test_node_bounded_with_a_backend_that_buffers`` keeps that case.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from twisted.internet import protocol, task, threads
from twisted.trial.unittest import TestCase

from funnel_tw import testing
from funnel_tw.netstack.tcp import RECEIVE_BUFFER_MAX, SEND_BUFFER

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tcp-proxy-handler"
CHUNK = b"z" * 16384
QUIET = 2.0  # the client's sends count as stopped after this long without a byte taken
# what the node may hold for one flow: the overlay send buffer (its limit: SEND_BUFFER while the
# window stays small, as it does toward a client that does not read; plus the chunk that crossed
# it), a few TLS records, and the backend socket's buffer (Twisted pauses its producer above
# 64 KiB, and one read of the other side, 64 KiB, can arrive on top)
NODE_BOUND = SEND_BUFFER + 2 * 1024 * 1024
# and what the client's overlay connection may have received that the paused reader has not taken:
# its receive window, which autotuning grows (while the reader keeps up) to RECEIVE_BUFFER_MAX
HELD_BOUND = RECEIVE_BUFFER_MAX + len(CHUNK)


class Deaf(protocol.Protocol):
    """A backend that never reads."""

    def connectionMade(self) -> None:
        self.transport.pauseProducing()  # type: ignore[union-attr]


class PacedEcho(protocol.Protocol):
    """An echo backend that stops reading while what it wrote back is not taken."""

    def connectionMade(self) -> None:
        self.transport.registerProducer(self.transport, True)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class BufferingEcho(protocol.Protocol):
    """An echo backend without backpressure: it reads all it is sent and buffers the echo."""

    instances: list[BufferingEcho] = []

    def connectionMade(self) -> None:
        BufferingEcho.instances.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


def unsent(transport: Any) -> int:
    """What a Twisted socket transport holds unsent."""
    if transport is None:
        return 0
    data = getattr(transport, "dataBuffer", b"")
    return int(len(data) - getattr(transport, "offset", 0) + getattr(transport, "_tempDataLen", 0))


def node_held(proxy: Any) -> dict[str, int]:
    """The bytes the node holds for one proxied flow, by place."""
    held = {"to backend": unsent(proxy.backend.transport)}
    layer = proxy.transport
    while layer is not None:  # the node's TLS, then the overlay TCP connection
        app = getattr(layer, "_appSendBuffer", None)
        if app:
            held["tls pending"] = sum(map(len, app))
        aggregator = getattr(layer, "_aggregator", None)  # small writes, one reactor turn
        if aggregator is not None and getattr(aggregator, "_buffer", None):
            held["tls small writes"] = sum(map(len, aggregator._buffer))
        conn = getattr(layer, "conn", None)
        if conn is not None:
            held["overlay send"] = conn.send_buffered
            held["overlay held"] = conn.held_bytes
        layer = getattr(layer, "transport", None)
    return held


class ProxyBackpressureTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        testing.plugin_path(self, EXAMPLE)

    def backend(self, kind: type[protocol.Protocol]) -> int:
        port = self.reactor.listenTCP(0, protocol.Factory.forProtocol(kind), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    async def flood(self, backend_port: int, seconds: float) -> tuple[int, float, dict[str, int]]:
        """A client sends for up to ``seconds`` without reading; returns what it got through,
        when its sends stopped (``seconds`` if they never did) and the peak the node held for
        the flow, by place (sampled every 20 ms)."""
        section = f"handler = tcp-proxy\nbackend = {backend_port}\nidle-timeout = 60"
        async with testing.funnel(section) as f:
            handler = f.node.plugins[f.port].handler
            proxies: list[Any] = []
            build = handler.build_protocol

            def spy(flow: Any) -> Any:
                proxy = build(flow)
                proxies.append(proxy)
                return proxy

            handler.build_protocol = spy
            peak: dict[str, int] = {"total": 0}

            def sample() -> None:
                for proxy in proxies:
                    held = node_held(proxy)
                    for place, count in held.items():
                        peak[place] = max(peak.get(place, 0), count)
                    peak["total"] = max(peak["total"], sum(held.values()))

            sampler = task.LoopingCall(sample)
            sampler.start(0.02)
            try:

                def send() -> tuple[int, float, Any]:
                    sock = f.connect()
                    sock.setblocking(False)
                    sent = 0
                    start = quiet_since = time.monotonic()
                    while time.monotonic() - quiet_since < QUIET:
                        if time.monotonic() - start > seconds:
                            return sent, seconds, sock
                        try:
                            sent += sock.send(CHUNK)
                            quiet_since = time.monotonic()
                        except (BlockingIOError, OSError):
                            time.sleep(0.005)
                    return sent, quiet_since - start, sock

                sent, stopped, sock = await threads.deferToThread(send)
                sample()
                self.assertEqual(len(proxies), 1)
                sock.close()
            finally:
                sampler.stop()
        return sent, stopped, peak

    def assertBounded(self, peak: dict[str, int]) -> None:
        """The window's worth the client may have sent, and a bounded rest."""
        self.assertLessEqual(peak.get("overlay held", 0), HELD_BOUND, peak)
        self.assertLess(peak["total"] - peak.get("overlay held", 0), NODE_BOUND, peak)

    async def test_backend_never_reads(self) -> None:
        """Client to backend: a backend that takes nothing pauses the client's reads."""
        sent, stopped, peak = await self.flood(self.backend(Deaf), 20.0)
        self.assertLess(stopped, 10.0, f"the client could still send after {sent} bytes")
        self.assertLess(sent, 64 * 1024 * 1024)
        self.assertBounded(peak)

    async def test_echo_to_a_client_that_never_reads(self) -> None:
        """Backend to client: a client that takes nothing pauses the backend's reads, and the
        backend (which reads only while its echo is taken) then the client's."""
        sent, stopped, peak = await self.flood(self.backend(PacedEcho), 20.0)
        self.assertLess(stopped, 10.0, f"the client could still send after {sent} bytes")
        self.assertLess(sent, 64 * 1024 * 1024)
        self.assertBounded(peak)
        self.assertGreater(peak.get("overlay send", 0), 0, peak)  # the echo did come back

    async def test_node_bounded_with_a_backend_that_buffers(self) -> None:
        """A backend that echoes without backpressure keeps reading, so the client can send
        for as long as the backend's memory lasts; the node itself stays bounded: it stopped
        reading the backend, whose unsent echo grows in the backend's process."""
        BufferingEcho.instances = []
        sent, _stopped, peak = await self.flood(self.backend(BufferingEcho), 4.0)
        self.assertBounded(peak)
        self.assertGreater(sent, NODE_BOUND)  # it did keep sending, into the backend
        self.assertEqual(len(BufferingEcho.instances), 1)
