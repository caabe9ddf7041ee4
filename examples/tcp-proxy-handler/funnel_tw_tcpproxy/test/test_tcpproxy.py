"""The tcp-proxy plugin, tested with funnel_tw.testing: its options, and real flows through a
relay and a node on loopback to a local echo backend (refusals and stalls included).

    PYTHONPATH=examples/tcp-proxy-handler python -m twisted.trial funnel_tw_tcpproxy
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from twisted.internet import protocol, task, threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from funnel_tw import testing
from funnel_tw_tcpproxy.handler import TCPProxyPlugin

ROOT = Path(__file__).resolve().parents[2]


class Echo(protocol.Protocol):
    """The backend: echoes, and reads only while its echo is taken (its transport is its own
    producer). Without that it would read all a client sends and buffer the echo in memory, so
    a client that never reads could keep sending for as long as this process has memory."""

    def connectionMade(self) -> None:
        self.transport.registerProducer(self.transport, True)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class OptionTests(SynchronousTestCase):
    def test_backend_required_and_parsed(self) -> None:
        with self.assertRaises(ValueError) as caught:
            testing.parse_options(TCPProxyPlugin(), {})
        self.assertIn("backend: required by handler tcp-proxy", str(caught.exception))
        options = testing.parse_options(TCPProxyPlugin(), {"backend": "6379"})
        self.assertEqual(options["backend"], ("127.0.0.1", 6379))

    def test_cross_check(self) -> None:
        with self.assertRaises(ValueError) as caught:
            testing.parse_options(
                TCPProxyPlugin(),
                {"backend": "db:5432", "connect-timeout": "60", "idle-timeout": "5"},
            )
        self.assertIn(
            "handler tcp-proxy: connect-timeout is longer than idle-timeout", str(caught.exception)
        )


class FunnelTests(TestCase):
    timeout = 90

    def setUp(self) -> None:
        from twisted.internet import reactor

        testing.plugin_path(self, ROOT)
        self.reactor: Any = reactor
        factory = protocol.Factory.forProtocol(Echo)
        self.backend = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self.backend.stopListening)

    def section(self, **extra: str) -> str:
        lines = ["handler = tcp-proxy", f"backend = {self.backend.getHost().port}"]
        return "\n".join(lines + [f"{k.replace('_', '-')} = {v}" for k, v in extra.items()])

    async def wait(self, condition: Any, seconds: float = 15.0) -> None:
        for _ in range(int(seconds * 10)):
            if condition():
                return
            await task.deferLater(self.reactor, 0.1, lambda: None)

    async def test_proxies_and_refuses_with_reason(self) -> None:
        async with testing.funnel(self.section(max_clients="1")) as f:
            first = await threads.deferToThread(f.connect)
            self.addCleanup(first.close)

            def roundtrip() -> bytes:
                first.sendall(b"hello backend")
                return bytes(first.recv(100))

            self.assertEqual(await threads.deferToThread(roundtrip), b"hello backend")

            def second() -> bytes:
                try:
                    with f.connect() as sock:
                        return bytes(sock.recv(100))
                except OSError as e:  # closed right after the handshake
                    return repr(e).encode()

            await threads.deferToThread(second)
            status = f.plugin_status()
            self.assertEqual(status["refused"], {"too-many-clients": 1})
            self.assertEqual((status["counters"]["proxied"], status["gauges"]["active"]), (1, 1))
            self.assertEqual(f.node.counters()["serve"].get("plugin_refused"), 1)
            first.close()
            await self.wait(lambda: f.plugin_status()["gauges"]["active"] == 0)
            self.assertEqual(f.plugin_status()["gauges"]["active"], 0)

    async def test_stalled_flow_is_aborted_at_idle_timeout(self) -> None:
        """A client that floods without reading, then goes silent while still connected: the
        idle timeout aborts the flow (both sides), and the node lets go of it."""
        async with testing.funnel(self.section(idle_timeout="2", connect_timeout="1")) as f:

            def flood() -> tuple[Any, float]:
                sock = f.connect()
                sock.setblocking(False)
                start = quiet_since = time.monotonic()
                # until the path stops taking bytes (backpressure all the way: the backend
                # stops reading, then the node, then the relay), 10 s at most; then silence
                while time.monotonic() - quiet_since < 1.0 and time.monotonic() - start < 10:
                    try:
                        sock.send(b"z" * 16384)
                        quiet_since = time.monotonic()
                    except (BlockingIOError, OSError):
                        time.sleep(0.02)
                return sock, quiet_since - start

            sock, sending = await threads.deferToThread(flood)
            self.addCleanup(sock.close)
            self.assertLess(sending, 9.0)  # the client was paused; it did not stop on its own
            await self.wait(
                lambda: f.plugin_status()["gauges"]["active"] == 0 and f.open_flows() == 0
            )
            self.assertEqual(f.plugin_status()["gauges"]["active"], 0)
            self.assertEqual(f.open_flows(), 0)
