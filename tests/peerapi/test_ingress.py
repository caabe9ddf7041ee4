"""peerAPI gate, /v0/ingress checks and the hijack, over in-memory connections
(twisted.test.iosim) on a task.Clock: deterministic, and the idle timeout needs no real wait."""

from __future__ import annotations

import gc
import weakref
from types import SimpleNamespace
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import TestCase
from twisted.web.server import Request

from funnel_tw.flow import Flow
from funnel_tw.peerapi.ingress import SWITCHING_PROTOCOLS, IngressResource, parse_ip_port
from funnel_tw.peerapi.site import PeerAPIRoot, PeerAPISite
from funnel_tw.web.hostport import parse_host_port
from funnel_tw.web.httplimits import HTTPLimits


class Recorder(protocol.Protocol):
    """What the serve layer would get: the raw stream after the 101."""

    def __init__(self) -> None:
        self.data = b""
        self.lost: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if data.startswith(b"echo:"):
            self.transport.write(data[5:])

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost.callback(None)


class RawClient(protocol.Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.closed: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        self.closed.callback(self.data)


def request(
    target: str = "node.example.com:443",
    src: str = "203.0.113.9:5555",
    host: str = "peer",
    method: str = "POST",
    extra: str = "",
) -> bytes:
    lines = [f"{method} /v0/ingress HTTP/1.1", f"Host: {host}"]
    if src is not None:
        lines.append(f"Tailscale-Ingress-Src: {src}")
    if target is not None:
        lines.append(f"Tailscale-Ingress-Target: {target}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


class Transport(iosim.FakeTransport):  # type: ignore[misc]
    """iosim's in-memory transport, with the ``connected`` a TCP transport has (the hijack
    reads it)."""

    @property
    def connected(self) -> bool:
        return not self.disconnected


PEERAPI = IPv4Address("TCP", "127.0.0.1", 41642)  # the node's peerAPI, as the caller dials it
CALLER = IPv4Address("TCP", "127.0.0.1", 50000)


class IngressTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.callers: dict[str, tuple[str, bool]] = {"127.0.0.1": ("relay", True)}
        self.flows: list[Flow] = []
        self.recorders: list[Recorder] = []

        def accept(flow: Flow) -> Recorder:
            self.flows.append(flow)
            recorder = Recorder()
            self.recorders.append(recorder)
            return recorder

        self.clock = task.Clock()
        self.ingress = IngressResource(
            reactor=self.clock,
            caller_name=self.callers.get,
            policy=SimpleNamespace(
                admits_funnel=lambda host, port: (host, port) == ("node.example.com", 443)
            ),
            dispatcher=SimpleNamespace(protocol_for=accept),
        )
        self.site = PeerAPISite(
            PeerAPIRoot(lambda: self.valid, self.ingress), self.clock, timeout=2
        )
        self.valid = {f"{PEERAPI.host}:{PEERAPI.port}"}

    def connect(self) -> tuple[RawClient, iosim.IOPump]:
        """A caller connected to the peerAPI; the pump moves bytes and runs clock.advance(0)."""
        client = RawClient()
        server = self.site.buildProtocol(CALLER)
        pump = iosim.connect(
            server,
            Transport(server, True, PEERAPI, CALLER),
            client,
            Transport(client, False, CALLER, PEERAPI),
            greet=False,
            clock=self.clock,
        )
        return client, pump

    def elapse(self, pump: iosim.IOPump, seconds: float, until: defer.Deferred[Any]) -> None:
        """Let ``seconds`` pass on the clock, in steps, moving bytes, or until ``until`` fires."""
        deadline = self.clock.seconds() + seconds
        while not until.called and self.clock.seconds() < deadline:
            self.clock.advance(0.05)
            pump.flush()

    async def exchange(self, data: bytes, close_after: float | None = 0.3) -> bytes:
        client, pump = self.connect()
        client.transport.write(data)
        pump.flush()
        if close_after is not None:
            self.elapse(pump, close_after, client.closed)
            client.transport.loseConnection()
        else:
            self.elapse(pump, 30, client.closed)  # until the peerAPI gives up on it
        pump.flush()
        return await client.closed

    async def assertRefused(self, data: bytes, code: int, body: str) -> None:
        answer = await self.exchange(data)
        self.assertTrue(answer.startswith(f"HTTP/1.1 {code} ".encode()), answer[:80])
        self.assertTrue(answer.endswith(body.encode() + b"\n"), answer[-80:])
        self.assertEqual(self.flows, [])

    async def test_no_ingress_cap(self) -> None:
        self.callers["127.0.0.1"] = ("laptop", False)
        await self.assertRefused(request(), 403, "denied; no ingress cap")

    async def test_unknown_caller(self) -> None:
        self.callers.clear()
        await self.assertRefused(request(method="GET"), 403, "denied; no ingress cap")

    async def test_cap_checked_before_method(self) -> None:
        self.callers["127.0.0.1"] = ("laptop", False)
        await self.assertRefused(request(method="GET"), 403, "denied; no ingress cap")

    async def test_not_post(self) -> None:
        await self.assertRefused(request(method="GET"), 405, "only POST allowed")

    async def test_src_missing_and_invalid(self) -> None:
        await self.assertRefused(
            request(src=None),
            400,  # type: ignore[arg-type]
            "Tailscale-Ingress-Src header not set",
        )
        await self.assertRefused(
            request(src="example.com:5"), 400, "Tailscale-Ingress-Src header invalid; want ip:port"
        )

    async def test_target_missing_and_invalid(self) -> None:
        await self.assertRefused(
            request(target=None),
            400,  # type: ignore[arg-type]
            "Tailscale-Ingress-Target header not set",
        )
        await self.assertRefused(
            request(target="node.example.com"),
            400,
            "Tailscale-Ingress-Target header invalid; want host:port",
        )

    async def test_target_not_admitted(self) -> None:
        await self.assertRefused(request(target="node.example.com:8443"), 403, "denied")
        await self.assertRefused(request(target="other.example.com:443"), 403, "denied")

    async def test_refusal_log_line(self) -> None:
        """One line: the reason, the caller's ip:port, the client and the host:port, no repr."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        await self.assertRefused(request(target="other.example.com:8443"), 403, "denied")
        lines = [formatEvent(e) for e in events if "ingress refused" in (e.get("log_format") or "")]
        self.assertEqual(len(lines), 1)
        line = lines[0]
        self.assertRegex(line, r"^ingress refused: 403 denied: caller 127\.0\.0\.1:\d+, ")
        self.assertIn("client 203.0.113.9:5555", line)
        self.assertIn("target other.example.com:8443", line)
        self.assertNotIn("Address(", line)
        self.assertEqual(self.ingress.counters["ingress_403"], 1)

    async def test_gate(self) -> None:
        await self.assertRefused(
            request(extra="Referer: http://x/\r\n"), 403, "invalid peerapi request"
        )
        await self.assertRefused(
            request(extra="Origin: http://x\r\n"), 403, "invalid peerapi request"
        )
        await self.assertRefused(request(host="evil.example.com"), 403, "invalid peerapi request")
        await self.assertRefused(request(host="127.0.0.1:1"), 403, "invalid peerapi request")

    async def test_other_route(self) -> None:
        answer = await self.exchange(b"GET /v0/other HTTP/1.1\r\nHost: peer\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 404 "))

    async def test_accept_exact_101_then_raw_stream(self) -> None:
        own_host = next(iter(self.valid))
        client, pump = self.connect()
        # bytes right after the head, in the same segment, belong to the stream
        client.transport.write(request(host=own_host) + b"echo:hello")
        pump.flush()
        self.assertEqual(client.data, SWITCHING_PROTOCOLS + b"hello")
        # later bytes, including what looks like HTTP, are raw stream now
        client.transport.write(b"GET / HTTP/1.1\r\nHost: peer\r\n\r\n")
        pump.flush()
        client.transport.loseConnection()
        pump.flush()
        await client.closed
        await self.recorders[0].lost
        self.assertEqual(
            self.recorders[0].data, b"echo:hello" + b"GET / HTTP/1.1\r\nHost: peer\r\n\r\n"
        )
        self.assertEqual(
            self.flows,
            [
                Flow(
                    client=("203.0.113.9", 5555),
                    host="node.example.com",
                    port=443,
                    funnel=True,
                    peer="relay",
                )
            ],
        )

    def test_hijacked_request_freed_at_once(self) -> None:
        """After the 101 nothing keeps the request (and its headers) alive: not a cycle with
        its channel either, which only the cyclic collector would free (rarely, in a node
        holding thousands of connections: ~2 KiB each)."""
        made: list[weakref.ref[Request]] = []
        factory = self.site.requestFactory

        def record(*args: Any) -> Request:
            made.append(weakref.ref(req := factory(*args)))
            return req

        self.site.requestFactory = record
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        client, pump = self.connect()
        client.transport.write(request(host=next(iter(self.valid))) + b"echo:hello")
        pump.flush()
        self.assertEqual(client.data, SWITCHING_PROTOCOLS + b"hello")
        self.assertEqual(len(made), 1)
        self.assertIsNone(made[0]())

    async def test_acme_alpn_declined_without_a_pending_challenge(self) -> None:
        """Issue 16: a pool's relay says the client offers acme-tls/1; a node with no pending
        tls-alpn-01 challenge for the name declines (421) so the relay tries the next one."""
        pending: set[str] = set()
        self.ingress.challenge_pending = pending.__contains__
        acme = "Funnel-Ingress-ALPN: acme-tls/1\r\n"
        await self.assertRefused(
            request(extra=acme), 421, "no pending tls-alpn-01 challenge for this name"
        )
        self.assertEqual(self.ingress.counters["ingress_421"], 1)
        pending.add("node.example.com")
        answer = await self.exchange(request(extra=acme))
        self.assertTrue(answer.startswith(SWITCHING_PROTOCOLS), answer[:80])
        pending.clear()
        answer = await self.exchange(request())  # an ordinary visitor is not asked
        self.assertTrue(answer.startswith(SWITCHING_PROTOCOLS), answer[:80])

    async def test_stopping_node_refuses_new_ingress(self) -> None:
        self.ingress.accepting = False
        await self.assertRefused(request(), 503, "shutting down")
        await self.assertRefused(request(target="other.example.com:443"), 403, "denied")

    async def test_ipv6_source(self) -> None:
        client, pump = self.connect()
        client.transport.write(request(src="[2001:db8::7]:443"))
        pump.flush()
        client.transport.loseConnection()
        pump.flush()
        await client.closed
        self.assertEqual(client.data, SWITCHING_PROTOCOLS)
        self.assertEqual(self.flows[0].client, ("2001:db8::7", 443))

    async def test_client_closes_mid_request(self) -> None:
        answer = await self.exchange(request()[:30], close_after=0.1)
        self.assertEqual(answer, b"")
        self.assertEqual(self.flows, [])

    async def test_silent_caller_times_out(self) -> None:
        answer = await self.exchange(b"POST /v0/ingress HTTP/1.1\r\n", close_after=None)
        self.assertNotIn(SWITCHING_PROTOCOLS, answer)
        self.assertEqual(self.flows, [])

    async def test_oversized_head_refused(self) -> None:
        # many header lines adding up past the 16 KiB cap: 431 and closed
        many = "".join(f"X-Junk-{i}: {'a' * 400}\r\n" for i in range(45))
        answer = await self.exchange(request(extra=many))
        self.assertTrue(answer.startswith(b"HTTP/1.1 431 "), answer[:60])
        # one line longer than the cap: 431 too, answered, not a hang
        answer = await self.exchange(request(extra="X-Junk: " + "a" * 20000 + "\r\n"))
        self.assertTrue(answer.startswith(b"HTTP/1.1 431 "), answer[:60])
        # more headers than the peerAPI takes (50), each small: 431
        answer = await self.exchange(request(extra="".join(f"X-{i}: a\r\n" for i in range(60))))
        self.assertTrue(answer.startswith(b"HTTP/1.1 431 "), answer[:60])
        # a request line over 4 KiB: 414
        answer = await self.exchange(b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: peer\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 414 "), answer[:60])
        self.assertEqual(self.flows, [])
        counters = self.ingress.counters
        self.assertEqual(counters.get("peerapi_head_too_large"), 2)
        self.assertEqual(counters.get("peerapi_too_many_headers"), 1)
        self.assertEqual(counters.get("peerapi_request_line_too_long"), 1)

    async def test_slow_head_gets_408(self) -> None:
        """One header line every 0.3 s keeps the idle timeout (2 s) from firing; the head
        deadline (1 s here) does not restart with each byte."""
        self.site.http_limits = HTTPLimits(head_timeout=1.0)
        client, pump = self.connect()
        client.transport.write(b"POST /v0/ingress HTTP/1.1\r\n")
        pump.flush()
        for i in range(8):
            self.elapse(pump, 0.3, client.closed)
            if client.closed.called:
                break
            client.transport.write(b"X-Slow-%d: a\r\n" % i)
            pump.flush()
        self.assertTrue(client.closed.called, "the slow head was not cut at its deadline")
        self.assertLess(self.clock.seconds(), 1.5)
        answer = await client.closed
        self.assertTrue(answer.startswith(b"HTTP/1.1 408 "), answer[:60])
        self.assertEqual(self.ingress.counters.get("peerapi_head_timeout"), 1)
        self.assertEqual(self.flows, [])


class ParseTests(TestCase):
    def test_ip_port(self) -> None:
        good: dict[str, Any] = {
            "1.2.3.4:5": ("1.2.3.4", 5),
            "[2001:db8::1]:443": ("2001:db8::1", 443),
        }
        for text, expected in good.items():
            self.assertEqual(parse_ip_port(text), expected)
        for text in (
            "1.2.3.4",
            "host:80",
            "1.2.3.4:99999",
            "2001:db8::1:443",
            "[1.2.3.4]:5",
            "1.2.3.4:-1",
            "1.2.3.4: 5",
            "",
        ):
            self.assertIsNone(parse_ip_port(text), text)

    def test_host_port(self) -> None:
        self.assertEqual(parse_host_port("node.example.com:443"), ("node.example.com", 443))
        self.assertEqual(parse_host_port("[::1]:80"), ("::1", 80))
        for text in ("node.example.com", "a:b:80", "x:", "x:65536"):
            self.assertIsNone(parse_host_port(text), text)
