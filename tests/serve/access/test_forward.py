"""forward-auth through the ingress path: a test auth service in the manner of Authelia
(2xx with Remote-* to pass, a redirect to log in, a 401 of its own), and the node's
request to it (X-Forwarded-*, the client's headers, none of the node's)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

from twisted.internet import protocol
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from funnel_tw.serve.access.forward import MAX_ANSWER_BODY, request_headers, verdict
from funnel_tw.serve.access.policy import Identity, Refusal
from tests._support import ProcessResult

from ..backend import backend_site, listen
from ..harness import ServeHarness


class AuthService(resource.Resource):
    """Passes a "session=ok" cookie; sends others to log in; 401 for Bearer clients."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, list[str]]] = []

    def render_GET(self, request: server.Request) -> bytes:
        headers = {
            k.decode().lower(): [v.decode() for v in vs]
            for k, vs in request.requestHeaders.getAllRawHeaders()
        }
        self.seen.append(headers)
        if b"session=ok" in (request.getHeader(b"cookie") or b""):
            request.setHeader(b"Remote-User", b"fa-user")
            request.setHeader(b"Remote-Groups", b"admins,dev")
            request.setHeader(b"Remote-Email", b"fa@example.com")
            return b""
        if b"session=big" in (request.getHeader(b"cookie") or b""):
            request.setResponseCode(403)
            return b"x" * (MAX_ANSWER_BODY * 2)
        if request.getHeader(b"authorization"):
            request.setResponseCode(401)
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="auth-service"')
            return b"token needed\n"
        request.setResponseCode(302)
        uri = request.getHeader(b"x-forwarded-uri") or b""
        request.setHeader(b"Location", b"https://login.example.com/?rd=" + base64.b64encode(uri))
        request.addCookie(b"flow", b"started")
        return b"<a>log in</a>"


class VerdictTests(TestCase):
    def test_request_headers(self) -> None:
        headers = request_headers(
            [
                (b"Cookie", [b"a=b"]),
                (b"X-Forwarded-For", [b"6.6.6.6"]),
                (b"Remote-User", [b"root"]),
                (b"Remote_User", [b"root"]),
                (b"Connection", [b"close"]),
                (b"Content-Length", [b"4"]),
                (b"Host", [b"evil"]),
            ],
            b"POST",
            b"node.example.com",
            b"/a?b=c",
            "192.0.2.7",
        )
        self.assertEqual(
            sorted((k.lower(), v) for k, v in headers.getAllRawHeaders()),
            [
                (b"cookie", [b"a=b"]),
                (b"x-forwarded-for", [b"192.0.2.7"]),
                (b"x-forwarded-host", [b"node.example.com"]),
                (b"x-forwarded-method", [b"POST"]),
                (b"x-forwarded-proto", [b"https"]),
                (b"x-forwarded-uri", [b"/a?b=c"]),
            ],
        )

    def test_verdict(self) -> None:
        self.assertEqual(
            verdict(204, [(b"Remote-User", [b"u"]), (b"Remote-Name", [b"U Ser"])], b""),
            Identity("u", name="U Ser"),
        )
        self.assertIsNone(verdict(200, [], b""))
        refusal = verdict(302, [(b"Location", [b"/login"]), (b"Connection", [b"close"])], b"go")
        self.assertEqual(
            refusal, Refusal(302, "forward_auth_302", ((b"Location", b"/login"),), b"go")
        )


class ForwardAuthTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        for tool in ("curl", "htpasswd"):
            if shutil.which(tool) is None:
                self.skipTest(f"{tool} not installed")
        backend = listen(backend_site())
        self.addCleanup(backend.stopListening)
        self.auth = AuthService()
        auth = listen(server.Site(self.auth))
        self.addCleanup(auth.stopListening)
        dead = listen(protocol.Factory.forProtocol(protocol.Protocol))
        dead_port = dead.getHost().port
        dead.stopListening()
        folder = Path(self.mktemp()).absolute()
        folder.mkdir()
        users = folder / "staff.htpasswd"
        subprocess.run(
            ["htpasswd", "-bcB", str(users), "alice", "wonderland"], check=True, capture_output=True
        )
        users.chmod(0o600)
        port = backend.getHost().port
        self.h = ServeHarness(
            self,
            f"""[access sso]
forward-auth = http://127.0.0.1:{auth.getHost().port}/api/verify

[access both]
basic-auth-file = {users}
forward-auth = http://127.0.0.1:{auth.getHost().port}/api/verify

[access down]
forward-auth = http://127.0.0.1:{dead_port}/api/verify

[serve 443]
funnel = yes
access = sso
/ = http://127.0.0.1:{port}
/both/ = http://127.0.0.1:{port}/
access /both/ = both
/down/ = http://127.0.0.1:{port}/
access /down/ = down
""",
        )
        self.front, self.port = self.h.front(443)

    async def curl(self, path: str, *extra: str) -> ProcessResult:
        return await self.h.curl(self.port, path, *extra)

    async def test_pass_with_identity(self) -> None:
        for version in ("--http1.1", "--http2"):
            code, out, err = await self.curl(
                "/app/x?q=1", version, "-b", "session=ok", "-H", "Remote-User: root",
                "-H", "X-Forwarded-For: 6.6.6.6",
            )  # fmt: skip
            self.assertEqual(code, 0, err)
            seen = json.loads(out)["headers"]
            self.assertEqual(seen["remote-user"], ["fa-user"])
            self.assertEqual(seen["remote-groups"], ["admins,dev"])
            self.assertEqual(seen["remote-email"], ["fa@example.com"])
            self.assertEqual(seen["x-forwarded-for"], ["127.0.0.1"])
        asked = self.auth.seen[-1]
        self.assertEqual(asked["x-forwarded-method"], ["GET"])
        self.assertEqual(asked["x-forwarded-uri"], ["/app/x?q=1"])
        self.assertEqual(asked["x-forwarded-host"], [f"node.example.com:{self.port}"])
        self.assertEqual(asked["x-forwarded-proto"], ["https"])
        self.assertEqual(asked["x-forwarded-for"], ["127.0.0.1"])
        self.assertEqual(asked["cookie"], ["session=ok"])
        self.assertNotIn("remote-user", asked)

    async def test_answer_goes_back_unchanged(self) -> None:
        code, out, err = await self.curl("/app/%2e%2e/secret", "--path-as-is", "-D", "-")
        self.assertEqual(code, 0, err)
        head, _, body = out.partition(b"\r\n\r\n")
        self.assertIn(b" 302", head.split(b"\r\n")[0])
        # the service saw the normalized path, the one routing and forwarding use
        location = b"https://login.example.com/?rd=" + base64.b64encode(b"/secret")
        self.assertIn(b"\r\nlocation: " + location, head.replace(b"Location:", b"location:"))
        self.assertIn(b"set-cookie: flow=started", head.lower())
        self.assertEqual(body, b"<a>log in</a>")
        code, out, err = await self.curl("/x", "-H", "Authorization: Bearer t", "-D", "-")
        self.assertIn(
            b'www-authenticate: Bearer realm="auth-service"',
            out.lower().replace(b"bearer", b"Bearer"),
        )
        self.assertTrue(out.endswith(b"token needed\n"))
        code, out, err = await self.curl("/x", "-b", "session=big")
        self.assertEqual(len(out), MAX_ANSWER_BODY, "a refusing body is cut")
        self.assertEqual(self.h.node.access.counters["forward_auth_302"], 1)

    async def test_credentials_then_forward_auth(self) -> None:
        code, out, err = await self.curl("/both/", "-w", "%{http_code}", "-o", "/dev/null")
        self.assertEqual(out, b"401", "credentials first")
        self.assertEqual(self.auth.seen, [], "the service is not asked before")
        code, out, err = await self.curl(
            "/both/", "-u", "alice:wonderland", "-w", "%{http_code}", "-o", "/dev/null"
        )
        self.assertEqual((code, out), (0, b"302"), err)
        self.assertNotIn("authorization", self.auth.seen[-1], "used by the node")
        _code, out, _err = await self.curl("/both/", "-u", "alice:wonderland", "-b", "session=ok")
        self.assertEqual(json.loads(out)["headers"]["remote-user"], ["fa-user"])

    async def test_unreachable_service_fails_closed(self) -> None:
        _code, out, _err = await self.curl("/down/", "-w", "%{http_code}", "-o", "/dev/null")
        self.assertEqual(out, b"503")
        self.assertEqual(self.h.node.access.counters["forward_auth_unavailable"], 1)
