"""Hostile HTTP through the node's TLS and proxy, from a raw TLS client (Python ssl + socket:
no HTTP library that would normalize the path or tidy the headers first).

Classes: path confusion (routing and forwarding must agree on one normalized path), identity
and forwarding headers under ``_`` aliases and other spellings, and Upgrade smuggling. After
each class the node still serves an ordinary request.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet import protocol, reactor, threads
from twisted.trial.unittest import TestCase

from tests._support import tls_exchange
from tests.serve.harness import HOSTNAME, ServeHarness


class Recorder(protocol.Protocol):
    """A raw HTTP/1.1 backend: records every byte; answers each head with the request line."""

    def __init__(self, seen: list[bytes], upgrade_answer: bytes | None) -> None:
        self.seen = seen
        self.buffer = b""
        self.upgrade_answer = upgrade_answer

    def dataReceived(self, data: bytes) -> None:
        self.seen.append(data)
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0]
            if b"upgrade:" in head.lower() and self.upgrade_answer is not None:
                self.transport.write(self.upgrade_answer)
                continue
            body = b"backend:" + line
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


class HostileHTTPTests(TestCase):
    timeout = 120

    async def setUp(self) -> None:  # type: ignore[override]
        self.seen: list[bytes] = []
        self.upgrade_answer: bytes | None = None
        factory = protocol.Factory.forProtocol(lambda: Recorder(self.seen, self.upgrade_answer))
        backend = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(backend.stopListening)
        files = Path(self.mktemp()).absolute()
        files.mkdir()
        (files / "ok.txt").write_text("file-ok")
        self.harness = ServeHarness(
            self,
            f"""[serve 443]
funnel = yes
/ = text:root
/app/ = http://127.0.0.1:{backend.getHost().port}/base/
/raw/ = http://127.0.0.1:{backend.getHost().port}/raw/
underscores-in-headers /raw/ = yes
/files/ = {files}
""",
        )
        _, self.port = self.harness.front(443)

    async def send(self, raw: bytes) -> bytes:
        result: bytes = await threads.deferToThread(
            tls_exchange, self.port, self.harness.ca_file, HOSTNAME, raw
        )
        return result

    async def get(self, path: bytes, headers: bytes = b"") -> bytes:
        return await self.send(
            b"GET "
            + path
            + b" HTTP/1.1\r\nHost: "
            + HOSTNAME.encode()
            + b"\r\n"
            + headers
            + b"Connection: close\r\n\r\n"
        )

    def backend_heads(self) -> list[bytes]:
        return [h for h in b"".join(self.seen).split(b"\r\n\r\n") if h]

    async def still_serving(self) -> None:
        response = await self.get(b"/app/alive")
        self.assertIn(b"backend:GET /base/alive HTTP/1.1", response)

    async def test_path_confusion_class(self) -> None:
        # raw path -> what must answer: the backend with that exact path, or root / files text
        routed: dict[bytes, bytes] = {
            b"/app/x": b"backend:GET /base/x",
            b"/app/%2e%2e/app/x": b"backend:GET /base/x",
            b"/app/./x": b"backend:GET /base/x",
            b"/%61pp/x": b"backend:GET /base/x",
            b"/%61%70%70/x": b"backend:GET /base/x",
            b"/app//x": b"backend:GET /base/x",
            b"//app/x": b"backend:GET /base/x",
            b"/app/x/../y": b"backend:GET /base/y",
            b"/app/caf%c3%a9?q=%2f&r=..": b"backend:GET /base/caf%C3%A9?q=%2f&r=..",
            b"/app/../secret": b"root",
            b"/app/%2E%2E/secret": b"root",
            b"/app/.%2e/secret": b"root",
            b"/files/ok.txt": b"file-ok",
            b"/app/../files/ok.txt": b"file-ok",
            b"https://" + HOSTNAME.encode() + b"/app/abs": b"backend:GET /base/abs",
        }
        for raw, want in routed.items():
            self.seen.clear()
            response = await self.get(raw)
            self.assertEqual(status_of(response), 200, (raw, response))
            self.assertIn(want, response, raw)
            if not want.startswith(b"backend:"):
                self.assertEqual(self.seen, [], f"{raw!r} reached the backend")
        refused = [
            b"/app/..%2fsecret",
            b"/app/..%2Fsecret",
            b"/app/%5c..%5csecret",
            b"/app/..\\secret",
            b"/app/a%00b",
            b"/app/a%zz",
            b"/app/a%",
            b"/app/..;/secret",
            b"/files/..%2f..%2fetc/passwd",
        ]
        self.seen.clear()
        for raw in refused:
            response = await self.get(raw)
            self.assertEqual(status_of(response), 400, (raw, response))
        self.assertEqual(self.seen, [], "a refused path reached the backend")
        response = await self.get(b"/app/" + b"a" * 9000)
        self.assertEqual(status_of(response), 414)
        await self.still_serving()

    async def test_owned_headers_never_reach_the_backend(self) -> None:
        forged = [
            b"X-Forwarded-For: 6.6.6.6",
            b"X_Forwarded_For: 6.6.6.6",
            b"x_forwarded_host: evil",
            b"X-Forwarded-Proto: http",
            b"Forwarded: for=6.6.6.6",
            b"Tailscale-User-Login: admin@example.com",
            b"Tailscale_User_Login: admin@example.com",
            b"tailscale-user-name: Admin",
            b"Tailscale-Anything-New: x",
            b"Remote-User: admin",
            b"Remote_User: admin",
            b"X-Real-IP: 6.6.6.6",
            b"X_Real_IP: 6.6.6.6",
            b"True-Client-IP: 6.6.6.6",
            b"CF-Connecting-IP: 6.6.6.6",
            b"Some_Header: dropped by default",
        ]
        response = await self.get(b"/app/h", b"\r\n".join(forged) + b"\r\nX-Kept: yes\r\n")
        self.assertEqual(status_of(response), 200, response)
        (head,) = self.backend_heads()
        lower = head.lower()
        self.assertNotIn(b"6.6.6.6", lower)
        self.assertNotIn(b"admin", lower)
        self.assertNotIn(b"evil", lower)
        self.assertNotIn(b"_", lower.split(b"\r\n", 1)[1])  # no header name or value with "_"
        self.assertNotIn(b"tailscale-anything-new", lower)
        self.assertIn(b"x-kept: yes", lower)
        self.assertIn(b"x-forwarded-for: 127.0.0.1", lower)
        self.assertIn(b"x-forwarded-proto: https", lower)
        self.assertIn(b"tailscale-funnel-request: ?1", lower)
        self.assertEqual(lower.count(b"x-forwarded-for"), 1)
        await self.still_serving()

    async def test_underscore_opt_in_keeps_owned_headers_dropped(self) -> None:
        headers = b"Some_Header: kept\r\nX_Forwarded_For: 6.6.6.6\r\nRemote_User: admin\r\n"
        response = await self.get(b"/raw/h", headers)
        self.assertIn(b"backend:GET /raw/h HTTP/1.1", response)
        (head,) = self.backend_heads()
        lower = head.lower()
        self.assertIn(b"some_header: kept", lower)  # this mount opted in
        self.assertNotIn(b"6.6.6.6", lower)  # the node's own headers: never
        self.assertNotIn(b"admin", lower)
        self.seen.clear()
        await self.get(b"/app/h", headers)  # the other mount did not
        self.assertNotIn(b"some_header", b"".join(self.seen).lower())

    async def test_upgrade_smuggling_class(self) -> None:
        # the backend refuses the upgrade (plain 200); the bytes after the head are a second
        # request that must be parsed by the node as such, with the proxy's rules applied
        smuggled = (
            b"GET /app/second HTTP/1.1\r\nHost: " + HOSTNAME.encode() + b"\r\n"
            b"X_Forwarded_For: 6.6.6.6\r\nTailscale-User-Login: admin\r\n"
            b"Connection: close\r\n\r\n"
        )
        for upgrade in (b"websocket", b"h2c", b"WebSocket, foo"):
            self.seen.clear()
            response = await self.send(
                b"GET /app/ws HTTP/1.1\r\nHost: " + HOSTNAME.encode() + b"\r\n"
                b"Connection: Upgrade\r\nUpgrade: " + upgrade + b"\r\n\r\n" + smuggled
            )
            self.assertIn(b"backend:GET /base/ws HTTP/1.1", response)
            self.assertIn(b"backend:GET /base/second HTTP/1.1", response)
            heads = self.backend_heads()
            self.assertEqual(len(heads), 2, heads)
            second = heads[1].lower()
            self.assertNotIn(b"6.6.6.6", second)
            self.assertNotIn(b"admin", second)
            self.assertIn(b"x-forwarded-for: 127.0.0.1", second)
            self.assertIn(b"tailscale-funnel-request: ?1", second)
        await self.still_serving()

    async def test_upgrade_to_an_unrequested_protocol_is_502(self) -> None:
        self.upgrade_answer = (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
        )
        response = await self.send(
            b"GET /app/ws HTTP/1.1\r\nHost: " + HOSTNAME.encode() + b"\r\n"
            b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\nRAW-BYTES"
        )
        self.assertEqual(status_of(response), 502, response)
        self.assertNotIn(b"RAW-BYTES", b"".join(self.seen))
        await self.still_serving()
