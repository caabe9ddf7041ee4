"""Proxy backends beyond plain http: unix sockets, https+insecure, and one that dies mid-body."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from twisted.internet import protocol, reactor
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from tests._support import ProcessResult, issue

from .harness import ServeHarness


class Hello(resource.Resource):
    isLeaf = True

    def __init__(self, text: bytes) -> None:
        super().__init__()
        self.text = text

    def render_GET(self, request: server.Request) -> bytes:
        return self.text + b" " + (request.getHeader(b"x-forwarded-proto") or b"")


class DiesMidBody(protocol.Protocol):
    """Promises 1 MB, sends 1000 bytes, then resets the connection."""

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n" + b"x" * 1000
            )
            reactor.callLater(0.2, self.transport.abortConnection)  # type: ignore[attr-defined]


class BackendKindsTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        if shutil.which("curl") is None:
            self.skipTest("curl not installed")
        # unix socket paths are short: keep the socket in /tmp
        sock_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"ftw-{os.getpid()}-{id(self)}"
        sock_dir.mkdir()
        self.addCleanup(shutil.rmtree, sock_dir, True)
        unix = reactor.listenUNIX(str(sock_dir / "app.sock"), server.Site(Hello(b"unix")))
        self.addCleanup(unix.stopListening)
        tls = reactor.listenSSL(
            0,
            server.Site(Hello(b"tls")),
            issue("backend.invalid", san=()).private_certificate().options(),
            interface="127.0.0.1",
        )
        self.addCleanup(tls.stopListening)
        dies = reactor.listenTCP(
            0, protocol.Factory.forProtocol(DiesMidBody), interface="127.0.0.1"
        )
        self.addCleanup(dies.stopListening)
        self.h = ServeHarness(
            self,
            f"""[serve 443]
funnel = yes
/unix = unix:{sock_dir / "app.sock"}
/insecure = https+insecure://127.0.0.1:{tls.getHost().port}
/verified = https://127.0.0.1:{tls.getHost().port}
/dies = http://127.0.0.1:{dies.getHost().port}
""",
        )
        self.front, self.port = self.h.front(443)

    async def curl(self, path: str, *extra: str) -> ProcessResult:
        return await self.h.curl(self.port, path, *extra)

    async def test_unix_socket_backend(self) -> None:
        code, out, err = await self.curl("/unix")
        self.assertEqual((code, out), (0, b"unix https"), err)

    async def test_https_insecure_backend(self) -> None:
        code, out, err = await self.curl("/insecure")
        self.assertEqual((code, out), (0, b"tls https"), err)

    async def test_https_backend_is_verified(self) -> None:
        # the same self-signed backend behind https:// (verified) is refused: 502
        _, out, _ = await self.curl("/verified", "-o", "/dev/null", "-w", "%{http_code}")
        self.assertEqual(out, b"502")
        from service_identity.exceptions import CertificateError

        self.flushLoggedErrors(CertificateError)  # Twisted logs the refused certificate

    async def test_backend_dying_mid_body_aborts_the_client(self) -> None:
        for version in ("--http1.1", "--http2"):
            code, out, _ = await self.curl(
                "/dies", version, "-o", "/dev/null", "-w", "%{http_code} %{size_download}"
            )
            self.assertNotEqual(code, 0, version)  # curl sees the transfer cut short
            status, size = out.split()
            self.assertEqual(status, b"200")
            self.assertLess(int(size), 1_000_000)


__all__: list[Any] = []
