"""HTTPS mounts through the ingress path, with curl (HTTP/1.1 and HTTP/2) as the client."""

from __future__ import annotations

import shutil

from twisted.trial.unittest import TestCase

from tests._support import ProcessResult, curl

from .harness import HOSTNAME, ServeHarness


class TextAndFilesTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        if shutil.which("curl") is None:
            self.skipTest("curl not installed")
        import os

        self.www = os.path.abspath(self.mktemp())

        os.makedirs(self.www + "/sub")
        with open(self.www + "/index.html", "w") as f:
            f.write("<h1>home</h1>")
        with open(self.www + "/sub/a.txt", "w") as f:
            f.write("file a")
        with open(self.mktemp() + "-secret", "w") as f:
            self.secret = f.name
            f.write("secret")
        os.symlink(self.secret, self.www + "/escape")
        self.h = ServeHarness(
            self,
            f"""[serve 443]
funnel = yes
/healthz = text:ok
/static/ = {self.www}
""",
        )
        self.front, self.port = self.h.front(443)

    async def curl(self, path: str, *extra: str) -> ProcessResult:
        return await self.h.curl(self.port, path, *extra)

    async def test_text_http1_and_http2(self) -> None:
        for version in ("--http1.1", "--http2"):
            code, out, err = await self.curl("/healthz", version, "-w", " %{http_version}")
            self.assertEqual(code, 0, err)
            expected_version = b"1.1" if version == "--http1.1" else b"2"
            self.assertEqual(out, b"ok " + expected_version)

    async def test_files(self) -> None:
        code, out, err = await self.curl("/static/sub/a.txt")
        self.assertEqual((code, out), (0, b"file a"), err)
        code, out, err = await self.curl("/static/")
        self.assertEqual((code, out), (0, b"<h1>home</h1>"), err)

    async def test_no_escape_from_root(self) -> None:
        _, out, _ = await self.curl("/static/escape", "-o", "/dev/null", "-w", "%{http_code}")
        self.assertEqual(out, b"404")
        _, out, _ = await self.curl(
            "/static/..%2f..%2fetc/passwd", "-o", "/dev/null", "-w", "%{http_code}", "--path-as-is"
        )
        self.assertEqual(out, b"400")  # an encoded "/" is ambiguous: refused, never decoded

    async def test_unknown_sni_fails_handshake(self) -> None:
        code, out, _ = await curl("other.example.com", self.port, ca_file=self.h.ca_file)
        self.assertNotEqual(code, 0)
        self.assertEqual(out, b"")
        self.assertGreaterEqual(self.h.node.store.counters.get("tls_unknown_server_name", 0), 1)

    async def test_never_plaintext(self) -> None:
        code, out, _ = await curl(
            "127.0.0.1", self.port, "/healthz", connect=None, max_time=10, scheme="http"
        )
        self.assertNotEqual(code, 0)
        self.assertNotIn(b"ok", out)

    async def test_port_without_funnel_refused(self) -> None:
        front, port = self.h.front(8443)
        code, _, _ = await curl(HOSTNAME, port, "/healthz", ca_file=self.h.ca_file, max_time=10)
        self.assertNotEqual(code, 0)
        self.assertEqual(len(front.refusals), 1)
        self.assertIn("403", front.refusals[0])
