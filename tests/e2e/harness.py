"""Harness for the end-to-end tests: real twistd processes, real clients, nothing mocked.

A :class:`Funnel` writes a relay.ini and one node.ini per node (fresh keys, each daemon in a
folder of its own, so "the relay holds no TLS key" can be checked on disk), starts a sample
backend per node (``tests/e2e/backend.py``), the relay and the nodes as separate
``twistd -n`` processes talking WireGuard over loopback (or between network namespaces the
caller made), and waits, bounded, until a TLS fetch through the relay works.

Rules kept here: every wait has a deadline; every process is started in its own session and
killed in a cleanup registered before the next step can fail; only loopback or namespaces
the test created are used.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from funnel_tw import keys
from tests._support import curl_argv, free_port, wait_until_blocking
from tests.interop.netns import Namespace, kill_group, require_interop, run

REPO_ROOT = Path(__file__).resolve().parents[2]
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
CHROMIUM = "/usr/bin/chromium"
PEERAPI_PORT = 41642
RELAY_OVERLAY = "100.64.0.1"

AddCleanup = Callable[..., Any]


# --------------------------------------------------------------------------- small helpers


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def make_workdir(add_cleanup: AddCleanup) -> Path:
    """A short folder under /tmp (trial's temp paths are long; sockets live in state-dirs)."""
    path = Path(tempfile.mkdtemp(prefix="ftw-e2e-"))
    path.chmod(0o700)
    add_cleanup(shutil.rmtree, path, True)
    return path


def write_key(path: Path, key: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(keys.encode_key(key) + "\n")
    return path


def proc_status_kib(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM), in KiB; 0 if gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else 0


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def raise_nofile(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``wanted`` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return int(soft)


# --------------------------------------------------------------------------- availability


def require_tools(case: unittest.TestCase, *tools: str) -> None:
    """Skip (or fail under FUNNEL_TW_REQUIRE_INTEROP=1) when a client tool is missing."""
    for tool in tools:
        if shutil.which(tool) is None:
            require_interop(case, f"{tool} not installed")


_netns_reason: list[str | None] = []


def netns_unavailable_reason() -> str | None:
    """Why namespaces + nftables cannot be used here (probed once), or None."""
    if _netns_reason:
        return _netns_reason[0]
    reason: str | None = None
    if not sys.platform.startswith("linux"):
        reason = "network namespaces need Linux"
    elif os.geteuid() != 0:
        reason = "network namespaces need root"
    else:
        for tool in ("ip", "nft", "curl"):
            if shutil.which(tool) is None:
                reason = f"{tool} not installed"
                break
    if reason is None:
        try:
            probe = Namespace("e2eprobe")
        except Exception as e:
            reason = f"ip netns add failed: {e}"
        else:
            try:
                probe.run(["nft", "list", "tables"])
            except Exception as e:
                reason = f"nft does not work in a namespace: {e}"
            finally:
                probe.delete()
    _netns_reason.append(reason)
    return reason


def require_netns(case: unittest.TestCase) -> None:
    reason = netns_unavailable_reason()
    if reason is not None:
        require_interop(case, reason)


def ensure_chromium(case: unittest.TestCase) -> None:
    """Chromium at /usr/bin/chromium; installed with apt-get when missing and root."""
    if os.path.exists(CHROMIUM):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]
        try:
            subprocess.run(["apt-get", "update", "-qq"], env=env, timeout=300, check=False)
            subprocess.run(cmd, env=env, timeout=600, check=False, capture_output=True)
        except subprocess.TimeoutExpired:
            pass
    if not os.path.exists(CHROMIUM):
        require_interop(case, "chromium not installed (apt-get install chromium)")


# --------------------------------------------------------------------------- processes


class Process:
    """A child process in its own session, output to a log file; every wait is bounded."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        log_path: Path,
        cwd: Path,
        add_cleanup: AddCleanup,
        prefix: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                [*prefix, *cmd],
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(**(env or {})),
                start_new_session=True,
            )
        add_cleanup(self.kill)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def wait_log(self, pattern: str, timeout: float = 20.0, after: int = 0) -> re.Match[str]:
        """Wait for a regex in the log (from byte offset ``after``); fail if the process dies."""
        found: list[re.Match[str]] = []

        def seen() -> bool:
            text = self.log()[after:]
            m = re.search(pattern, text)
            if m:
                found.append(m)
                return True
            if not self.alive():
                raise AssertionError(
                    f"{self.name} exited {self.proc.returncode} before /{pattern}/:\n{text[-4000:]}"
                )
            return False

        wait_until_blocking(
            seen,
            timeout,
            f"/{pattern}/ in {self.name} log",
            detail=lambda: self.log()[after:][-4000:],
        )
        return found[0]

    def terminate(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; SIGKILL the group if it is still there after ``timeout``."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        kill_group(self.proc, grace=3.0)

    def rss_kib(self) -> int:
        return proc_status_kib(self.pid, "VmRSS")

    def peak_rss_kib(self) -> int:
        return proc_status_kib(self.pid, "VmHWM")


def start_backend(
    name: str, text: str, workdir: Path, add_cleanup: AddCleanup, prefix: Sequence[str] = ()
) -> tuple[Process, int]:
    """The sample backend; returns it and its port (on 127.0.0.1 of its namespace)."""
    port_file = workdir / f"{name}.port"
    port_file.unlink(missing_ok=True)
    proc = Process(
        name,
        [sys.executable, "-m", "tests.e2e.backend", text, str(port_file)],
        workdir / f"{name}.log",
        REPO_ROOT,
        add_cleanup,
        prefix,
    )

    def ready() -> bool:
        if not proc.alive():
            raise AssertionError(f"backend {name} exited:\n{proc.log()}")
        return port_file.exists()

    wait_until_blocking(ready, 15, f"backend {name}")
    return proc, int(port_file.read_text())


def start_daemon(
    plugin: str,
    config: Path,
    add_cleanup: AddCleanup,
    prefix: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Process:
    """``twistd -n --pidfile= PLUGIN --config CONFIG`` in the config's folder, log beside it."""
    return Process(
        plugin,
        [*TWISTD, "-n", "--pidfile=", plugin, "--config", str(config)],
        config.parent / f"{plugin}.log",
        config.parent,
        add_cleanup,
        prefix,
        env,
    )


# --------------------------------------------------------------------------- the funnel


@dataclass
class Node:
    """One node: its folder, keys, names, backend and daemon."""

    name: str
    index: int
    hostnames: tuple[str, ...]  # node.ini [node] hostname
    relay_hostnames: tuple[str, ...]  # relay.ini [node NAME] hostnames
    text: str  # what its backend says
    dir: Path
    key: bytes = field(default_factory=keys.generate_private_key)
    listen_port: int = 0
    prefix: tuple[str, ...] = ()
    endpoint_for_relay: str | None = None  # relay.ini [node] endpoint, if any
    keepalive: int = 25
    extra_serve: str = ""  # more node.ini sections, appended as they are
    backend: Process | None = None
    backend_port: int = 0
    daemon: Process | None = None
    options: dict[str, str] = field(default_factory=dict)  # more [node] keys

    @property
    def overlay_ip(self) -> str:
        return f"100.64.0.{10 + self.index}"

    @property
    def ini(self) -> Path:
        return self.dir / "node.ini"

    @property
    def ca(self) -> Path:
        return self.dir / "state" / "tls" / "ca.pem"

    @property
    def leaf_pem(self) -> Path:
        return self.dir / "state" / "tls" / f"{self.hostnames[0].replace('*', '_wildcard_')}.pem"


class Funnel:
    """A relay and its nodes as separate processes, configured through their ini files."""

    def __init__(
        self,
        add_cleanup: AddCleanup,
        *,
        relay_options: dict[str, str] | None = None,
        relay_prefix: Sequence[str] = (),
        public_address: str = "127.0.0.1",
        relay_endpoint_host: str = "127.0.0.1",
        public_port: int | None = None,
        relay_wg_port: int | None = None,
        more_public_ports: Sequence[int] = (),
    ) -> None:
        self.add_cleanup = add_cleanup
        self.dir = make_workdir(add_cleanup)
        self.relay_dir = self.dir / "relay"
        self.relay_dir.mkdir(mode=0o700)
        self.relay_key = keys.generate_private_key()
        self.relay_options = dict(relay_options or {})
        self.relay_prefix = tuple(relay_prefix)
        self.public_address = public_address
        self.relay_endpoint_host = relay_endpoint_host
        self.public_port = public_port or free_port(socket.SOCK_STREAM)
        self.more_public_ports = tuple(more_public_ports)
        self.relay_wg_port = relay_wg_port or free_port(socket.SOCK_DGRAM)
        self.nodes: list[Node] = []
        self.relay: Process | None = None

    @property
    def relay_ini(self) -> Path:
        return self.relay_dir / "relay.ini"

    def add_node(
        self,
        name: str,
        hostnames: Sequence[str],
        relay_hostnames: Sequence[str] | None = None,
        *,
        text: str | None = None,
        listen_port: int = 0,
        prefix: Sequence[str] = (),
        endpoint_for_relay: str | None = None,
        keepalive: int = 25,
        extra_serve: str = "",
    ) -> Node:
        folder = self.dir / f"node-{name}"
        folder.mkdir(mode=0o700)
        node = Node(
            name=name,
            index=len(self.nodes),
            hostnames=tuple(hostnames),
            relay_hostnames=tuple(relay_hostnames or hostnames),
            text=text or f"hello from backend {name} {os.urandom(4).hex()}",
            dir=folder,
            listen_port=listen_port,
            prefix=tuple(prefix),
            endpoint_for_relay=endpoint_for_relay,
            keepalive=keepalive,
            extra_serve=extra_serve,
        )
        self.nodes.append(node)
        return node

    def big_file(self, host: str, size: int) -> tuple[str, bytes]:
        """A folder holding ``big.bin`` (``size`` random bytes), and the [serve] section that
        funnels it on ``host`` (a node's ``extra_serve``): (section, the bytes)."""
        files = self.dir / "files"
        files.mkdir(exist_ok=True)
        blob = os.urandom(size)
        (files / "big.bin").write_bytes(blob)
        return f"[serve {host}:{self.public_port}]\nfunnel = yes\n/ = {files}\n", blob

    # --- configuration files ----------------------------------------------------------------

    def write_relay_ini(self) -> Path:
        write_key(self.relay_dir / "relay.key", self.relay_key)
        lines = [
            "[relay]",
            "private-key-file = relay.key",
            f"listen-port = {self.relay_wg_port}",
            f"address = {RELAY_OVERLAY}/32",
            f"public-address = {self.public_address}",
            f"public-ports = {', '.join(map(str, (self.public_port, *self.more_public_ports)))}",
            *(f"{k} = {v}" for k, v in self.relay_options.items()),
            "",
        ]
        for node in self.nodes:
            lines += [
                f"[node {node.name}]",
                f"public-key = {keys.encode_key(keys.public_key(node.key))}",
                f"allowed-ips = {node.overlay_ip}/32",
                f"hostnames = {', '.join(node.relay_hostnames)}",
                f"peerapi = {node.overlay_ip}:{PEERAPI_PORT}",
            ]
            if node.endpoint_for_relay:
                lines.append(f"endpoint = {node.endpoint_for_relay}")
            lines.append("")
        self.relay_ini.write_text("\n".join(lines))
        return self.relay_ini

    def write_node_ini(self, node: Node) -> Path:
        write_key(node.dir / "node.key", node.key)
        node.ini.write_text(
            f"""[node]
private-key-file = node.key
listen-port = {node.listen_port}
address = {node.overlay_ip}/32
hostname = {", ".join(node.hostnames)}
peerapi-port = {PEERAPI_PORT}
state-dir = state
{"".join(f"{k} = {v}" + chr(10) for k, v in node.options.items())}
[peer relay]
public-key = {keys.encode_key(keys.public_key(self.relay_key))}
endpoint = {self.relay_endpoint_host}:{self.relay_wg_port}
allowed-ips = {RELAY_OVERLAY}/32
persistent-keepalive = {node.keepalive}
funnel-ingress = yes

[tls]
source = self-signed

[serve {self.public_port}]
funnel = yes
/ = http://127.0.0.1:{node.backend_port}

{node.extra_serve}
"""
        )
        return node.ini

    # --- processes --------------------------------------------------------------------------

    def start_relay(self) -> Process:
        offset = self.relay.log_size() if self.relay is not None else 0
        self.relay = start_daemon(
            "funnel-relay", self.relay_ini, self.add_cleanup, self.relay_prefix
        )
        self.relay.wait_log(r"relay listening on", after=offset)
        return self.relay

    def start_node(self, node: Node, wait: bool = True) -> Process:
        offset = node.daemon.log_size() if node.daemon is not None else 0
        node.daemon = start_daemon("funnel", node.ini, self.add_cleanup, node.prefix)
        if wait:
            node.daemon.wait_log(r"handshake with relay complete", after=offset)
            wait_until_blocking(node.ca.exists, 10, f"{node.ca}")
        return node.daemon

    def start(self, probe: bool = True) -> None:
        """Backends, relay, nodes; then (``probe``) wait until every name answers."""
        for node in self.nodes:
            node.backend, node.backend_port = start_backend(
                f"backend-{node.name}", node.text, node.dir, self.add_cleanup, node.prefix
            )
            self.write_node_ini(node)
        self.write_relay_ini()
        self.start_relay()
        for node in self.nodes:
            self.start_node(node)
        if probe:
            for node in self.nodes:
                name = node.hostnames[0]
                self.wait_fetch(node, name)

    # --- clients ----------------------------------------------------------------------------

    def wait_fetch(self, node: Node, name: str, timeout: float = 15.0) -> float:
        """Seconds until a TLS fetch of ``name`` through the relay gets this node's page."""
        last: list[str] = []

        def ok() -> bool:
            try:
                status, body = fetch(self.public_port, name, node.ca, timeout=3.0)
            except (OSError, ssl.SSLError) as e:
                last[:] = [f"{type(e).__name__}: {e}"]
                return False
            last[:] = [f"HTTP {status}: {body[:200]}"]
            return status == 200 and node.text in body

        try:
            return wait_until_blocking(ok, timeout, f"{name} through the relay", interval=0.2)
        except AssertionError as e:
            raise AssertionError(f"{e}; last attempt: {last}\n{self.logs()}") from None

    def curl(
        self,
        node: Node,
        name: str | None = None,
        *,
        path: str = "/",
        http2: bool = False,
        extra: Sequence[str] = (),
        port: int | None = None,
        connect_host: str = "127.0.0.1",
        prefix: Sequence[str] = (),
        timeout: float = 15.0,
    ) -> CurlResult:
        name = name or node.hostnames[0]
        port = port or self.public_port
        cmd = [
            *prefix,
            *curl_argv(
                name,
                port,
                path,
                "--http2" if http2 else "--http1.1",
                "-w",
                "\n__e2e__ %{http_code} %{http_version}",
                *extra,
                ca_file=node.ca,
                connect=connect_host,
                max_time=int(timeout) - 2,
            ),
        ]
        proc = run(cmd, timeout=timeout, check=False)
        return CurlResult.parse(proc)

    def logs(self) -> str:
        parts = []
        if self.relay is not None:
            parts.append(f"--- relay log:\n{self.relay.log()[-3000:]}")
        for node in self.nodes:
            if node.daemon is not None:
                parts.append(f"--- node {node.name} log:\n{node.daemon.log()[-3000:]}")
        return "\n".join(parts)


@dataclass(frozen=True)
class CurlResult:
    returncode: int
    status: int
    http_version: str
    body: str
    stderr: str

    @classmethod
    def parse(cls, proc: subprocess.CompletedProcess[str]) -> CurlResult:
        body, _, tail = proc.stdout.rpartition("\n__e2e__ ")
        parts = tail.split()
        status = int(parts[0]) if parts and parts[0].isdigit() else 0
        version = parts[1] if len(parts) > 1 else ""
        return cls(proc.returncode, status, version, body, proc.stderr)


def fetch(
    port: int,
    name: str,
    ca_file: Path,
    *,
    host: str = "127.0.0.1",
    path: str = "/",
    timeout: float = 5.0,
) -> tuple[int, str]:
    """GET over TLS with SNI ``name``, verified against ``ca_file``: (status, body)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        tls.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {name}:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
            if len(answer) > 1 << 20:
                break
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, body.decode("utf-8", "replace")


# --------------------------------------------------------------------------- TLS bits


def client_hello(server_name: str) -> bytes:
    """The bytes of a real TLS ClientHello for ``server_name`` (from Python's OpenSSL)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def fetch_with_dribbled_hello(
    port: int, name: str, ca_file: Path, chunk: int, delay: float, timeout: float = 10.0
) -> tuple[int, str]:
    """Like :func:`fetch`, but the ClientHello goes out ``chunk`` bytes per TCP segment,
    ``delay`` seconds apart; the rest of the TLS session is driven through memory BIOs."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.set_alpn_protocols(["http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        hello = outgoing.read()
        for i in range(0, len(hello), chunk):
            sock.sendall(hello[i : i + chunk])
            time.sleep(delay)

        def pump() -> bool:
            """Flush what TLS wrote; read one network chunk into it. False on EOF."""
            if outgoing.pending:
                sock.sendall(outgoing.read())
            data = sock.recv(65536)
            if not data:
                return False
            incoming.write(data)
            return True

        while True:
            if time.monotonic() > deadline:
                raise TimeoutError("TLS handshake took too long")
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if not pump():
                    raise ConnectionError("closed during the handshake") from None
        tls.write(f"GET / HTTP/1.1\r\nHost: {name}:{port}\r\nConnection: close\r\n\r\n".encode())
        sock.sendall(outgoing.read())
        answer = b""
        while time.monotonic() < deadline and len(answer) < 1 << 20:
            try:
                answer += tls.read(65536)
            except ssl.SSLWantReadError:
                if not pump():
                    break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, body.decode("utf-8", "replace")


def leaf_certificate(pem_file: Path) -> x509.Certificate:
    """The first certificate in a PEM file (the node keeps key + leaf + CA in one file)."""
    return x509.load_pem_x509_certificates(pem_file.read_bytes())[0]


def spki_sha256_b64(cert: x509.Certificate) -> str:
    """What Chromium's --ignore-certificate-errors-spki-list wants for ``cert``."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


# --------------------------------------------------------------------------- chromium


def chromium_dump_dom(
    url: str,
    name: str,
    spki: str,
    workdir: Path,
    timeout: float = 60.0,
    also: str = "",
) -> subprocess.CompletedProcess[str]:
    """Headless Chromium loads ``url`` (``name`` mapped to 127.0.0.1, nothing else resolves
    but the ``also`` host, e.g. a loopback OpenID Provider), trusting only the certificate
    whose SPKI hash is ``spki``; returns the dumped DOM."""
    profile = Path(tempfile.mkdtemp(prefix="profile-", dir=workdir))
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        f"--host-resolver-rules=MAP {name} 127.0.0.1, MAP * ~NOTFOUND"
        + (f", EXCLUDE {also}" if also else ""),
        f"--ignore-certificate-errors-spki-list={spki}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        url,
    ]
    env = dict(os.environ, HOME=str(profile))
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        err += f"\n(chromium killed after {timeout}s)"
    finally:
        kill_group(proc)  # the browser's helper processes share its session
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


# --------------------------------------------------------------------------- a recording TCP tee


class Tee:
    """A TCP forwarder on 127.0.0.1 that records both directions of every connection.

    ``c2s`` / ``s2c`` hold the bytes of all connections, client->target and back. Threads are
    daemons with socket timeouts; ``close()`` shuts everything.
    """

    def __init__(self, target: tuple[str, int], add_cleanup: AddCleanup) -> None:
        self.target = target
        self.c2s = bytearray()
        self.s2c = bytearray()
        self.lock = threading.Lock()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.port = int(self.listener.getsockname()[1])
        self.closed = False
        self.sockets: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self._start(self._accept)
        add_cleanup(self.close)

    def _start(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        deadline = time.monotonic() + 120
        while not self.closed and time.monotonic() < deadline:
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=30)
            client.settimeout(30)
            self.sockets += [client, upstream]
            self._start(self._pump, client, upstream, self.c2s)
            self._start(self._pump, upstream, client, self.s2c)

    def _pump(self, src: socket.socket, dst: socket.socket, record: bytearray) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                with self.lock:
                    record += data
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.closed = True
        for s in [self.listener, *self.sockets]:
            with contextlib.suppress(OSError):
                s.close()
        for t in self.threads:
            t.join(timeout=2)


# --------------------------------------------------------------------------- process memory


def memory_contains(pid: int, needles: Sequence[bytes]) -> dict[bytes, bool] | None:
    """Which ``needles`` occur anywhere in the readable memory of ``pid``.

    None when /proc/PID/mem cannot be read (not root, or ptrace restrictions).
    """
    found = dict.fromkeys(needles, False)
    overlap = max(len(n) for n in needles) - 1
    chunk = 8 << 20
    try:
        maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
        mem: IO[bytes] = open(f"/proc/{pid}/mem", "rb", buffering=0)  # noqa: SIM115
    except OSError:
        return None
    with mem:
        for line in maps:
            fields = line.split()
            if len(fields) < 2 or not fields[1].startswith("r"):
                continue
            if len(fields) >= 6 and fields[5] in ("[vvar]", "[vsyscall]", "[vvar_vclock]"):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            pos, tail = start, b""
            while pos < end:
                size = min(chunk, end - pos)
                try:
                    mem.seek(pos)
                    data = mem.read(size)
                except OSError:
                    break
                if not data:
                    break
                window = tail + data
                for needle in needles:
                    if not found[needle] and needle in window:
                        found[needle] = True
                tail = window[-overlap:] if overlap else b""
                pos += len(data)
            if all(found.values()):
                break
    return found


# --------------------------------------------------------------------------- hostile clients


def closed_within(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the peer closes (EOF or reset) ``sock``; None if still open at timeout."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        sock.settimeout(remaining)
        try:
            data = sock.recv(4096)
        except TimeoutError:
            return None
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - start
        if not data:
            return time.monotonic() - start


def rst_close(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): no TIME_WAIT left behind on the loopback port range."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        sock.close()
