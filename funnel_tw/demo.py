"""``funnel-tw demo``: a relay, a node and a sample backend in one process, on loopback.

It writes a relay.ini and a node.ini (fresh keys, a self-signed certificate from a local CA)
into a folder, starts both daemons' services and the backend, fetches the backend's page
through relay -> WireGuard -> node -> TLS -> proxy itself, and prints the ``curl`` command that
does the same. On a terminal it keeps running until Ctrl-C so you can try it; otherwise (or
with ``--check``) it stops after the self-check, exiting non-zero if the fetch failed.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer, task, threads
from twisted.web import resource, server

from . import keys
from .config import load_node_config, load_relay_config

HOSTNAME = "demo.funnel.test"


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Backend(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        resource.Resource.__init__(self)

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        forwarded = (request.getHeader(b"x-forwarded-for") or b"?").decode()
        funnel = (request.getHeader(b"tailscale-funnel-request") or b"-").decode()
        return (
            "Hello from the funnel-tw demo backend!\n"
            f"You reached it through the relay; X-Forwarded-For: {forwarded}, "
            f"Tailscale-Funnel-Request: {funnel}\n"
        ).encode()


def write_configs(folder: Path, backend_port: int) -> tuple[Path, Path, int]:
    """relay.ini and node.ini for a loopback funnel; returns them and the public port."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    relay_key, node_key = keys.generate_private_key(), keys.generate_private_key()
    for name, key in (("relay.key", relay_key), ("node.key", node_key)):
        path = folder / name
        path.write_text(keys.encode_key(key) + "\n")
        path.chmod(0o600)
    relay_wg, public = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_STREAM)
    (folder / "relay.ini").write_text(
        f"""[relay]
private-key-file = relay.key
listen-port = {relay_wg}
address = 100.64.0.1/32, fd7a:115c:a1e0::1/128
public-address = 127.0.0.1
public-ports = {public}

[node demo]
public-key = {keys.encode_key(keys.public_key(node_key))}
allowed-ips = 100.64.0.2/32, fd7a:115c:a1e0::2/128
hostnames = {HOSTNAME}
peerapi = 100.64.0.2:41642
"""
    )
    (folder / "node.ini").write_text(
        f"""[node]
private-key-file = node.key
listen-port = 0
address = 100.64.0.2/32, fd7a:115c:a1e0::2/128
hostname = {HOSTNAME}
peerapi-port = 41642
state-dir = state

[peer relay]
public-key = {keys.encode_key(keys.public_key(relay_key))}
endpoint = 127.0.0.1:{relay_wg}
allowed-ips = 100.64.0.1/32, fd7a:115c:a1e0::1/128
persistent-keepalive = 25
funnel-ingress = yes

[tls]
source = self-signed

[serve {public}]
funnel = yes
/ = http://127.0.0.1:{backend_port}
"""
    )
    return folder / "relay.ini", folder / "node.ini", public


def fetch(port: int, ca_file: str) -> tuple[int, str]:
    """What curl does: TLS to the relay's public port with SNI, verified against the CA."""
    context = ssl.create_default_context(cafile=ca_file)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=HOSTNAME) as tls,
    ):
        tls.sendall(f"GET / HTTP/1.0\r\nHost: {HOSTNAME}:{port}\r\n\r\n".encode())
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, body.decode("utf-8", "replace")


async def _run(reactor: Any, folder: Path, keep_running: bool) -> int:
    from .node.service import NodeService
    from .relay.service import RelayService

    site = server.Site(_Backend())
    backend = reactor.listenTCP(0, site, interface="127.0.0.1")
    relay_ini, node_ini, public = write_configs(folder, backend.getHost().port)
    relay = RelayService(load_relay_config(relay_ini), reactor)
    node = NodeService(load_node_config(node_ini), reactor)
    relay.startService()
    node.startService()
    ca = str(node.config.state_dir / "tls" / "ca.pem")
    _say(f"demo files in {folder}")
    _say(f"backend:  http://127.0.0.1:{backend.getHost().port}/")
    _say(f"relay:    public TLS on 127.0.0.1:{public}, WireGuard on udp {relay.overlay.port}")
    _say(
        f"node:     {HOSTNAME}, WireGuard on udp {node.overlay.port}, "
        "peerAPI on 100.64.0.2:41642 (overlay)"
    )
    status, body = 0, ""
    for _ in range(50):  # the node's first handshake takes a moment
        if relay.overlay.device.handshakes_completed:
            break
        await task.deferLater(reactor, 0.1, lambda: None)
    try:
        status, body = await threads.deferToThread(fetch, public, ca)
    except OSError as e:
        body = f"{type(e).__name__}: {e}"
    ok = status == 200 and "Hello from the funnel-tw demo backend" in body
    _say("")
    _say(f"self-check through relay and node: {'OK' if ok else 'FAILED'} (HTTP {status})")
    for line in body.strip().splitlines():
        _say(f"  | {line}")
    _say("")
    _say("Try it yourself:")
    _say(
        f"  curl --cacert {ca} --resolve {HOSTNAME}:{public}:127.0.0.1 https://{HOSTNAME}:{public}/"
    )
    if keep_running and ok:
        _say("")
        _say("Running; press Ctrl-C to stop.")
        stopped: defer.Deferred[None] = defer.Deferred()
        reactor.addSystemEventTrigger("before", "shutdown", lambda: stopped.callback(None))
        await stopped
    await node.stopService()
    await relay.stopService()
    await backend.stopListening()
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="funnel-tw demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where to write the configs, keys and certificates (default: a new temporary folder)",
    )
    parser.add_argument(
        "--check", action="store_true", help="stop after the self-check, even on a terminal"
    )
    options = parser.parse_args(argv)
    folder = options.dir or Path(tempfile.mkdtemp(prefix="funnel-tw-demo-"))
    keep_running = sys.stdin.isatty() and sys.stdout.isatty() and not options.check
    result: list[int] = []

    async def go(reactor: Any) -> None:
        result.append(await _run(reactor, folder, keep_running))

    try:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(go(reactor)))
    except SystemExit as e:
        if e.code:
            return int(e.code)
    return result[0] if result else 1
