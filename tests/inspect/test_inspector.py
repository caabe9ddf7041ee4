"""The inspector on a node's serve stack: curl through a front (TLS, HTTP/1.1 and HTTP/2) to a
recording backend, the JSON API and live events read with curl, replay, the gate."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from funnel_tw.config.model import InspectConfig
from funnel_tw.inspect.service import Inspector
from funnel_tw.node.service import NodeService
from tests._support import ProcessResult, curl, wait_until

from ..serve.harness import ServeHarness


class Recorder(resource.Resource):
    """The backend: remembers every request (method, uri, headers, body)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, Any]] = []

    def render(self, request: server.Request) -> bytes:
        body = request.content.read() if request.content is not None else b""
        self.seen.append(
            {
                "method": request.method,
                "uri": request.uri,
                "headers": {k.lower(): vs for k, vs in request.requestHeaders.getAllRawHeaders()},
                "body": body,
            }
        )
        if request.uri == b"/in/big":
            return b"z" * 200_000
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"set-cookie", b"sid=backend-secret; Path=/")
        return json.dumps({"ok": True, "n": len(self.seen)}).encode()


class InspectorCase(TestCase):
    timeout = 60
    config = InspectConfig(("127.0.0.1", 0), body_limit=1024)

    def setUp(self) -> None:
        if shutil.which("curl") is None:
            self.skipTest("curl not installed")
        self.backend = Recorder()
        listening = reactor.listenTCP(0, server.Site(self.backend), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        b = listening.getHost().port
        self.h = ServeHarness(
            self,
            f"""[serve 443]
funnel = yes
/ = http://127.0.0.1:{b}
/hooks/ = http://127.0.0.1:{b}/in
/text = text:hello
""",
        )
        self.inspector = Inspector(self.config, reactor, self.h.node.dispatcher)
        self.inspector.startService()
        self.addCleanup(self.inspector.stopService)
        self.api = self.inspector.root.port
        self.front, self.port = self.h.front(443)

    async def through(self, path: str, *extra: str) -> ProcessResult:
        result = await self.h.curl(self.port, path, *extra)
        self.assertEqual(result[0], 0, result)
        return result

    async def api_call(self, path: str, *extra: str, host: str | None = None) -> ProcessResult:
        more = ("-H", f"Host: {host}") if host else ()
        return await curl("127.0.0.1", self.api, path, *more, *extra, connect=None, scheme="http")

    async def api_json(self, path: str) -> Any:
        code, out, err = await self.api_call(path)
        self.assertEqual(code, 0, err)
        return json.loads(out)

    async def captured(self, n: int) -> list[dict[str, Any]]:
        """The API's list once ``n`` requests are there, each with its response."""

        def ready() -> bool:
            entries = self.inspector.store.newest()
            return len(entries) >= n and all(e.done for e in entries)

        await wait_until(ready, 10, f"{n} finished requests")
        data = await self.api_json("/api/requests/http")
        self.assertEqual(data["uri"], "/api/requests/http")
        return data["requests"]  # type: ignore[no-any-return]


class InspectorTests(InspectorCase):
    async def test_a_request_in_ngrok_shape_http1_and_http2(self) -> None:
        for version in ("--http1.1", "--http2"):
            await self.through(
                "/hooks/x?a=1",
                version,
                "-H",
                "Authorization: Bearer tok-123",
                "-H",
                "Cookie: sid=cookie-secret",
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                '{"event": "push"}',
            )
        entries = await self.captured(2)
        self.assertEqual(len(entries), 2)
        for e, proto in zip(entries, ("HTTP/2", "HTTP/1.1"), strict=True):  # newest first
            self.assertEqual(e["request"]["method"], "POST")
            self.assertEqual(e["request"]["uri"], "/hooks/x?a=1")
            self.assertEqual(e["request"]["proto"], proto)
            self.assertEqual(e["mount"], "/hooks/")
            self.assertEqual(e["tunnel_name"], "/hooks/")
            self.assertTrue(e["funnel"])
            self.assertEqual(e["remote_addr"], "127.0.0.1")
            self.assertEqual(e["response"]["status_code"], 200)
            self.assertGreater(e["duration"], 0)
            headers = {k.lower(): v for k, v in e["request"]["headers"].items()}
            self.assertEqual(headers["authorization"], ["Bearer [masked]"])
            self.assertEqual(headers["cookie"], ["sid=[masked]"])
            raw = base64.b64decode(e["request"]["raw"])
            self.assertTrue(raw.startswith(f"POST /hooks/x?a=1 {proto}\r\n".encode()), raw)
            self.assertTrue(raw.endswith(b'\r\n\r\n{"event": "push"}'))
            self.assertNotIn(b"tok-123", raw)
            answer = base64.b64decode(e["response"]["raw"])
            self.assertIn(b"sid=[masked]; Path=/", answer)
            self.assertNotIn(b"backend-secret", answer)
            self.assertTrue(answer.endswith(b'"n": 1}') or answer.endswith(b'"n": 2}'))
        one = await self.api_json(f"/api/requests/http/{entries[1]['id']}")
        self.assertEqual(one["id"], entries[1]["id"])
        self.assertEqual(one["request"]["raw"], entries[1]["request"]["raw"])
        limited = await self.api_json("/api/requests/http?limit=1")
        self.assertEqual([e["id"] for e in limited["requests"]], [entries[0]["id"]])
        other = await self.api_json("/api/requests/http?tunnel_name=/")
        self.assertEqual(other["requests"], [])

    async def test_replay_reaches_the_backend_again(self) -> None:
        await self.through(
            "/hooks/r", "-H", "Authorization: Bearer tok-9", "--data-binary", "payload"
        )
        (e,) = await self.captured(1)
        code, out, err = await self.api_call(
            "/api/requests/http",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps({"id": e["id"]}),
            "-w",
            "%{http_code}",
        )
        self.assertEqual((code, out), (0, b"204"), err)
        await wait_until(lambda: len(self.backend.seen) == 2, 10, "the replay at the backend")
        _first, again = self.backend.seen
        self.assertEqual(
            (again["method"], again["uri"], again["body"]), (b"POST", b"/in/r", b"payload")
        )
        self.assertEqual(again["headers"][b"authorization"], [b"Bearer tok-9"])  # unmasked
        self.assertEqual(again["headers"][b"x-forwarded-for"], [b"127.0.0.1"])
        entries = await self.captured(2)
        self.assertEqual(entries[0]["replay_of"], e["id"])
        self.assertEqual(entries[0]["response"]["status_code"], 200)
        # edited: another path and body, the masked header restored, a typed one kept
        raw = base64.b64decode(e["request"]["raw"]).decode()
        edited = raw.replace("/hooks/r", "/hooks/edited").split("\r\n\r\n")[0]
        edited += "\r\nX-Added: yes\r\n\r\nnew body"
        code, out, err = await self.api_call(
            "/api/requests/http",
            "-d",
            f"id={e['id']}&raw={base64.b64encode(edited.encode()).decode()}".replace("+", "%2B"),
            "-w",
            "%{http_code}",
        )
        self.assertEqual((code, out), (0, b"204"), err)
        await wait_until(lambda: len(self.backend.seen) == 3, 10, "the edited replay")
        third = self.backend.seen[2]
        self.assertEqual((third["uri"], third["body"]), (b"/in/edited", b"new body"))
        self.assertEqual(third["headers"][b"authorization"], [b"Bearer tok-9"])
        self.assertEqual(third["headers"][b"x-added"], [b"yes"])

    async def test_replay_refusals(self) -> None:
        await self.through("/hooks/big", "--data-binary", "x" * 5000)
        (e,) = await self.captured(1)
        self.assertEqual(
            e["request"]["body"],
            {
                "size": 5000,
                "captured": 1024,
                "truncated": True,
                "data": base64.b64encode(b"x" * 1024).decode(),
            },
        )
        self.assertFalse(e["replayable"])
        for body, want in [
            (json.dumps({"id": e["id"]}), b"409"),
            (json.dumps({"id": "nope"}), b"404"),
            ("not json", b"400"),
            (json.dumps({"id": e["id"], "raw": "GET / HTTP/1.1"}), b"400"),
            (json.dumps({"id": e["id"], "raw": base64.b64encode(b"BAD\n\n").decode()}), b"409"),
        ]:
            _code, out, _err = await self.api_call(
                "/api/requests/http",
                *("-H", "Content-Type: application/json", "-d", body),
                *("-o", "/dev/null", "-w", "%{http_code}"),
            )
            self.assertEqual(out, want, body)
        self.assertEqual(len(self.backend.seen), 1)

    async def test_clear_and_the_gate(self) -> None:
        await self.through("/text", "--head")
        (head,) = await self.captured(1)
        self.assertEqual((head["request"]["method"], head["response"]["body"]["size"]), ("HEAD", 0))
        self.inspector.store.clear()
        await self.through("/text")
        (e,) = await self.captured(1)
        self.assertEqual((e["mount"], e["response"]["status_code"]), ("/text", 200))
        self.assertEqual(base64.b64decode(e["response"]["body"]["data"]), b"hello")
        refused = [
            ("GET", {"Host": f"evil.example:{self.api}"}),  # DNS rebinding
            ("GET", {"Host": "127.0.0.1:1"}),
            ("DELETE", {"Origin": "http://evil.example"}),
            ("DELETE", {"Origin": f"http://localhost:{self.api}"}),  # not the Host's origin
            ("DELETE", {"Sec-Fetch-Site": "cross-site"}),
        ]
        for method, headers in refused:
            extra = [a for k, v in headers.items() if k != "Host" for a in ("-H", f"{k}: {v}")]
            _, out, _ = await self.api_call(
                "/api/requests/http",
                "-X",
                method,
                *extra,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                host=headers.get("Host"),
            )
            self.assertEqual(out, b"403", (method, headers))
        self.assertEqual(self.inspector.root.counters["refused"], len(refused))
        self.assertEqual(len(self.inspector.store), 1)
        for host in (f"localhost:{self.api}", f"127.0.0.1:{self.api}"):
            _, out, _ = await self.api_call("/", "-o", "/dev/null", "-w", "%{http_code}", host=host)
            self.assertEqual(out, b"200")
        _code, out, _err = await self.api_call(
            "/api/requests/http",
            "-X",
            "DELETE",
            "-H",
            f"Origin: http://127.0.0.1:{self.api}",
            "-w",
            "%{http_code}",
        )
        self.assertEqual(out, b"204")
        self.assertEqual((await self.api_json("/api/requests/http"))["requests"], [])

    async def test_page_and_assets(self) -> None:
        _, out, _ = await self.api_call("/", "-D", "-")
        self.assertIn(b"content-security-policy: default-src 'none'", out.lower())
        self.assertIn(b"x-frame-options: deny", out.lower())
        self.assertIn(b'<script src="/app.js"', out)
        for asset, kind in (("/app.js", b"text/javascript"), ("/style.css", b"text/css")):
            _, out, _ = await self.api_call(asset, "-D", "-")
            self.assertIn(b"content-type: " + kind, out.lower())
        _code, out, _err = await self.api_call(
            "/../setup.cfg", "--path-as-is", "-w", "%{http_code}"
        )
        self.assertTrue(out.endswith(b"404"))

    async def test_live_events(self) -> None:
        events = self.api_call("/api/events", "--max-time", "3", "-N")
        from twisted.internet import defer

        pending = defer.ensureDeferred(events)
        await wait_until(lambda: self.inspector.root.events, 5, "the event client")
        await self.through("/hooks/live")
        _code, out, _err = await pending  # curl gives up after 3 s
        text = out.decode()
        self.assertIn("retry: 2000", text)
        self.assertIn("event: started\ndata: {", text)
        self.assertIn("event: finished\ndata: {", text)
        finished = text.split("event: finished\ndata: ")[1].split("\n")[0]
        self.assertEqual(json.loads(finished)["request"]["uri"], "/hooks/live")
        await wait_until(lambda: not self.inspector.root.events, 5, "the client gone")


class MountFilterTests(InspectorCase):
    config = InspectConfig(("127.0.0.1", 0), mounts=("/text",), show_secrets=True)

    async def test_only_the_named_mounts(self) -> None:
        await self.through("/hooks/a", "-H", "Authorization: Bearer shown")
        await self.through("/text", "-H", "Authorization: Bearer shown")
        (e,) = await self.captured(1)
        self.assertEqual(e["mount"], "/text")
        self.assertEqual(e["request"]["headers"]["Authorization"], ["Bearer shown"])


class NodeWiringTests(TestCase):
    def test_the_node_starts_an_inspector_from_its_config(self) -> None:
        h = ServeHarness(self, "[serve 443]\n/ = text:hi\n")
        self.assertIsNone(h.node.inspector)
        self.assertIsNone(h.node.dispatcher.capture)
        config = attrs.evolve(h.config, inspect=InspectConfig(("127.0.0.1", 0)))
        node = NodeService(config, reactor)
        self.addCleanup(node.backends.close)
        assert node.inspector is not None
        self.assertIs(node.dispatcher.capture, node.inspector.capturer.request_factory)
        self.assertIs(node.getServiceNamed("inspector"), node.inspector)


class StreamingTests(InspectorCase):
    async def test_long_answer_passes_whole_and_is_kept_truncated(self) -> None:
        code, out, err = await self.h.curl(self.port, "/hooks/big")
        self.assertEqual((code, len(out)), (0, 200_000), err)
        (e,) = await self.captured(1)
        body = e["response"]["body"]
        self.assertEqual((body["size"], body["captured"], body["truncated"]), (200_000, 1024, True))
        self.assertEqual(base64.b64decode(body["data"]), b"z" * 1024)
        self.assertEqual(self.inspector.counters()["captured"], 1)
        self.assertEqual(self.h.node.counters().get("inspect"), None)  # not this node's

    async def test_api_bodies_are_capped(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(json.dumps({"id": "nope", "pad": "x" * (2 << 20)}).encode())  # else 404
        _, out, _ = await self.api_call(
            "/api/requests/http",
            *("-H", "Content-Type: application/json", "--data-binary", f"@{path}"),
            *("-o", "/dev/null", "-w", "%{http_code}"),
        )
        self.assertEqual(out, b"400")


class ListenTests(TestCase):
    def test_a_port_in_use_is_one_line(self) -> None:
        h = ServeHarness(self, "[serve 443]\n/ = text:hi\n")
        taken = reactor.listenTCP(0, server.Site(resource.Resource()), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        port = taken.getHost().port
        inspector = Inspector(InspectConfig(("127.0.0.1", port)), reactor, h.node.dispatcher)
        error = self.assertRaises(SystemExit, inspector.startService)
        self.assertIn(f"funnel-tw: inspect-listen 127.0.0.1:{port}: ", str(error))
        self.assertIn("Address already in use", str(error))


class AccessPolicyTests(InspectorCase):
    """The user an access policy admitted is shown; a replay meets the policy again, with
    the original (unmasked) credential."""

    def setUp(self) -> None:
        if shutil.which("curl") is None:
            self.skipTest("curl not installed")
        self.backend = Recorder()
        listening = reactor.listenTCP(0, server.Site(self.backend), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        tokens = Path(self.mktemp()).absolute()
        tokens.write_text(f"ci-bot:sha256:{hashlib.sha256(b'tok-1').hexdigest()}\n")
        tokens.chmod(0o600)
        self.h = ServeHarness(
            self,
            f"""[access ci]
bearer-tokens-file = {tokens}

[serve 443]
funnel = yes
/hooks/ = http://127.0.0.1:{listening.getHost().port}/in
access /hooks/ = ci
""",
        )
        self.inspector = Inspector(self.config, reactor, self.h.node.dispatcher)
        self.inspector.startService()
        self.addCleanup(self.inspector.stopService)
        self.api = self.inspector.root.port
        self.front, self.port = self.h.front(443)

    async def test_user_and_replay_through_the_policy(self) -> None:
        await self.through("/hooks/a", "-H", "Authorization: Bearer tok-1")
        _, out, _ = await self.h.curl(self.port, "/hooks/b", "-w", "%{http_code}")
        self.assertTrue(out.endswith(b"401"), out)
        entries = await self.captured(2)
        refused, admitted = entries
        self.assertEqual((admitted["user"], admitted["response"]["status_code"]), ("ci-bot", 200))
        self.assertEqual((refused["user"], refused["response"]["status_code"]), ("", 401))
        _, out, _ = await self.api_call(
            "/api/requests/http",
            *("-H", "Content-Type: application/json", "-d", json.dumps({"id": admitted["id"]})),
            *("-o", "/dev/null", "-w", "%{http_code}"),
        )
        self.assertEqual(out, b"204")
        await wait_until(lambda: len(self.backend.seen) == 2, 10, "the replay at the backend")
        again = (await self.captured(3))[0]
        self.assertEqual((again["user"], again["replay_of"]), ("ci-bot", admitted["id"]))
