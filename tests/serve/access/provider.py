"""A real OpenID Provider for tests: the npm package oauth2-mock-server, installed by the test
setup into ~/.cache/funnel-tw (with the machine's npm), started on loopback. Its authorize
endpoint redirects back at once, so curl's cookie jar can log in; a JSON "mode" file, read at
every token signing, sets the e-mail and can spoil the ID token (audience, expiry, nonce)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import unittest
from pathlib import Path
from typing import Any

from tests._support import free_port
from tests.interop.netns import require_interop

PACKAGE = "oauth2-mock-server@8"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "funnel-tw" / "npm-oidc"

SCRIPT = r"""
import fs from 'node:fs';
import { OAuth2Server } from 'oauth2-mock-server';
const [port, modeFile] = process.argv.slice(2);
const server = new OAuth2Server();
await server.issuer.keys.generate('RS256');
server.issuer.url = `http://127.0.0.1:${port}`;
server.service.on('beforeTokenSigning', (token) => {
  const mode = JSON.parse(fs.readFileSync(modeFile, 'utf8'));
  Object.assign(token.payload, mode.claims || {});
  if (mode.expired) { token.payload.exp = token.payload.iat - 600; }
});
await server.start(Number(port), '127.0.0.1');
console.log('READY');
process.stdin.on('end', () => server.stop().then(() => process.exit(0)));
process.stdin.resume();
"""


def install(testcase: unittest.TestCase) -> Path:
    """The package folder (installed once); skips, or fails under FUNNEL_TW_REQUIRE_INTEROP=1,
    when node or npm are missing or the install fails."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        require_interop(testcase, "node and npm are needed for oauth2-mock-server")
    marker = CACHE / "node_modules" / "oauth2-mock-server" / "package.json"
    if not marker.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--silent", PACKAGE],
            cwd=CACHE,
            capture_output=True,
            timeout=300,
        )
        if done.returncode != 0 or not marker.exists():
            require_interop(testcase, f"npm install {PACKAGE} failed: {done.stderr[-500:]!r}")
    (CACHE / "provider.mjs").write_text(SCRIPT)
    return CACHE


class Provider:
    """The running provider; ``issuer`` is its URL, ``mode()`` changes what it signs."""

    def __init__(self, testcase: unittest.TestCase, folder: Path) -> None:
        cache = install(testcase)
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.mode_file = folder / "mode.json"
        self.mode(email="alice@example.com")
        self.process = subprocess.Popen(
            ["node", str(cache / "provider.mjs"), str(self.port), str(self.mode_file)],
            cwd=cache,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        testcase.addCleanup(self.stop)
        assert self.process.stdout is not None
        deadline = time.monotonic() + 20
        line = b""
        while time.monotonic() < deadline and b"READY" not in line:
            line = self.process.stdout.readline()
            if not line and self.process.poll() is not None:
                break
        if b"READY" not in line:
            raise AssertionError(f"oauth2-mock-server did not start: {self.process.stderr!r}")

    def mode(self, email: str, verified: bool = True, **extra: Any) -> None:
        claims = {"email": email, "email_verified": verified, "name": "Alice"}
        claims.update(extra.pop("claims", {}))
        self.mode_file.write_text(json.dumps({"claims": claims, **extra}))

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
