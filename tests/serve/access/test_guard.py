"""Access policies through the ingress path with curl (HTTP/1.1 and HTTP/2): client addresses
from several loopback sources, htpasswd files made by Apache's htpasswd, bearer tokens, rate
limits, body limits, identity headers to the backend, hostile input and path tricks."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from funnel_tw.node.status.document import status_document
from funnel_tw.node.status.text import format_status
from tests._support import ProcessResult

from ..backend import backend_site, listen
from ..harness import ServeHarness


class GuardTests(TestCase):
    timeout = 90

    def setUp(self) -> None:
        for tool in ("curl", "htpasswd"):
            if shutil.which(tool) is None:
                self.skipTest(f"{tool} not installed")
        backend = listen(backend_site())
        self.addCleanup(backend.stopListening)
        port = backend.getHost().port
        folder = Path(self.mktemp()).absolute()
        folder.mkdir()
        users = folder / "staff.htpasswd"
        subprocess.run(
            ["htpasswd", "-bcB", str(users), "alice", "wonderland"], check=True, capture_output=True
        )
        subprocess.run(
            ["htpasswd", "-b5", str(users), "bob", "builder"], check=True, capture_output=True
        )
        users.chmod(0o640)
        tokens = folder / "tokens"
        tokens.write_text(f"ci:sha256:{hashlib.sha256(b'tok-ci').hexdigest()}\n")
        tokens.chmod(0o600)
        self.h = ServeHarness(
            self,
            f"""[access office]
allow = 127.0.0.0/29
deny = 127.0.0.3/32

[access staff]
basic-auth-file = {users}
bearer-tokens-file = {tokens}

[access hooks]
rate-limit = 2/m
rate-burst = 3
max-request-body = 1K

[access uploads]
max-request-body = 1K

[access big]
max-request-body = 2M

[serve 443]
funnel = yes
access = office
/ = http://127.0.0.1:{port}
/admin/ = http://127.0.0.1:{port}/
access /admin/ = staff
/hooks/ = http://127.0.0.1:{port}/
access /hooks/ = hooks
/uploads/ = http://127.0.0.1:{port}/
access /uploads/ = uploads
/big/ = http://127.0.0.1:{port}/
access /big/ = big
/open/ = text:open
""",
        )
        self.front, self.port = self.h.front(443)

    async def curl(self, path: str, *extra: str, source: str = "127.0.0.1") -> ProcessResult:
        return await self.h.curl(self.port, path, "--interface", source, *extra)

    async def status(self, path: str, *extra: str, source: str = "127.0.0.1") -> int:
        code, out, err = await self.curl(
            path, "-o", "/dev/null", "-w", "%{http_code}", *extra, source=source
        )
        self.assertEqual(code, 0, err)
        return int(out)

    async def echo(self, path: str, *extra: str) -> Any:
        code, out, err = await self.curl(path, *extra)
        self.assertEqual(code, 0, err)
        return json.loads(out)

    async def test_addresses_from_several_sources(self) -> None:
        self.assertEqual(await self.status("/x", source="127.0.0.2"), 200)
        self.assertEqual(await self.status("/x", source="127.0.0.3"), 403, "denied")
        self.assertEqual(await self.status("/x", source="127.0.0.9"), 403, "not allowed")
        self.assertEqual(await self.status("/open/", source="127.0.0.9"), 403, "port's policy")
        counters = self.h.node.access.counters
        self.assertEqual(counters["address_denied"], 1)
        self.assertEqual(counters["address_not_allowed"], 2)
        # a mount's own policy replaces the port's: /hooks/ has no address rule
        self.assertEqual(await self.status("/hooks/", source="127.0.0.9"), 200)

    async def test_basic_auth_http1_and_http2(self) -> None:
        for version in ("--http1.1", "--http2"):
            _, out, err = await self.curl("/admin/", version, "-D", "-", "-o", "/dev/null")
            self.assertIn(b" 401", out.split(b"\r\n")[0], err)
            self.assertIn(
                b'www-authenticate: Basic realm="staff"', out.lower().replace(b"basic", b"Basic")
            )
            for user in ("alice:wonderland", "bob:builder"):
                self.assertEqual(await self.status("/admin/", version, "-u", user), 200)
            self.assertEqual(await self.status("/admin/", version, "-u", "alice:nope"), 401)
            self.assertEqual(await self.status("/admin/", version, "-u", "eve:wonderland"), 401)

    async def test_identity_to_backend(self) -> None:
        seen = await self.echo(
            "/admin/who",
            "-u",
            "alice:wonderland",
            "-H",
            "Remote-User: root",
            "-H",
            "Remote_Groups: admins",
            "-H",
            "remote-email: root@example.com",
        )
        headers = seen["headers"]
        self.assertEqual(headers["remote-user"], ["alice"])
        self.assertNotIn("remote-groups", headers)
        self.assertNotIn("remote_groups", headers)
        self.assertNotIn("remote-email", headers)
        self.assertNotIn("authorization", headers, "the credential was used here")
        seen = await self.echo("/admin/who", "-H", "Authorization: Bearer tok-ci")
        self.assertEqual(seen["headers"]["remote-user"], ["ci"])
        # an open mount passes the client's Authorization on (the backend's business)
        seen = await self.echo("/x", "-u", "alice:wonderland")
        self.assertIn("authorization", seen["headers"])
        self.assertNotIn("remote-user", seen["headers"])

    def test_no_client_certificate_asked(self) -> None:
        node = self.h.node
        self.assertFalse(
            node.access.wants_client_certificates(node.serve, 443, node.serve.tcp[443])
        )

    async def test_status_shows_policies_and_refusals(self) -> None:
        self.assertEqual(await self.status("/x", source="127.0.0.3"), 403)
        text = format_status(status_document(self.h.node, 0.0))
        self.assertIn("https, access office", text)
        self.assertRegex(text, r"/admin/ +proxy http://127.0.0.1:[0-9]+/ \(access staff\)")
        self.assertIn('text "open" (access office)', text)
        self.assertRegex(text, r"access_address_denied\s+1")

    async def test_rate_limit_burst(self) -> None:
        codes = [await self.status("/hooks/") for _ in range(5)]
        self.assertEqual(codes, [200, 200, 200, 429, 429])
        _, out, err = await self.curl("/hooks/", "-D", "-", "-o", "/dev/null")
        self.assertIn(b"retry-after: 30", out.lower(), err)
        self.assertEqual(self.h.node.access.counters["rate_limited"], 3)

    async def test_body_limit(self) -> None:
        for version in ("--http1.1", "--http2"):
            small = await self.status("/uploads/", version, "--data-binary", "x" * 1024)
            self.assertEqual(small, 200)
            big = await self.status("/uploads/", version, "--data-binary", "x" * 1025)
            self.assertEqual(big, 413)
            chunked = await self.status(
                "/uploads/",
                version,
                "-H",
                "Transfer-Encoding: chunked",
                "--data-binary",
                "x" * 5000,
            )
            self.assertEqual(chunked, 413)
            seen = await self.echo(
                "/uploads/",
                version,
                "-H",
                "Transfer-Encoding: chunked",
                "--data-binary",
                "y" * 1000,
            )
            self.assertEqual(seen["bytes"], 1000)
        self.assertEqual(self.h.node.access.counters["body_too_large"], 4)

    async def test_streamed_body_cut_at_the_limit(self) -> None:
        """Over a limit too large to buffer, a body of unknown length streams to the backend
        and is cut where it goes over: the client's request fails, the backend never answers."""
        upload = Path(self.mktemp())
        upload.write_bytes(b"z" * (3 << 20))
        for version in ("--http1.1", "--http2"):
            code, out, _ = await self.curl(
                "/big/", version, "-H", "Transfer-Encoding: chunked", "--data-binary",
                f"@{upload}", "-w", "%{http_code}",
            )  # fmt: skip
            self.assertNotEqual(code, 0)
            self.assertNotIn(b"sha256", out)
        seen = await self.echo(
            "/big/", "-H", "Transfer-Encoding: chunked", "--data-binary", "y" * 5000
        )
        self.assertEqual(seen["bytes"], 5000)
        self.assertEqual(self.h.node.access.counters["body_too_large"], 2)

    async def test_hostile_authorization(self) -> None:
        for header in (
            "Authorization: Basic " + "A" * 20000,
            "Authorization: Basic %%%notbase64",
            "Authorization: Basic " + "YWxpY2U=",  # "alice", no colon
            "Authorization: Bearer " + "t" * 3000,
            "Authorization: Negotiate abc",
        ):
            self.assertEqual(await self.status("/admin/", "-H", header), 401, header[:40])
        counters = self.h.node.access.counters
        self.assertEqual(counters.get("credentials_oversized"), 1)
        self.assertEqual(counters.get("credentials_malformed"), 2)

    async def test_path_tricks_do_not_reach_a_protected_mount(self) -> None:
        for path in (
            "/open/../admin/",
            "/open/%2e%2e/admin/",
            "//admin/",
            "/open/..;/admin/",
            "/%61dmin/",
            "/admin;x/",
            "/open/%252e%252e/admin/",
            "/open/..%5cadmin/",
        ):
            code, out, err = await self.curl(path, "--path-as-is", "-w", " %{http_code}")
            self.assertEqual(code, 0, err)
            body, _, status = out.rpartition(b" ")
            if status == b"200" and body == b"open":
                continue  # the open text mount took it
            if status == b"200":  # the open "/" mount: its backend never sees an /admin path
                self.assertNotIn("admin", json.loads(body)["uri"].replace("%61", "a"), path)
            else:
                self.assertIn(status, (b"400", b"401"), path)
