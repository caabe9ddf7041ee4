"""serve/upgrade.py: a client's Upgrade is spliced only after the backend's matching 101.

A raw client (no HTTP library that would tidy the bytes) sends an Upgrade request and, in the
same write, a second request. Whatever the backend answers, the second request must never reach
it as raw bytes: after a non-101 it is parsed by the front as a request of its own.
"""

from __future__ import annotations

import time
from typing import Any

import h11
from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from funnel_tw.serve import upgrade

UPGRADE = b"GET /ws HTTP/1.1\r\nHost: front\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: front\r\nX-Secret: 1\r\n\r\n"


class Backend(protocol.Protocol):
    """Answers the first request head per ``mode``; records every byte it is sent."""

    def __init__(self, mode: str, seen: list[bytes], gone: list[defer.Deferred[None]]) -> None:
        self.mode = mode
        self.seen = seen
        self.gone = defer.Deferred[None]()
        gone.append(self.gone)
        self.buffer = b""
        self.answered = False

    def dataReceived(self, data: bytes) -> None:
        self.seen.append(data)
        if self.answered:
            if self.mode == "101":
                self.transport.write(b"echo:" + data)
            return
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            return
        self.answered = True
        answers = {
            "101": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-Test: yes\r\n\r\nhello",
            "101-other": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n"
            b"Connection: Upgrade\r\n\r\n",
            "200": b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nX-Backend: 1\r\n\r\nnot-ws!",
            "chunked": b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n",
            "garbage": b"SSH-2.0-OpenSSH\r\n\r\n",
            # a head that never ends: held up to the limit, then refused
            "huge-head": b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 70000,
            "until-close": b"HTTP/1.0 403 Forbidden\r\n\r\nuntil the end",
        }
        if self.mode == "close":
            self.transport.loseConnection()
        elif self.mode in answers:
            self.transport.write(answers[self.mode])
            if self.mode == "until-close":
                self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.gone.callback(None)


class Front(resource.Resource):
    """/ws is upgraded to the backend; any other path answers itself (the next request)."""

    isLeaf = True

    def __init__(self, port: int, timeout: float) -> None:
        super().__init__()
        self.port = port
        self.timeout = timeout

    def render(self, request: server.Request) -> Any:
        if request.path != b"/ws":
            return b"front:" + request.path
        headers = [(k, v) for k, vs in request.requestHeaders.getAllRawHeaders() for v in vs]
        head = h11.Request(method=request.method, target=request.uri, headers=headers)
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        upgrade.start(
            request, head, endpoint, reactor, self.timeout, lambda h: list(h), "test-backend"
        )
        return server.NOT_DONE_YET


class Client(protocol.Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.closed = defer.Deferred[None]()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)


async def wait_until(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await task.deferLater(reactor, 0.01, lambda: None)


class UpgradeTests(TestCase):
    async def run_mode(self, mode: str, extra: bytes = SMUGGLED, timeout: float = 5.0) -> Any:
        self.seen: list[bytes] = []
        gone: list[defer.Deferred[None]] = []
        backend_factory = protocol.Factory.forProtocol(lambda: Backend(mode, self.seen, gone))
        backend = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            backend_factory
        )
        self.addCleanup(backend.stopListening)
        site = server.Site(Front(backend.getHost().port, timeout))
        front = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(front.stopListening)
        client = Client()
        await endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", front.getHost().port), client
        )

        async def close() -> None:
            if client.transport.connected:
                client.transport.loseConnection()
            await client.closed
            for backend_gone in gone:  # the node's side of each splice is closed too
                await backend_gone
            await task.deferLater(reactor, 0.05, lambda: None)

        self.addCleanup(close)
        client.transport.write(UPGRADE + extra)
        return client

    def backend_saw(self) -> bytes:
        return b"".join(self.seen)

    async def test_non_101_answer_is_relayed_and_the_next_request_parsed_as_http(self) -> None:
        client = await self.run_mode("200")
        await wait_until(lambda: b"front:/smuggled" in client.received)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertIn(b"not-ws!", client.received)
        self.assertIn(b"X-Backend: 1", client.received)
        self.assertEqual(client.received.count(b"HTTP/1.1 200"), 2)
        self.assertNotIn(b"smuggled", self.backend_saw())
        self.assertNotIn(b"X-Secret", self.backend_saw())

    async def test_chunked_error_answer_is_relayed_whole(self) -> None:
        client = await self.run_mode("chunked")
        await wait_until(lambda: b"front:/smuggled" in client.received)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 404 Not Found\r\n"))
        self.assertIn(b"abc", client.received)
        self.assertNotIn(b"smuggled", self.backend_saw())

    async def test_a_real_101_is_spliced(self) -> None:
        client = await self.run_mode("101", extra=b"")
        await wait_until(lambda: b"hello" in client.received)
        head, _, rest = client.received.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"))
        self.assertIn(b"sec-test: yes", head.lower())
        self.assertIn(b"\r\nupgrade: websocket\r\n", head.lower())
        self.assertEqual(head.lower().count(b"connection:"), 1)
        self.assertEqual(rest, b"hello")
        client.transport.write(b"frame-1")
        await wait_until(lambda: b"echo:frame-1" in client.received)

    async def test_bytes_after_the_head_wait_for_the_101(self) -> None:
        client = await self.run_mode("101", extra=b"early-frame")
        await wait_until(lambda: b"echo:early-frame" in client.received)
        # the backend got the head first and the early bytes only after its 101
        first, *later = self.seen
        self.assertNotIn(b"early-frame", first)
        self.assertIn(b"early-frame", b"".join(later))

    async def test_unrequested_protocol_is_refused(self) -> None:
        client = await self.run_mode("101-other")
        await wait_until(lambda: b"front:/smuggled" in client.received)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 502 "))
        self.assertNotIn(b"smuggled", self.backend_saw())

    async def test_not_http_is_refused(self) -> None:
        client = await self.run_mode("garbage")
        await wait_until(lambda: b"front:/smuggled" in client.received)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 502 "))

    async def test_backend_closing_is_502(self) -> None:
        client = await self.run_mode("close")
        await wait_until(lambda: b"front:/smuggled" in client.received)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 502 "))

    async def test_silent_backend_is_504(self) -> None:
        client = await self.run_mode("silent", timeout=0.3)
        await wait_until(lambda: b"front:/smuggled" in client.received)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 504 "))
        self.assertNotIn(b"smuggled", self.backend_saw())

    async def test_read_until_close_answer(self) -> None:
        client = await self.run_mode("until-close")
        await wait_until(lambda: b"front:/smuggled" in client.received)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 403 Forbidden\r\n"))
        self.assertIn(b"until the end", client.received)

    async def test_oversized_answer_head_is_502(self) -> None:
        client = await self.run_mode("huge-head")
        await wait_until(lambda: b"front:/smuggled" in client.received)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 502 "))
        self.assertNotIn(b"aaaa", client.received)
