"""The relay's public side in process (relay + node + backend on loopback, real reactor):
routing, refusals, limits, timeouts, drain and the HTTP redirect."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
from pathlib import Path
from typing import Any

from twisted.internet import reactor, threads
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from funnel_tw import keys
from funnel_tw.config import load_node_config, load_relay_config
from funnel_tw.node.service import NodeService
from funnel_tw.relay.service import RelayService
from tests._support import eventually, free_port, wait_until

from .test_clienthello import real_hello

NAME = "node.example.test"


class Hello(resource.Resource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        return b"hello from the backend"


class Funnel:
    """relay.ini + node.ini in a folder, both services running in this process."""

    def __init__(
        self, test: TestCase, relay_extra: str = "", funnel: bool = True, node_extra: str = ""
    ) -> None:
        self.dir = Path(test.mktemp()).absolute()
        self.dir.mkdir()
        backend = reactor.listenTCP(0, server.Site(Hello()), interface="127.0.0.1")
        test.addCleanup(backend.stopListening)
        rk, nk = keys.generate_private_key(), keys.generate_private_key()
        wg = free_port(socket.SOCK_DGRAM)
        self.public = free_port(socket.SOCK_STREAM)
        self.redirect = free_port(socket.SOCK_STREAM)
        (self.dir / "relay.ini").write_text(f"""[relay]
private-key = {keys.encode_key(rk)}
listen-port = {wg}
address = 100.64.0.1/32
public-address = 127.0.0.1
public-ports = {self.public}
http-redirect-port = {self.redirect}
{relay_extra}

[node n]
public-key = {keys.encode_key(keys.public_key(nk))}
allowed-ips = 100.64.0.2/32
hostnames = {NAME}, *.apps.example.test
peerapi = 100.64.0.2:41642
""")
        (self.dir / "node.ini").write_text(f"""[node]
private-key = {keys.encode_key(nk)}
listen-port = 0
address = 100.64.0.2/32
hostname = {NAME}, x.apps.example.test
{node_extra}

[peer relay]
public-key = {keys.encode_key(keys.public_key(rk))}
endpoint = 127.0.0.1:{wg}
allowed-ips = 100.64.0.1/32
persistent-keepalive = 25
funnel-ingress = yes

[serve {self.public}]
funnel = {"yes" if funnel else "no"}
/ = http://127.0.0.1:{backend.getHost().port}
""")
        self.relay = RelayService(load_relay_config(self.dir / "relay.ini"), reactor)
        self.node = NodeService(load_node_config(self.dir / "node.ini"), reactor)
        self.relay.startService()
        self.node.startService()
        self.stopped = False
        test.addCleanup(self.stop)
        self.ca = str(self.node.config.state_dir / "tls" / "ca.pem")

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.node.stopService()
            await self.relay.stopService()

    async def ready(self) -> None:
        await wait_until(
            lambda: self.relay.overlay.device.handshakes_completed,
            5,
            "a WireGuard handshake between node and relay",
        )

    async def holding(self, count: int) -> None:
        """Until the relay has taken ``count`` connections in."""
        await wait_until(
            lambda: len(self.relay.limits.open) >= count, 5, f"the relay to hold {count}"
        )

    async def close(self, held: list[socket.socket]) -> None:
        """Reset the client sockets a test held open, and wait (bounded) until the relay has let
        them go: stopped with them still open, it would wait out its shutdown-timeout. (A FIN
        would not do: before the ClientHello the relay takes it for a half-close and waits for
        client-hello-timeout.)"""
        for s in held:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        await eventually(lambda: not self.relay.limits.open, 5)

    def counters(self) -> dict[str, int]:
        return self.relay.limits.counters

    def get(self, name: str = NAME) -> bytes:
        """An HTTPS GET through the relay (blocking: run it in a thread)."""
        context = ssl.create_default_context(cafile=self.ca)
        with (
            socket.create_connection(("127.0.0.1", self.public), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=name) as tls,
        ):
            tls.sendall(f"GET / HTTP/1.0\r\nHost: {name}\r\n\r\n".encode())
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
        return answer


async def raw_exchange(port: int, data: bytes, wait: float = 3.0) -> tuple[bytes, float]:
    """Send ``data``; return what came back and how long until the relay closed."""

    def go() -> tuple[bytes, float]:
        import time

        started = time.monotonic()
        received = b""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
                if data:
                    s.sendall(data)
                while chunk := s.recv(4096):
                    received += chunk
        except (TimeoutError, ConnectionResetError, BrokenPipeError):
            pass  # refused connections are reset at once
        return received, time.monotonic() - started

    return await threads.deferToThread(go)


class RelayTests(TestCase):
    timeout = 60

    async def test_routes_to_the_node(self) -> None:
        f = Funnel(self)
        await f.ready()
        answer = await threads.deferToThread(f.get)
        self.assertTrue(answer.startswith(b"HTTP/1.0 200"), answer[:60])
        self.assertTrue(answer.endswith(b"hello from the backend"))
        self.assertEqual(f.counters()["spliced"], 1)

    async def test_no_nagle_towards_the_client(self) -> None:
        """The relay's public sockets send at once: with Nagle, the second TLS record of a
        fresh connection's first answer waited for the client's delayed ACK (+40 ms)."""
        f = Funnel(self)
        await f.ready()
        with socket.create_connection(("127.0.0.1", f.public), timeout=10) as raw:
            await f.holding(1)
            (conn,) = f.relay.limits.open
            handle = conn.transport.getHandle()
            self.assertEqual(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await eventually(lambda: not f.relay.limits.open, 5)

    async def test_wildcard_route(self) -> None:
        f = Funnel(self)
        await f.ready()
        answer = await threads.deferToThread(f.get, "x.apps.example.test")
        self.assertTrue(answer.endswith(b"hello from the backend"))

    async def test_garbage_first_byte_closed_at_once(self) -> None:
        f = Funnel(self)
        received, took = await raw_exchange(f.public, b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(received, b"")
        self.assertLess(took, 2)
        self.assertEqual(f.counters()["bad_client_hello"], 1)

    async def test_slowloris_hello_timed_out(self) -> None:
        f = Funnel(self, "client-hello-timeout = 1")
        received, took = await raw_exchange(f.public, real_hello(NAME)[:20], wait=5)
        self.assertEqual(received, b"")
        self.assertGreaterEqual(took, 0.9)
        self.assertLess(took, 3)
        self.assertEqual(f.counters()["client_hello_timeout"], 1)

    async def test_no_sni_and_unknown_name(self) -> None:
        f = Funnel(self)
        await raw_exchange(f.public, real_hello(None))
        await raw_exchange(f.public, real_hello("other.example.test"))
        await raw_exchange(f.public, real_hello("a.b.apps.example.test"))
        self.assertEqual(f.counters()["no_sni"], 1)
        self.assertEqual(f.counters()["unknown_name"], 2)

    async def test_node_refuses_port_without_funnel(self) -> None:
        f = Funnel(self, funnel=False)
        await f.ready()
        received, _ = await raw_exchange(f.public, real_hello(NAME))
        self.assertEqual(received, b"")  # the relay never answers for the node
        self.assertEqual(f.counters()["node_refused"], 1)
        self.assertEqual(f.node.ingress.counters["ingress_403"], 1)

    async def test_per_ip_limit(self) -> None:
        f = Funnel(self, "max-connections-per-ip = 3")
        held = [socket.create_connection(("127.0.0.1", f.public)) for _ in range(3)]
        self.addCleanup(f.close, held)
        await f.holding(3)
        received, took = await raw_exchange(f.public, b"")
        self.assertEqual(received, b"")
        self.assertLess(took, 2)
        self.assertEqual(f.counters()["refused_per_ip"], 1)
        self.assertEqual(len(f.relay.limits.open), 3)

    async def test_max_connections(self) -> None:
        f = Funnel(self, "max-connections = 2")
        held = [socket.create_connection(("127.0.0.1", f.public)) for _ in range(2)]
        self.addCleanup(f.close, held)
        await f.holding(2)
        await raw_exchange(f.public, b"")
        self.assertEqual(f.counters()["refused_max_connections"], 1)

    async def test_idle_spliced_connection_closed(self) -> None:
        f = Funnel(self, "idle-timeout = 1")
        await f.ready()

        def idle() -> float:
            import time

            context = ssl.create_default_context(cafile=f.ca)
            with socket.create_connection(("127.0.0.1", f.public), timeout=10) as raw:
                tls = context.wrap_socket(raw, server_hostname=NAME)
                started = time.monotonic()
                with contextlib.suppress(ssl.SSLError, OSError):
                    tls.recv(1)  # the TLS session is up; stay silent
                return time.monotonic() - started

        took = await threads.deferToThread(idle)
        self.assertLess(took, 5)
        self.assertGreaterEqual(f.counters()["idle_closed"], 1)

    async def test_drain_on_shutdown(self) -> None:
        f = Funnel(self, "shutdown-timeout = 1")
        await f.ready()
        held = socket.create_connection(("127.0.0.1", f.public))
        self.addCleanup(held.close)
        await f.holding(1)
        started = reactor.seconds()
        await f.relay.stopService()
        f.stopped = True
        await f.node.stopService()
        took = reactor.seconds() - started
        self.assertGreaterEqual(took, 0.9)  # it waited for the open connection
        self.assertLess(took, 5)  # then closed it
        self.assertEqual(len(f.relay.limits.open), 0)

    async def test_http_redirect(self) -> None:
        f = Funnel(self)
        received, _ = await raw_exchange(
            f.redirect, f"GET /a?b=1 HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode()
        )
        self.assertTrue(received.startswith(b"HTTP/1.1 308 "), received[:40])
        self.assertIn(f"location: https://{NAME}:{f.public}/a?b=1".encode(), received.lower())


__all__: list[Any] = []


def trickle(port: int, data: bytes, every: float, wait: float = 10.0) -> tuple[int, float]:
    """Send ``data`` one byte every ``every`` seconds; how many went out and when it closed."""
    import time

    started = time.monotonic()
    sent = 0
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
            for byte in data:
                s.sendall(bytes([byte]))
                sent += 1
                s.settimeout(every)
                try:
                    if s.recv(1) == b"":
                        break  # closed by the relay
                except TimeoutError:
                    continue
    except (ConnectionResetError, BrokenPipeError):
        pass
    return sent, time.monotonic() - started


class LogCapture:
    def __init__(self, test: TestCase) -> None:
        from twisted.logger import globalLogPublisher

        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        test.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self, containing: str) -> list[str]:
        from twisted.logger import formatEvent

        return [
            line
            for line in (formatEvent(e) for e in self.events if e.get("log_format"))
            if containing in line
        ]


class DeadlineTests(TestCase):
    timeout = 60

    async def test_client_hello_deadline_is_total(self) -> None:
        """One byte every 0.5 s never lets the hello finish: closed at the 2 s deadline,
        not kept open by each byte; the node still serves a normal visitor afterwards."""
        f = Funnel(self, "client-hello-timeout = 2")
        log = LogCapture(self)
        sent, took = await threads.deferToThread(trickle, f.public, real_hello(NAME), 0.5)
        self.assertGreaterEqual(took, 1.8)
        self.assertLess(took, 3.0)
        self.assertLess(sent, 8)
        self.assertEqual(f.counters()["client_hello_timeout"], 1)
        [line] = log.lines("closed: no complete ClientHello")
        self.assertRegex(line, r"public connection from 127\.0\.0\.1:\d+ for \(no name yet\)")
        await f.ready()
        answer = await threads.deferToThread(f.get)
        self.assertTrue(answer.endswith(b"hello from the backend"))

    async def test_offline_node_closes_visitors_quickly_and_logs_once(self) -> None:
        """The first visitor waits out ingress-connect-timeout; that puts the node out of
        service, so the next ones are closed at once (counted), and the node is logged once."""
        f = Funnel(self, "ingress-connect-timeout = 1\nclient-hello-timeout = 20")
        await f.ready()
        await f.node.stopService()  # the node goes away; the relay still has its session
        f.stopped = True
        self.addCleanup(f.relay.stopService)
        log = LogCapture(self)
        received, took = await raw_exchange(f.public, real_hello(NAME), wait=10)
        self.assertEqual(received, b"")
        self.assertGreaterEqual(took, 0.9)
        self.assertLess(took, 2.5)
        for _ in range(2):
            received, took = await raw_exchange(f.public, real_hello(NAME), wait=10)
            self.assertEqual(received, b"")
            self.assertLess(took, 0.5)
        self.assertEqual(f.counters()["node_timeout"], 1)
        self.assertEqual(f.counters()["no_node_in_service"], 2)
        lines = [x for x in log.lines("node n unreachable") if x.startswith("node n")]
        self.assertEqual(len(lines), 1, lines)  # once per node, not once per visitor
        self.assertIn("no answer from 100.64.0.2:41642", lines[0])
        self.assertEqual(len(log.lines("node n out of service")), 1)
        [closed, _] = log.lines("every node of")
        self.assertRegex(
            closed,
            rf"public connection from 127\.0\.0\.1:\d+ for {NAME}:{f.public} closed: every node"
            rf" of {NAME} is out of service \(n: (probe: )?no answer from 100\.64\.0\.2:41642.*\)",
        )

    async def test_node_refusal_logged_with_client_name_and_reason(self) -> None:
        f = Funnel(self, funnel=False)
        await f.ready()
        log = LogCapture(self)
        await raw_exchange(f.public, real_hello(NAME))
        [line] = log.lines("refused by node")
        self.assertRegex(
            line,
            rf"public connection from 127\.0\.0\.1:\d+ for {NAME}:{f.public} closed: "
            r"refused by node n: node answered 403 Forbidden: denied$",
        )
        self.assertNotIn("Address(", line)

    async def test_unknown_name_logged(self) -> None:
        f = Funnel(self)
        log = LogCapture(self)
        await raw_exchange(f.public, real_hello("other.example.test"))
        [line] = log.lines("no node serves")
        self.assertIn(f"for other.example.test:{f.public} closed: no node serves this name", line)
