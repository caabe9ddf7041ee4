"""The echo plugin, tested with funnel_tw.testing: options, one flow in memory, and real
flows through a relay and a node on loopback (including a client that stalls, then resets).

    PYTHONPATH=examples/echo-handler python -m twisted.trial funnel_tw_echo
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path
from typing import Any

from twisted.internet import task, threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from funnel_tw import testing
from funnel_tw_echo.handler import EchoPlugin

ROOT = Path(__file__).resolve().parents[2]


def read_line(sock: Any, buffer: bytearray) -> bytes:
    while b"\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full line; have {bytes(buffer)!r}")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line + b"\n"


class OptionTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        options = testing.parse_options(EchoPlugin(), {})
        self.assertEqual(options["greeting"], "hello from funnel-tw echo")
        self.assertEqual((options["terminate-tls"], options["idle-timeout"]), (True, 300.0))

    def test_every_error_named(self) -> None:
        with self.assertRaises(ValueError) as caught:
            testing.parse_options(
                EchoPlugin(), {"terminate-tls": "maybe", "colour": "red", "max-clients": "0"}
            )
        lines = str(caught.exception).splitlines()
        self.assertEqual(len(lines), 3, lines)
        self.assertTrue(lines[0].startswith("terminate-tls: 'maybe' is not a boolean"))
        self.assertTrue(lines[1].startswith("colour: unknown option for handler echo"))
        self.assertEqual(lines[2], "max-clients: 0 is out of range (1..100000)")


class InMemoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.context = testing.make_context("echo")
        options = testing.parse_options(EchoPlugin(), {"greeting": "hi", "max-clients": "1"})
        self.handler = EchoPlugin().build(options, self.context)

    def test_greets_and_echoes(self) -> None:
        run = testing.run_handler(self.handler, testing.make_flow(client=("192.0.2.1", 7)))
        self.assertEqual(
            run.received(), b"hi 192.0.2.1:7 -> plugin.funnel.test:10000 (funnel via relay)\n"
        )
        self.assertEqual(run.send(b"one\ntw"), b"one\n")
        self.assertEqual(run.send(b"o\n"), b"two\n")
        self.assertIs(run.producer, run.transport)  # paced by its own transport
        self.assertEqual(self.context.metrics.counters["lines"], 2)

    def test_refuses_over_max_clients(self) -> None:
        first = testing.run_handler(self.handler)
        second = testing.run_handler(self.handler)
        self.assertEqual(second.refused, "too-many-clients")
        first.lose()
        self.assertIsNone(testing.run_handler(self.handler).refused)

    def test_idle_or_stalled_flow_is_aborted(self) -> None:
        run = testing.run_handler(self.handler)
        run.send(b"x\n")
        self.context.reactor.advance(299)
        self.assertFalse(run.closed)
        self.context.reactor.advance(2)
        self.assertTrue(run.closed)
        self.assertIsNone(run.producer)  # unregistered first: the close is not held back


class FunnelTests(TestCase):
    timeout = 90

    def setUp(self) -> None:
        testing.plugin_path(self, ROOT)

    async def test_echo_through_relay_and_node(self) -> None:
        async with testing.funnel("handler = echo\ngreeting = hi") as f:

            def talk() -> tuple[bytes, bytes]:
                with f.connect() as sock:
                    buffer = bytearray()
                    greeting = read_line(sock, buffer)
                    sock.sendall(b"ping\n")
                    return greeting, read_line(sock, buffer)

            greeting, echoed = await threads.deferToThread(talk)
            self.assertTrue(greeting.startswith(b"hi 127.0.0.1:"), greeting)
            self.assertEqual(echoed, b"ping\n")
            self.assertEqual(f.plugin_status()["counters"], {"lines": 1})

    async def test_stalled_then_reset_flow_is_let_go(self) -> None:
        """A client floods without reading until everything is paused, then resets: the
        node lets go of the flow (its open ingress connections and the echo's own clients
        gauge return to zero) and serves the next client."""
        from twisted.internet import reactor

        async with testing.funnel("handler = echo") as f:

            def flood_then_reset() -> int:
                sock = f.connect()
                read_line(sock, bytearray())
                sock.setblocking(False)
                sent, quiet_since = 0, time.monotonic()
                line = b"y" * 1023 + b"\n"
                while time.monotonic() - quiet_since < 1.0:
                    try:
                        sent += sock.send(line * 16)
                        quiet_since = time.monotonic()
                    except (BlockingIOError, OSError):
                        time.sleep(0.02)
                raw = socket.socket(fileno=sock.detach())
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                raw.close()  # RST
                return sent

            sent = await threads.deferToThread(flood_then_reset)
            self.assertGreater(sent, 0)
            for _ in range(200):
                if f.open_flows() == 0 and f.plugin_status()["gauges"]["clients"] == 0:
                    break
                await task.deferLater(reactor, 0.1, lambda: None)
            self.assertEqual(f.open_flows(), 0)
            self.assertEqual(f.plugin_status()["gauges"]["clients"], 0)

            def again() -> bytes:
                with f.connect() as sock:
                    read_line(sock, bytearray())
                    sock.sendall(b"after\n")
                    buffer = bytearray()
                    return read_line(sock, buffer)

            self.assertEqual(await threads.deferToThread(again), b"after\n")

    async def test_stalled_client_that_stays_is_aborted(self) -> None:
        """A client floods without reading until everything is paused, then stays connected
        and silent: no reset tells the node, so the echo's own idle timeout must end the flow
        (an abort: a graceful close would wait on bytes the client never reads)."""
        from twisted.internet import reactor

        async with testing.funnel("handler = echo\nidle-timeout = 2") as f:

            def flood() -> Any:
                sock = f.connect()
                read_line(sock, bytearray())
                sock.setblocking(False)
                quiet_since = time.monotonic()
                while time.monotonic() - quiet_since < 1.0:
                    try:
                        sock.send(b"y" * 1023 + b"\n")
                        quiet_since = time.monotonic()
                    except (BlockingIOError, OSError):
                        time.sleep(0.02)
                return sock  # left open: neither read nor closed

            sock = await threads.deferToThread(flood)
            self.addCleanup(sock.close)
            self.assertEqual(f.plugin_status()["gauges"]["clients"], 1)
            for _ in range(100):
                if f.open_flows() == 0 and f.plugin_status()["gauges"]["clients"] == 0:
                    break
                await task.deferLater(reactor, 0.1, lambda: None)
            self.assertEqual(f.plugin_status()["gauges"]["clients"], 0)
            self.assertEqual(f.open_flows(), 0)
