"""OIDC policies against a real OpenID Provider (oauth2-mock-server): the whole login with
curl's cookie jar over HTTP/1.1 and HTTP/2, sessions, logout, and ID tokens that must be
refused (other audience, expired, not allowed, unverified e-mail, forged signature)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from cryptography import x509
from joserfc import jwt
from joserfc.jwk import RSAKey
from twisted.internet import reactor, threads
from twisted.trial.unittest import TestCase

from funnel_tw.serve.access.guard import Access
from funnel_tw.serve.access.oidc import LoginError
from tests._support import ProcessResult

from ...e2e.harness import chromium_dump_dom, ensure_chromium, spki_sha256_b64
from ..backend import backend_site, listen
from ..harness import HOSTNAME, ServeHarness
from .provider import Provider


class OIDCTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        if shutil.which("curl") is None:
            self.skipTest("curl not installed")
        self.folder = Path(self.mktemp()).absolute()
        self.folder.mkdir()
        self.provider = Provider(self, self.folder)
        backend = listen(backend_site())
        self.addCleanup(backend.stopListening)
        port = backend.getHost().port
        self.h = ServeHarness(
            self,
            f"""[access staff]
oidc-issuer = {self.provider.issuer}
oidc-client-id = funnel
oidc-allow = alice@example.com, *@example.org
oidc-session-lifetime = 3600

[serve 443]
funnel = yes
/ = text:open
/open/ = http://127.0.0.1:{port}/
/app/ = http://127.0.0.1:{port}/
access /app/ = staff
""",
        )
        self.front, self.port = self.h.front(443)
        self.jar = str(self.folder / "cookies.txt")

    async def curl(self, path: str, *extra: str) -> ProcessResult:
        return await self.h.curl(self.port, path, "-b", self.jar, "-c", self.jar, *extra)

    async def login(self, *extra: str) -> ProcessResult:
        return await self.curl("/app/page?x=1", "-L", "--max-redirs", "5", *extra)

    async def status(self, path: str, *extra: str) -> bytes:
        code, out, err = await self.curl(path, "-o", "/dev/null", "-w", "%{http_code}", *extra)
        self.assertEqual(code, 0, err)
        return out

    async def test_login_with_cookie_jar(self) -> None:
        for version in ("--http1.1", "--http2"):
            code, out, err = await self.login(version)
            self.assertEqual(code, 0, err)
            seen = json.loads(out)
            self.assertEqual(seen["uri"], "/page?x=1", "back where the login started")
            self.assertEqual(seen["headers"]["remote-user"], ["alice@example.com"])
            self.assertEqual(seen["headers"]["remote-email"], ["alice@example.com"])
            self.assertEqual(seen["headers"]["remote-name"], ["Alice"])
            self.assertNotIn("__Host-funnel-tw", json.dumps(seen["headers"]))
            # the session: no provider round trip any more
            self.assertEqual(await self.status("/app/again", version), b"200")
            # an open mount's backend never sees the session cookie either
            code, out, err = await self.curl("/open/", version, "-b", "theirs=1")
            self.assertEqual(code, 0, err)
            self.assertNotIn("__Host-funnel-tw", out.decode())
            jar = Path(self.jar).read_text()
            self.assertIn("__Host-funnel-tw-staff", jar)
            self.assertRegex(jar, r"#HttpOnly_node.example.com\tFALSE\t/\tTRUE")
            code, out, err = await self.curl("/.funnel-tw/oidc/logout", version, "-D", "-")
            self.assertEqual(code, 0, err)
            self.assertIn(
                b"set-cookie: __Host-funnel-tw-staff=; Path=/; Secure; HttpOnly; SameSite=Lax;"
                b" Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
                out.replace(b"Set-Cookie:", b"set-cookie:"),
            )
            # (curl 7.88 does not rewrite its jar once the last cookie is gone; a browser drops it)
            Path(self.jar).unlink()
            self.assertEqual(await self.status("/app/again", version), b"302")

    async def test_headless_chromium_logs_in(self) -> None:
        """A real browser follows the redirects, keeps the __Host- cookies and lands on the
        page it asked for, as alice."""
        ensure_chromium(self)
        pem = (self.h.config.state_dir / "tls" / "node.example.com.pem").read_bytes()
        spki = spki_sha256_b64(x509.load_pem_x509_certificates(pem)[0])
        url = f"https://{HOSTNAME}:{self.port}/app/page?x=1"
        done = await threads.deferToThread(
            chromium_dump_dom, url, HOSTNAME, spki, self.folder, 60.0, "127.0.0.1"
        )
        self.assertIn("alice@example.com", done.stdout, done.stderr[-2000:])
        self.assertIn("/page?x=1", done.stdout)
        self.assertEqual(self.h.node.access.counters.get("oidc_no_session"), None)

    async def test_session_survives_a_restart(self) -> None:
        code, _, err = await self.login()
        self.assertEqual(code, 0, err)
        key = (self.h.config.state_dir / "access-session.key").stat()
        self.assertEqual(key.st_mode & 0o777, 0o600)
        # a new node process: the same state-dir, so the same key, so the same sessions
        again = Access(self.h.config.access, reactor, state_dir=self.h.config.state_dir)
        self.h.node.dispatcher.access = again
        self.assertEqual(await self.status("/app/"), b"200")
        self.assertEqual(again.counters, {}, "no new login was needed")

    async def test_pool_member_needs_the_copied_key(self) -> None:
        """Another node of a pool (its own state-dir) knows the session only with the first
        node's access-session.key copied in, as docs/high-availability.md says to do."""
        code, _, err = await self.login()
        self.assertEqual(code, 0, err)
        own = self.folder / "other-node-state"
        other = Access(self.h.config.access, reactor, state_dir=own)
        self.h.node.dispatcher.access = other
        self.assertEqual(await self.status("/app/"), b"302", "a key of its own: no session")
        copied = self.folder / "copied-node-state"
        copied.mkdir(mode=0o700)
        key = copied / "access-session.key"
        shutil.copy2(self.h.config.state_dir / "access-session.key", key)
        self.h.node.dispatcher.access = Access(self.h.config.access, reactor, state_dir=copied)
        self.assertEqual(await self.status("/app/"), b"200", "the copied key: the same session")

    async def test_tampered_cookie_and_no_session(self) -> None:
        code, _, err = await self.login()
        self.assertEqual(code, 0, err)
        jar = Path(self.jar)
        lines = jar.read_text().splitlines()
        for i, line in enumerate(lines):
            if "__Host-funnel-tw-staff" in line:
                value = line.rsplit("\t", 1)[1]
                flipped = value[:-3] + ("A" if value[-3] != "A" else "B") + value[-2:]
                lines[i] = line.rsplit("\t", 1)[0] + "\t" + flipped
        jar.write_text("\n".join(lines) + "\n")
        self.assertEqual(await self.status("/app/"), b"302", "a changed cookie is no session")
        self.assertEqual(await self.status("/app/", "-X", "POST", "-d", "x"), b"401")
        self.assertEqual(await self.status("/"), b"200", "the open mount")

    async def test_refused_tokens(self) -> None:
        cases = {
            "oidc_bad_id_token": {"email": "alice@example.com", "claims": {"aud": "someone-else"}},
            "oidc_not_allowed": {"email": "mallory@evil.example"},
            "oidc_email_unverified": {"email": "bob@example.org", "verified": False},
        }
        for reason, mode in cases.items():
            self.provider.mode(**mode)  # type: ignore[arg-type]
            self.assertEqual(await self.status("/app/", "-L"), b"403", reason)
            self.assertEqual(self.h.node.access.counters[reason], 1)
        self.provider.mode(email="alice@example.com", expired=True)
        self.assertEqual(await self.status("/app/", "-L"), b"403", "expired")
        self.provider.mode(email="alice@example.com", claims={"nonce": "replayed"})
        self.assertEqual(await self.status("/app/", "-L"), b"403", "other nonce")
        self.assertEqual(self.h.node.access.counters["oidc_bad_id_token"], 3)
        self.provider.mode(email="carol@example.org")
        self.assertEqual(await self.status("/app/", "-L"), b"200", "*@example.org")

    async def test_callback_without_login_or_with_another_state(self) -> None:
        self.assertEqual(await self.status("/.funnel-tw/oidc/callback?code=x&state=y"), b"400")
        code, out, err = await self.curl("/app/", "-D", "-", "-o", "/dev/null")
        self.assertEqual(code, 0, err)
        location = next(
            line.split(b" ", 1)[1].strip()
            for line in out.split(b"\r\n")
            if line.lower().startswith(b"location:")
        )
        self.assertIn(b"code_challenge_method=S256", location)
        self.assertIn(b"nonce=", location)
        self.assertEqual(await self.status("/.funnel-tw/oidc/callback?code=x&state=forged"), b"400")
        self.assertEqual(self.h.node.access.counters["oidc_bad_state"], 1)

    async def test_forged_signature(self) -> None:
        """A token with the right claims signed by a key the issuer does not publish."""
        client = self.h.node.access.oidc["staff"]
        now = int(time.time())
        claims = {
            "iss": self.provider.issuer, "aud": "funnel", "sub": "x", "iat": now,
            "exp": now + 300, "nonce": "n", "email": "alice@example.com", "email_verified": True,
        }  # fmt: skip
        forged = jwt.encode({"alg": "RS256", "kid": "other"}, claims, RSAKey.generate_key(2048))
        with self.assertRaises(LoginError) as caught:
            await client._verify(forged, "n")
        self.assertEqual(caught.exception.reason, "oidc_bad_id_token")
