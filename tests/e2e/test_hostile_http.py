"""Hostile HTTP through the whole funnel (relay process -> WireGuard -> node process -> backend),
from a raw TLS client: path confusion, forged identity headers under `_` aliases, and Upgrade
smuggling. The backend (tests/e2e/backend.py) shows the path and headers it received."""

from __future__ import annotations

import html
import re

from twisted.trial.unittest import SynchronousTestCase

from tests._support import tls_exchange
from tests.e2e import harness

NAME = "hostile-http.e2e.test"


class HostileHTTPThroughTheFunnel(SynchronousTestCase):
    def setUp(self) -> None:
        harness.require_tools(self, "curl")
        self.funnel = harness.Funnel(self.addCleanup)
        self.node = self.funnel.add_node("home", [NAME])
        self.funnel.start()

    def exchange(self, raw: bytes) -> bytes:
        return tls_exchange(self.funnel.public_port, str(self.node.ca), NAME, raw, quiet=2.0)

    def get(self, path: bytes, headers: bytes = b"") -> bytes:
        return self.exchange(
            b"GET "
            + path
            + b" HTTP/1.1\r\nHost: "
            + NAME.encode()
            + b"\r\n"
            + headers
            + b"Connection: close\r\n\r\n"
        )

    @staticmethod
    def shown(response: bytes, what: str) -> list[str]:
        text = response.decode("utf-8", "replace")
        if what == "path":
            return [html.unescape(p) for p in re.findall(r"<p id='path'>path=(.*?)</p>", text)]
        return [html.unescape(h) for h in re.findall(r"<pre id='headers'>(.*?)</pre>", text, re.S)]

    def assert_still_serving(self) -> None:
        result = self.funnel.curl(self.node)
        self.assertEqual((result.returncode, result.status), (0, 200), result.stderr)

    def test_paths(self) -> None:
        cases = {
            b"/a/%2e%2e/b": "/b",
            b"/%61/x": "/a/x",
            b"//a///b/./c": "/a/b/c",
            b"/a/../../etc/passwd": "/etc/passwd",
            b"/q?x=%2f..": "/q?x=%2f..",
        }
        for raw, want in cases.items():
            self.assertEqual(self.shown(self.get(raw), "path"), [want], raw)
        for raw in (b"/a%2fb", b"/a%5cb", b"/a%00", b"/..;/admin", b"/a\\b", b"/%"):
            response = self.get(raw)
            self.assertTrue(response.startswith(b"HTTP/1.1 400 "), (raw, response[:80]))
            self.assertEqual(self.shown(response, "path"), [], raw)
        self.assert_still_serving()

    def test_forged_headers(self) -> None:
        forged = (
            b"X_Forwarded_For: 6.6.6.6\r\nX-Forwarded-For: 6.6.6.6\r\n"
            b"Tailscale_User_Login: admin@example.com\r\n"
            b"Tailscale-User-Login: admin@example.com\r\n"
            b"Remote-User: admin\r\nX-Real-IP: 6.6.6.6\r\nOther_Header: x\r\n"
        )
        (headers,) = self.shown(self.get(b"/h", forged), "headers")
        lower = headers.lower()
        self.assertNotIn("6.6.6.6", lower)
        self.assertNotIn("admin", lower)
        self.assertNotIn("_", lower)
        self.assertIn("x-forwarded-for: 127.0.0.1", lower)
        self.assertIn("tailscale-funnel-request: ?1", lower)
        self.assert_still_serving()

    def test_upgrade_smuggling(self) -> None:
        # the backend (Python's http.server) answers 200 to an Upgrade: no splice may follow
        second = (
            b"GET /second HTTP/1.1\r\nHost: " + NAME.encode() + b"\r\n"
            b"X_Forwarded_For: 6.6.6.6\r\nTailscale-User-Login: admin\r\nConnection: close\r\n\r\n"
        )
        response = self.exchange(
            b"GET /first HTTP/1.1\r\nHost: " + NAME.encode() + b"\r\n"
            b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n" + second
        )
        self.assertEqual(self.shown(response, "path"), ["/first", "/second"])
        headers = self.shown(response, "headers")[1].lower()
        self.assertNotIn("6.6.6.6", headers)
        self.assertNotIn("admin", headers)
        self.assertIn("x-forwarded-for: 127.0.0.1", headers)
        self.assert_still_serving()
