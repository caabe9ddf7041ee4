"""Slow and oversized clients against the node's HTTPS port, end to end through the harness
(front, peerAPI ingress, the node's TLS): raw clients, short deadlines set on the dispatcher.

Each class ends in a refusal that is answered where HTTP allows (408/414/431), a closed
connection, a counter, and a log line with the client's ip:port and the SNI host; the node
serves an ordinary request afterwards. The last test runs a few hundred slow clients at once.
"""

from __future__ import annotations

import contextlib
import gc
import socket
import ssl
import time
import tracemalloc
from typing import Any

from twisted.internet import defer, endpoints, protocol, reactor, task, threads
from twisted.internet import ssl as tssl
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from funnel_tw.web.httplimits import HTTPLimits
from tests.serve.harness import HOSTNAME, ServeHarness

MIB = 1 << 20
#: what the test runner allocates meanwhile (its log events; under ``trial -j``, the AMP
#: messages carrying them to the manager until it answers): not what the node keeps
_RUNNER = [
    tracemalloc.Filter(False, pattern)
    for pattern in (
        "*/twisted/logger/*",
        "*/twisted/python/log.py",
        "*/twisted/protocols/amp.py",
        "*/twisted/trial/*",
    )
]


def _held() -> int:
    """Bytes traced now, the test runner's own left out."""
    snapshot = tracemalloc.take_snapshot().filter_traces(_RUNNER)
    return sum(stat.size for stat in snapshot.statistics("filename"))


def tls_client(port: int, ca: str) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=ca)
    context.set_alpn_protocols(["http/1.1"])
    plain = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(plain, server_hostname=HOSTNAME)


def read_all(tls: ssl.SSLSocket, seconds: float) -> tuple[bytes, bool]:
    """Everything until the node closes (True) or ``seconds`` pass (False)."""
    tls.settimeout(0.2)
    received, end = b"", time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            chunk = tls.recv(65536)
        except (TimeoutError, ssl.SSLWantReadError):
            continue
        except (OSError, ssl.SSLError):
            return received, True
        if not chunk:
            return received, True
        received += chunk
    return received, False


def get(port: int, ca: str) -> bytes:
    with tls_client(port, ca) as tls:
        tls.sendall(
            b"GET / HTTP/1.1\r\nHost: " + HOSTNAME.encode() + b"\r\nConnection: close\r\n\r\n"
        )
        return read_all(tls, 5)[0]


class _Slow(protocol.Protocol):
    """Sends ``chunks`` one every ``interval`` seconds; records the answer and the close."""

    def __init__(self, chunks: list[bytes], interval: float) -> None:
        self.chunks = list(chunks)
        self.interval = interval
        self.received = b""
        self.closed: defer.Deferred[bytes] = defer.Deferred()
        self.loop: task.LoopingCall | None = None

    def connectionMade(self) -> None:
        if self.chunks:
            self.loop = task.LoopingCall(self._next)
            self.loop.start(self.interval)

    def _next(self) -> None:
        if self.chunks:
            self.transport.write(self.chunks.pop(0))  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        self.closed.callback(self.received)


class LimitsTests(TestCase):
    timeout = 90

    async def setUp(self) -> None:  # type: ignore[override]
        self.harness = ServeHarness(self, "[serve 443]\nfunnel = yes\n/ = text:ok\n")
        self.addCleanup(task.deferLater, reactor, 0.5, lambda: None)
        dispatcher = self.harness.node.dispatcher
        dispatcher.tls_handshake_timeout = 1.0
        dispatcher.close_timeout = 1.0
        dispatcher.http_limits = HTTPLimits(head_timeout=1.0, body_timeout=1.0, body_min_rate=1000)
        self.dispatcher = dispatcher
        _, self.port = self.harness.front(443)
        self.logs: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if "refused" in event.get("log_format", ""):
                self.logs.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    async def still_serving(self) -> None:
        answer = await threads.deferToThread(get, self.port, self.harness.ca_file)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer[:60])
        self.assertTrue(answer.endswith(b"ok"))

    async def exchange(self, raw: bytes, seconds: float = 5) -> tuple[bytes, bool]:
        def run() -> tuple[bytes, bool]:
            with tls_client(self.port, self.harness.ca_file) as tls:
                with contextlib.suppress(OSError):  # the node may close before all is sent
                    tls.sendall(raw)
                return read_all(tls, seconds)

        result: tuple[bytes, bool] = await threads.deferToThread(run)
        return result

    def assertLogged(self, why: str) -> None:
        found = [line for line in self.logs if why in line]
        self.assertTrue(found, self.logs)
        self.assertIn("refused 127.0.0.1:", found[0])  # the client's ip:port
        self.assertIn(f"for {HOSTNAME}:443", found[0])  # the SNI host

    # --- TLS -------------------------------------------------------------------------------

    async def test_tls_handshake_deadline(self) -> None:
        """A client that connects and never finishes its handshake is aborted at 1 s."""

        def run() -> tuple[float, bool]:
            start = time.monotonic()
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as plain:
                plain.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello
                plain.settimeout(5)
                try:
                    closed = plain.recv(100) == b""
                except OSError:
                    closed = True
                return time.monotonic() - start, closed

        elapsed, closed = await threads.deferToThread(run)
        self.assertTrue(closed)
        self.assertLess(elapsed, 3)
        self.assertEqual(self.dispatcher.counters.get("tls_handshake_timeout"), 1)
        self.assertLogged("TLS handshake not complete")
        await self.still_serving()

    async def test_close_is_bounded_for_a_client_that_keeps_sending(self) -> None:
        """After a 431 the node drops what the client still sends and aborts within the
        close deadline (1 s), close_notify or not."""

        def run() -> tuple[bytes, float]:
            with tls_client(self.port, self.harness.ca_file) as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 100_000)
                start = time.monotonic()
                answer = b""
                tls.settimeout(0.05)
                while time.monotonic() - start < 8:
                    try:
                        tls.sendall(b"b" * 16384)
                        answer += tls.recv(65536)
                    except (TimeoutError, ssl.SSLWantReadError):
                        continue
                    except (OSError, ssl.SSLError):
                        break
                return answer, time.monotonic() - start

        answer, elapsed = await threads.deferToThread(run)
        self.assertTrue(answer.startswith(b"HTTP/1.1 431 "), answer[:60])
        self.assertLess(elapsed, 4)
        await self.still_serving()

    # --- heads -----------------------------------------------------------------------------

    async def test_slow_head_408(self) -> None:
        client = _Slow([b"GET / HTTP/1.1\r\n"] + [b"X-%d: a\r\n" % i for i in range(20)], 0.2)
        await self.connect_tls(client)
        answer = await client.closed
        self.assertTrue(answer.startswith(b"HTTP/1.1 408 "), answer[:60])
        self.assertEqual(self.dispatcher.counters.get("http_head_timeout"), 1)
        self.assertLogged("request head not complete after 1 s")
        await self.still_serving()

    async def test_oversized_heads(self) -> None:
        """A 100 KB header line, 10,000 small headers, a 9 KB request line: answered, closed."""
        cases = [
            (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", 431),
            (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(10_000)), 431),
            (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
        ]
        for raw, status in cases:
            answer, closed = await self.exchange(raw)
            self.assertTrue(answer.startswith(b"HTTP/1.1 %d " % status), answer[:60])
            self.assertTrue(closed, f"{status}: not closed")
        counters = self.dispatcher.counters
        self.assertEqual(counters.get("http_head_too_large"), 1)
        self.assertEqual(counters.get("http_too_many_headers"), 1)
        self.assertEqual(counters.get("http_request_line_too_long"), 1)
        self.assertLogged("more than 100 headers")
        await self.still_serving()

    # --- bodies ----------------------------------------------------------------------------

    async def test_slow_body_408(self) -> None:
        head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
        client = _Slow([head] + [b"x" * 10] * 40, 0.1)
        await self.connect_tls(client)
        answer = await client.closed
        self.assertTrue(answer.startswith(b"HTTP/1.1 408 "), answer[:60])
        self.assertEqual(self.dispatcher.counters.get("http_body_too_slow"), 1)
        await self.still_serving()

    # --- many at once ----------------------------------------------------------------------

    async def connect_tls(self, client: protocol.Protocol) -> None:
        with open(self.harness.ca_file, "rb") as f:
            ca = tssl.Certificate.loadPEM(f.read())
        options = tssl.optionsForClientTLS(HOSTNAME, trustRoot=ca)
        endpoint = endpoints.wrapClientTLS(
            options, endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        )
        await endpoint.connect(protocol.Factory.forProtocol(lambda: client))

    async def test_three_hundred_slow_clients(self) -> None:
        """100 that never finish the TLS handshake, 100 slow heads, 100 slow bodies at
        once: all closed by their deadlines, the memory they held given back, and an
        ordinary request served meanwhile."""
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        gc.collect()
        before = _held()
        before_peak = tracemalloc.get_traced_memory()[0]
        start = time.monotonic()

        plain = [_Slow([b"\x16\x03\x01\x02\x00\x01"], 0.5) for _ in range(100)]
        for client in plain:
            await endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(
                protocol.Factory.forProtocol(lambda c=client: c)
            )
        heads = [
            _Slow([b"GET / HTTP/1.1\r\n"] + [b"X-%d: a\r\n" % i for i in range(30)], 0.3)
            for _ in range(100)
        ]
        body = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
        bodies = [_Slow([body] + [b"x" * 10] * 30, 0.3) for _ in range(100)]
        await defer.gatherResults(
            [defer.ensureDeferred(self.connect_tls(c)) for c in heads + bodies]
        )
        await self.still_serving()  # meanwhile
        answers = await defer.gatherResults([c.closed for c in plain + heads + bodies])
        elapsed = time.monotonic() - start
        peak = tracemalloc.get_traced_memory()[1] - before_peak

        self.assertLess(elapsed, 20)
        self.assertEqual(sum(a.startswith(b"HTTP/1.1 408 ") for a in answers[100:]), 200)
        counters = self.dispatcher.counters
        self.assertEqual(counters.get("tls_handshake_timeout"), 100)
        self.assertEqual(counters.get("http_head_timeout"), 100)
        self.assertEqual(counters.get("http_body_too_slow"), 100)
        await task.deferLater(reactor, 0.5, lambda: None)
        del plain, heads, bodies, answers  # the clients are the test's: count what the node keeps
        gc.collect()
        kept = _held() - before
        self.assertLess(peak, 300 * 100 * 1024, f"peak {peak}")  # under 100 KiB a client
        self.assertLess(kept, 2 * MIB, f"kept {kept}")
        await self.still_serving()
