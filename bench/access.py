"""What an access policy costs per request, beside an open mount (a benchmark, not a test).

    python bench/access.py [--requests 20000]

In one process, without sockets: each request is routed by the node's MountRouter (SNI, path
normalization, mount lookup) and answered by a ``text:`` mount, so the figures are the routing
and policy work alone, per request, side by side:

- open, no policies: the router as it was before access policies existed (``access=None``);
- open mount, policies defined for other mounts (what every open mount pays now);
- address allow + rate limit; bearer token; basic auth with bcrypt, the credential verified
  once and then cached (a browser sends the same header every time); an OIDC session cookie
  (JWE decrypt); a client never reaches bcrypt twice for the same header.

A full request through TLS and the proxy costs some hundreds of microseconds on this machine
(bench/node.py), so a policy's share is the difference between its row and the open row.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from twisted.internet import task  # noqa: E402
from twisted.web.resource import getChildForRequest  # noqa: E402
from twisted.web.test.requesthelper import DummyRequest  # noqa: E402

from funnel_tw import keys  # noqa: E402
from funnel_tw.config import load_node_config  # noqa: E402
from funnel_tw.flow import Flow  # noqa: E402
from funnel_tw.serve.access.guard import Access  # noqa: E402
from funnel_tw.serve.access.oidc import seal, session_cookie  # noqa: E402
from funnel_tw.serve.model import ServeConfig  # noqa: E402
from funnel_tw.serve.web import MountRouter  # noqa: E402


def node_ini(folder: Path) -> Path:
    users = folder / "users"
    subprocess.run(["htpasswd", "-bcB", str(users), "alice", "wonderland"], check=True,
                   capture_output=True)  # fmt: skip
    users.chmod(0o600)
    tokens = folder / "tokens"
    tokens.write_text(f"ci:sha256:{hashlib.sha256(b'tok').hexdigest()}\n")
    tokens.chmod(0o600)
    ini = folder / "node.ini"
    ini.write_text(
        f"""[node]
private-key = {keys.encode_key(keys.generate_private_key())}
address = 100.64.0.2/32
hostname = node.example.com
state-dir = {folder / "state"}

[access net]
allow = 198.51.100.0/24
rate-limit = 1000000/s
rate-burst = 1000000

[access basic]
basic-auth-file = {users}

[access bearer]
bearer-tokens-file = {tokens}

[access sso]
oidc-issuer = http://127.0.0.1:1
oidc-client-id = funnel
oidc-allow = *@example.com

[serve 443]
funnel = yes
/ = text:open
/net/ = text:net
access /net/ = net
/basic/ = text:basic
access /basic/ = basic
/bearer/ = text:bearer
access /bearer/ = bearer
/sso/ = text:sso
access /sso/ = sso
"""
    )
    return ini


def per_request(router: MountRouter, path: bytes, headers: dict[bytes, bytes], n: int) -> float:
    """Microseconds per request: route, check, render."""
    expected = {b"/x": b"open"}.get(path, path.split(b"/")[1])

    def one() -> Any:
        request = DummyRequest([])
        request.channel = None  # no TLS connection: the flow's host is the site
        request.uri = path
        request.method = b"GET"
        for name, value in headers.items():
            request.requestHeaders.setRawHeaders(name, [value])
        child = getChildForRequest(router.getChildWithDefault(b"", request), request)
        body = child.render(request)
        assert isinstance(body, bytes) and body == expected, body
        return body

    for _ in range(200):
        one()
    start = time.perf_counter()
    for _ in range(n):
        one()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = load_node_config(node_ini(Path(tmp)))
        serve = ServeConfig.from_node_config(config)
        clock = task.Clock()
        access = Access(config.access, clock, state_dir=config.state_dir, slow=None)
        flow = Flow(("198.51.100.7", 40000), "node.example.com", 443, True, "relay")

        def router(with_access: bool) -> MountRouter:
            return MountRouter(serve, 443, flow, None, access=access if with_access else None)

        basic = b"Basic " + base64.b64encode(b"alice:wonderland")
        credentials = access.policies["basic"].credentials
        parsed = access.policies["basic"].check_credentials(basic)
        t0 = time.perf_counter()
        user = credentials.verify_basic(parsed.credential)  # type: ignore[union-attr]
        bcrypt_ms = (time.perf_counter() - t0) * 1e3
        credentials.remember(parsed.credential, user or "")  # type: ignore[union-attr]
        session = seal(
            access.session_key, {"p": "sso", "e": "a@example.com", "n": None, "x": 2**31}
        )
        cookie = f"{session_cookie('sso')}={session}".encode()
        rows = [
            ("open mount, no policies (as before)", router(False), b"/x", {}),
            ("open mount, policies on other mounts", router(True), b"/x", {}),
            ("allow + rate limit", router(True), b"/net/x", {}),
            ("bearer token", router(True), b"/bearer/x", {b"authorization": b"Bearer tok"}),
            ("basic auth, bcrypt cached", router(True), b"/basic/x", {b"authorization": basic}),
            ("OIDC session cookie", router(True), b"/sso/x", {b"cookie": cookie}),
        ]
        print(f"access policies: routing + check + text answer, {args.requests} requests each")
        base = None
        for title, r, path, headers in rows:
            us = per_request(r, path, headers, args.requests)
            base = us if base is None else base
            print(f"  {title:42}{us:8.1f} us/request   +{us - base:5.1f} us")
        print(f"  bcrypt check of a new credential (cost 5, once per header): {bcrypt_ms:.1f} ms")


if __name__ == "__main__":
    main()
