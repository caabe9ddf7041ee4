"""tcp-forward, tls-terminated-tcp and PROXY protocol against real servers from Debian.

A node's serve stack runs in this process with its peerAPI on loopback, and the test front of
tests/serve/harness.py plays the relay (ingress request, 101, splice), so real clients (curl,
openssl) reach the node as public clients would. The backends are real servers started here
with their own temporary configuration, on loopback, and stopped by the test's cleanup:

- Caddy 2.6 (``tls internal``) behind ``tcp-forward``: the client's TLS ends at Caddy, the
  node only moves ciphertext (it never builds a TLS context for the flow).
- A plain TCP echo behind ``tls-terminated-tcp``: openssl s_client verifies the node's
  certificate, and what it sends comes back.
- nginx (``listen ... proxy_protocol``) behind ``tls-terminated-tcp`` and ``tcp-forward`` with
  ``proxy-protocol = 1`` and ``= 2``: nginx's access log shows the public client's address and
  port (what the front put in Tailscale-Ingress-Src: curl's own socket) and the node's overlay
  address of the same family with the backend port.

Debian packages: caddy, nginx-light (or nginx), curl, openssl. Without them the tests skip,
or fail under FUNNEL_TW_REQUIRE_INTEROP=1. No namespaces and no root are needed.
"""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

from twisted.internet import protocol, reactor
from twisted.trial.unittest import TestCase

from tests._support import (
    ProcessResult,
    curl_argv,
    eventually,
    free_port,
    has_ipv6_loopback,
    issue,
    make_ca,
    run_process,
    wait_until_blocking,
)
from tests.interop.netns import kill_group, require_interop
from tests.serve.harness import HOSTNAME, ServeHarness

NODE_V4 = "100.64.0.2"
NODE_V6 = "fd7a:115c:a1e0::2"
CLIENT_TIMEOUT = 20.0


# --------------------------------------------------------------------------- helpers


def need(test: TestCase, *tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            require_interop(test, f"{tool} not installed")


def wait_listening(port: int, proc: subprocess.Popen[Any], log: Path, timeout: float = 15) -> None:
    """Block until ``port`` accepts on 127.0.0.1 (the reactor has nothing to do meanwhile)."""

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    wait_until_blocking(
        listening, timeout, f"a listener on {port}", detail=lambda: log.read_text()[-3000:]
    )


def start(test: TestCase, argv: list[str], log: Path, env: dict[str, str] | None = None) -> Any:
    """A server in its own session, stopped (SIGTERM, then SIGKILL) by the test's cleanup."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    test.addCleanup(kill_group, proc)
    return proc


async def client(argv: list[str], stdin: bytes = b"") -> ProcessResult:
    """Run a real client (curl, openssl): the reactor keeps serving meanwhile."""
    return await run_process(*argv, stdin=stdin, timeout=CLIENT_TIMEOUT)


def curl(port: int, ca_file: str, path: str, *extra: str, ip: str = "127.0.0.1") -> list[str]:
    return curl_argv(HOSTNAME, port, path, *extra, ca_file=ca_file, connect=ip, max_time=15)


def tracked_front(test: TestCase, h: ServeHarness, target_port: int, ip: str = "") -> int:
    """A front (on 127.0.0.1, or ``ip``) whose connections the cleanup waits to see closed."""
    return h.front(target_port, interface=ip or "127.0.0.1", settle=True)[1]


def make_ca_and_leaf(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for ``name``: (ca.pem, cert.pem with chain, key.pem)."""
    ca = make_ca(
        "funnel-tw interop test CA",
        not_before=datetime.timedelta(minutes=-5),
        path_length=0,
    )
    leaf = issue(name, issuer=ca, ca=False, not_before=datetime.timedelta(minutes=-5))
    ca_file, cert_file, key_file = (directory / n for n in ("ca.pem", "cert.pem", "key.pem"))
    ca_file.write_bytes(ca.cert_pem())
    leaf.write(cert_file, key_file)
    return ca_file, cert_file, key_file


def no_tls_on_node(test: TestCase, h: ServeHarness) -> list[Any]:
    """Record every TLS server context the node builds (none must be built for a tcp-forward)."""
    calls: list[Any] = []
    creator = h.node.store.creator

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return creator(*args, **kwargs)

    h.node.store.creator = spy  # type: ignore[method-assign]
    return calls


# --------------------------------------------------------------------------- a. Caddy


class CaddyForwardTests(TestCase):
    """tcp-forward to Caddy: the public client's TLS passes through the node to Caddy."""

    timeout = 60

    def setUp(self) -> None:
        need(self, "caddy", "curl")
        self.dir = Path(self.mktemp()).absolute()
        self.dir.mkdir()
        self.caddy_port = free_port()
        storage = self.dir / "storage"
        (self.dir / "Caddyfile").write_text(
            f"""{{
    admin off
    skip_install_trust
    auto_https disable_redirects
    http_port {free_port()}
    https_port {self.caddy_port}
    storage file_system {{
        root {storage}
    }}
}}

https://{HOSTNAME}:{self.caddy_port} {{
    bind 127.0.0.1
    tls internal
    respond "caddy says hello to {{host}} over {{http.request.proto}}" 200
}}
"""
        )
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.dir),
            "XDG_DATA_HOME": str(self.dir / "data"),
            "XDG_CONFIG_HOME": str(self.dir / "config"),
        }
        log = self.dir / "caddy.log"
        proc = start(
            self,
            ["caddy", "run", "--config", str(self.dir / "Caddyfile"), "--adapter", "caddyfile"],
            log,
            env,
        )
        wait_listening(self.caddy_port, proc, log)
        self.caddy_root = storage / "pki" / "authorities" / "local" / "root.crt"
        leaf = storage / "certificates" / "local" / HOSTNAME / f"{HOSTNAME}.crt"

        def made() -> bool:
            if proc.poll() is not None:
                self.fail(f"Caddy made no certificate:\n{log.read_text()[-3000:]}")
            return self.caddy_root.exists() and leaf.exists()

        wait_until_blocking(made, 15, "Caddy's certificate", detail=lambda: log.read_text()[-3000:])
        self.h = ServeHarness(
            self, f"[serve 8443]\nfunnel = yes\ntcp-forward = 127.0.0.1:{self.caddy_port}\n"
        )
        self.tls_contexts = no_tls_on_node(self, self.h)
        self.port = tracked_front(self, self.h, 8443)

    async def test_caddy_terminates_the_clients_tls(self) -> None:
        for version, proto in (("--http1.1", "HTTP/1.1"), ("--http2", "HTTP/2.0")):
            result = await client(curl(self.port, str(self.caddy_root), "/", version))
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertEqual(result.stdout, f"caddy says hello to {HOSTNAME} over {proto}".encode())
        # the certificate the client checked is Caddy's: the node's own CA does not verify it
        result = await client(curl(self.port, self.h.ca_file, "/"))
        self.assertEqual(result.returncode, 60, result.stderr)  # CURLE_PEER_FAILED_VERIFICATION
        self.assertEqual(self.tls_contexts, [])  # the node never terminated TLS
        self.assertEqual(self.h.node.dispatcher.counters.get("flows"), 3)


# --------------------------------------------------------------------------- b. echo


class _Echo(protocol.Protocol):
    """Echoes; closes after echoing a line ``bye`` (so openssl s_client -quiet ends)."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)
        self.seen = getattr(self, "seen", b"") + data
        if self.seen.endswith(b"bye\n"):
            self.transport.loseConnection()


class TerminatedTCPTests(TestCase):
    """tls-terminated-tcp to a plain TCP echo: the node ends TLS with its own certificate."""

    timeout = 60

    def setUp(self) -> None:
        need(self, "openssl")
        factory = protocol.Factory.forProtocol(_Echo)
        backend = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(backend.stopListening)
        self.h = ServeHarness(
            self,
            "[serve 5432]\nfunnel = yes\n"
            f"tls-terminated-tcp = 127.0.0.1:{backend.getHost().port}\n",
        )
        self.port = tracked_front(self, self.h, 5432)

    def s_client(self, ca_file: str) -> list[str]:
        return [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{self.port}",
            "-servername",
            HOSTNAME,
            "-verify_hostname",
            HOSTNAME,
            "-CAfile",
            ca_file,
            "-verify_return_error",
            "-quiet",
        ]

    async def test_openssl_echo(self) -> None:
        # The backend closes after "bye": the node must end the client's TLS with close_notify.
        # openssl exits 1 with "unexpected eof while reading" if the TCP connection under the
        # TLS layer is half-closed instead (a splice end calling loseWriteConnection through
        # the TLS wrapper reaches the raw transport).
        result = await client(self.s_client(self.h.ca_file), stdin=b"hello\nbye\n")
        self.assertEqual(result.stdout, b"hello\nbye\n", result.stderr)
        self.assertEqual(result.returncode, 0, result.stderr)

    async def test_other_ca_rejected(self) -> None:
        other = Path(self.mktemp()).absolute()
        other.mkdir()
        other_ca, _, _ = make_ca_and_leaf(other, HOSTNAME)
        result = await client(self.s_client(str(other_ca)), stdin=b"hello\nbye\n")
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(result.stdout, b"")


# --------------------------------------------------------------------------- c. nginx


class ProxyProtocolTests(TestCase):
    """PROXY v1 and v2 read by nginx, behind tls-terminated-tcp and tcp-forward."""

    timeout = 60

    def setUp(self) -> None:
        need(self, "nginx", "curl")
        self.dir = Path(self.mktemp()).absolute()
        (self.dir / "tmp").mkdir(parents=True)
        self.ca, cert, key = make_ca_and_leaf(self.dir, HOSTNAME)
        self.plain_port = free_port()  # nginx: plain HTTP with PROXY (tls-terminated-tcp)
        self.tls_port = free_port()  # nginx: HTTPS with PROXY (tcp-forward)
        self.log = self.dir / "access.log"
        temp = self.dir / "tmp"
        (self.dir / "nginx.conf").write_text(
            f"""daemon off;
master_process off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log info;
events {{ worker_connections 64; }}
http {{
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    log_format pp '$proxy_protocol_addr $proxy_protocol_port '
                  '$proxy_protocol_server_addr $proxy_protocol_server_port $request_uri';
    access_log {self.log} pp;
    server {{
        listen 127.0.0.1:{self.plain_port} proxy_protocol;
        location / {{ return 200 "nginx plain\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{self.tls_port} ssl proxy_protocol;
        server_name {HOSTNAME};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{ return 200 "nginx tls\\n"; }}
    }}
}}
"""
        )
        log = self.dir / "nginx.out"
        argv = ["nginx", "-p", str(self.dir), "-c", str(self.dir / "nginx.conf")]
        check = subprocess.run(
            [*argv, "-e", str(self.dir / "error.log"), "-t"], capture_output=True, check=False
        )
        if check.returncode != 0 and b"unknown option" in check.stderr:
            argv_e: list[str] = []  # nginx before 1.19.5 has no -e
        else:
            argv_e = ["-e", str(self.dir / "error.log")]
            self.assertEqual(check.returncode, 0, check.stderr.decode())
        proc = start(self, [*argv, *argv_e], log)
        wait_listening(self.plain_port, proc, self.dir / "error.log")
        wait_listening(self.tls_port, proc, self.dir / "error.log")
        self.h = ServeHarness(
            self,
            f"""[serve 8441]
funnel = yes
tls-terminated-tcp = 127.0.0.1:{self.plain_port}
proxy-protocol = 1

[serve 8442]
funnel = yes
tls-terminated-tcp = 127.0.0.1:{self.plain_port}
proxy-protocol = 2

[serve 8443]
funnel = yes
tcp-forward = 127.0.0.1:{self.tls_port}
proxy-protocol = 1

[serve 8444]
funnel = yes
tcp-forward = 127.0.0.1:{self.tls_port}
proxy-protocol = 2
""",
        )

    async def logged(self, path: str) -> list[str]:
        """nginx's access log line for ``path``: [client addr, port, server addr, port]."""
        found: list[list[str]] = []

        def seen() -> bool:
            if self.log.exists():
                for line in self.log.read_text().splitlines():
                    fields = line.split()
                    if fields and fields[-1] == path:
                        found.append(fields[:-1])
                        return True
            return False

        if not await eventually(seen, 5, interval=0.025):
            self.fail(f"{path} not in nginx's access log: {self.log.read_text()!r}")
        return found[0]

    async def check(
        self, serve_port: int, version: int, ca_file: str, body: bytes, backend: int
    ) -> None:
        self.assertEqual(self.h.node.serve.tcp[serve_port].proxy_protocol, version)
        port = tracked_front(self, self.h, serve_port)
        path = f"/pp-{serve_port}"
        result = await client(curl(port, ca_file, path, "-w", "\n%{local_ip} %{local_port}"))
        self.assertEqual(result.returncode, 0, result.stderr)
        answer, _, local = result.stdout.rpartition(b"\n")
        self.assertEqual(answer, body)
        local_ip, local_port = local.decode().split()
        # source: the public client as the front saw it, i.e. curl's own socket
        self.assertEqual(await self.logged(path), [local_ip, local_port, NODE_V4, str(backend)])

    async def test_v1_behind_tls_terminated_tcp(self) -> None:
        await self.check(8441, 1, self.h.ca_file, b"nginx plain\n", self.plain_port)

    async def test_v2_behind_tls_terminated_tcp(self) -> None:
        await self.check(8442, 2, self.h.ca_file, b"nginx plain\n", self.plain_port)

    async def test_v1_behind_tcp_forward(self) -> None:
        await self.check(8443, 1, str(self.ca), b"nginx tls\n", self.tls_port)

    async def test_v2_behind_tcp_forward(self) -> None:
        await self.check(8444, 2, str(self.ca), b"nginx tls\n", self.tls_port)

    async def test_ipv6_client(self) -> None:
        """A client on ::1: the header is TCP6 and names the node's IPv6 overlay address."""
        if not has_ipv6_loopback():
            self.skipTest("no IPv6 loopback")
        for serve_port, version in ((8441, 1), (8442, 2)):
            port = tracked_front(self, self.h, serve_port, ip="::1")
            path = f"/v6-{version}"
            result = await client(curl(port, self.h.ca_file, path, "-w", "%{local_port}", ip="::1"))
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertTrue(result.stdout.startswith(b"nginx plain\n"), result.stdout)
            local_port = result.stdout[len(b"nginx plain\n") :].decode()
            self.assertEqual(
                await self.logged(path), ["::1", local_port, NODE_V6, str(self.plain_port)]
            )
