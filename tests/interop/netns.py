"""Harness for interop tests against real peers in network namespaces.

Everything here talks only to namespaces it creates itself (``ip netns`` + veth pairs), never to
the host's own interfaces. Every wait is bounded, and every resource has a ``close()``/``delete()``
that callers register with ``addCleanup`` (or an ``ExitStack``) so a failing test leaves nothing
behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUIRE_ENV = "FUNNEL_TW_REQUIRE_INTEROP"
WG_RUN_DIR = Path("/var/run/wireguard")
NS_PREFIX = "ftw-"
_SYS_PIDFD_GETFD = 438  # the same number on every architecture (the unified table)
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # socket.h; Python does not name them

#: Registers a zero-argument cleanup callable (``TestCase.addCleanup``, ``ExitStack.callback``).
AddCleanup = Callable[[Callable[[], None]], Any]

_counter = itertools.count(1)


class InteropError(RuntimeError):
    """A harness step failed; the message carries the command's output for diagnosis."""


def unique_suffix() -> str:
    """``<pid>-<n>``: unique per process and call, so parallel runs never share names."""
    return f"{os.getpid()}-{next(_counter)}"


def run(
    cmd: Sequence[str], *, timeout: float = 10.0, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command with a hard timeout; raise with its output on failure when ``check``."""
    try:
        proc = subprocess.run(
            list(cmd), capture_output=True, text=True, timeout=timeout, input=input, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise InteropError(f"timed out after {timeout}s: {' '.join(cmd)}") from e
    if check and proc.returncode != 0:
        raise InteropError(
            f"exit {proc.returncode}: {' '.join(cmd)}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return proc


def kill_group(proc: subprocess.Popen[Any], grace: float = 3.0) -> None:
    """SIGTERM the process group started with ``start_new_session``; SIGKILL if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    # Also reap stragglers in the group even if the leader already exited.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)


# --------------------------------------------------------------------------- availability


@functools.lru_cache(maxsize=1)
def interop_unavailable_reason() -> str | None:
    """Why interop tests cannot run here, or None when they can (probed once per process)."""
    if not sys.platform.startswith("linux"):
        return "interop tests need Linux network namespaces"
    if os.geteuid() != 0:
        return "interop tests need root (ip netns, TUN devices)"
    for tool in ("ip", "wireguard-go", "wg", "ping"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun missing"
    probe = f"{NS_PREFIX}probe-{unique_suffix()}"
    try:
        run(["ip", "netns", "add", probe], timeout=5)
    except InteropError as e:
        return f"ip netns add failed: {e}"
    try:
        run(["ip", "netns", "exec", probe, "ip", "link", "set", "lo", "up"], timeout=5)
    except InteropError as e:
        return f"ip netns exec failed: {e}"
    finally:
        run(["ip", "netns", "del", probe], timeout=5, check=False)
    return None


def interop_available() -> bool:
    """True when root, ``ip netns``, wireguard-go, wg and /dev/net/tun all work."""
    return interop_unavailable_reason() is None


def require_interop(testcase: unittest.TestCase, reason: str) -> None:
    """Skip the test, unless FUNNEL_TW_REQUIRE_INTEROP=1 says a skip would hide a CI gap."""
    if os.environ.get(REQUIRE_ENV) == "1":
        testcase.fail(f"interop required ({REQUIRE_ENV}=1) but unavailable: {reason}")
    raise unittest.SkipTest(reason)


def skip_unless_interop(testcase: unittest.TestCase) -> None:
    """Call from setUp: applies :func:`require_interop` when the environment lacks support."""
    reason = interop_unavailable_reason()
    if reason is not None:
        require_interop(testcase, reason)


# --------------------------------------------------------------------------- namespaces


class Namespace:
    """A network namespace we created; ``delete()`` kills what runs in it, then removes it."""

    def __init__(self, role: str) -> None:
        self.name = f"{NS_PREFIX}{role}-{unique_suffix()}"
        run(["ip", "netns", "add", self.name])
        self._deleted = False
        self.run(["ip", "link", "set", "lo", "up"])

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def run(
        self, cmd: Sequence[str], *, timeout: float = 10.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace with a hard timeout."""
        return run([*self.exec_prefix(), *cmd], timeout=timeout, check=check)

    def popen(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a command inside the namespace in its own session (kill it with kill_group)."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.Popen([*self.exec_prefix(), *cmd], start_new_session=True, **kwargs)

    def sysctl(self, key: str, value: str) -> None:
        self.run(["sysctl", "-q", "-w", f"{key}={value}"])

    def udp_snmp(self) -> dict[str, int]:
        """The namespace's Udp counters from /proc/net/snmp (e.g. RcvbufErrors)."""
        text = self.run(["cat", "/proc/net/snmp"]).stdout
        rows = [line.split()[1:] for line in text.splitlines() if line.startswith("Udp:")]
        return {k: int(v) for k, v in zip(rows[0], rows[1], strict=True)}

    def pids(self) -> list[int]:
        out = run(["ip", "netns", "pids", self.name], check=False).stdout
        return [int(p) for p in out.split()]

    def delete(self) -> None:
        """Idempotent: SIGKILL every process left inside, then delete the namespace."""
        if self._deleted:
            return
        self._deleted = True
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        run(["ip", "netns", "del", self.name], check=False)


def veth_pair(
    a: Namespace,
    b: Namespace,
    addr_a: str,
    addr_b: str,
    name_a: str = "veth-a",
    name_b: str = "veth-b",
) -> None:
    """Join two namespaces with a veth pair created inside ``a`` (never in the host namespace)."""
    a.run(["ip", "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", b.name])
    a.run(["ip", "addr", "add", addr_a, "dev", name_a])
    b.run(["ip", "addr", "add", addr_b, "dev", name_b])
    a.run(["ip", "link", "set", name_a, "up"])
    b.run(["ip", "link", "set", name_b, "up"])


@dataclass
class Pair:
    """Two namespaces joined by a veth on 10.231.<subnet>.0/24: ``a`` is .1, ``b`` is .2."""

    a: Namespace
    b: Namespace
    subnet: int
    veth_a: str = "veth-a"
    veth_b: str = "veth-b"

    @property
    def ip_a(self) -> str:
        return f"10.231.{self.subnet}.1"

    @property
    def ip_b(self) -> str:
        return f"10.231.{self.subnet}.2"

    def ip(self, host: int) -> str:
        return f"10.231.{self.subnet}.{host}"


def make_pair(add_cleanup: AddCleanup, subnet: int) -> Pair:
    """Create namespaces A and B with a veth between them; cleanups registered as we go."""
    if not 0 <= subnet <= 255:
        raise ValueError(subnet)
    a = Namespace("a")
    add_cleanup(a.delete)
    b = Namespace("b")
    add_cleanup(b.delete)
    pair = Pair(a, b, subnet)
    veth_pair(a, b, f"{pair.ip_a}/24", f"{pair.ip_b}/24", pair.veth_a, pair.veth_b)
    return pair


def make_tempdir(add_cleanup: AddCleanup) -> Path:
    path = Path(tempfile.mkdtemp(prefix="ftw-interop-"))
    add_cleanup(lambda: shutil.rmtree(path, ignore_errors=True))
    return path


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class KeyPair:
    private: str
    public: str


def gen_keypair() -> KeyPair:
    """A fresh X25519 key pair from ``wg genkey``/``wg pubkey`` (the reference encoding)."""
    private = run(["wg", "genkey"]).stdout.strip()
    return KeyPair(private, public_key(private))


def public_key(private: str) -> str:
    return run(["wg", "pubkey"], input=private + "\n").stdout.strip()


def gen_psk() -> str:
    return run(["wg", "genpsk"]).stdout.strip()


def write_secret(path: Path, value: str) -> Path:
    """Write a key file with mode 0600 from the start (both wg and node.ini refuse lax modes)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    os.chmod(path, 0o600)
    return path


# --------------------------------------------------------------------------- wireguard-go


@dataclass(frozen=True)
class WgPeer:
    public_key: str
    allowed_ips: Sequence[str]
    endpoint: str | None = None
    preshared_key: str | None = None
    persistent_keepalive: int | None = None


@dataclass(frozen=True)
class WgPeerState:
    """One peer line of ``wg show NAME dump``."""

    public_key: str
    preshared_key: str
    endpoint: str | None
    allowed_ips: str
    latest_handshake: int
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: str


class WireGuardGo:
    """A wireguard-go instance on its own TUN in ``ns``, driven with ``wg``.

    The interface name must be unique host-wide: /var/run/wireguard/NAME.sock is shared between
    namespaces.
    """

    def __init__(self, ns: Namespace, workdir: Path, name: str | None = None) -> None:
        self.ns = ns
        self.workdir = workdir
        self.name = name or f"fwg{os.getpid() % 1000000}x{next(_counter)}"
        if len(self.name) > 15:
            raise ValueError(f"interface name too long: {self.name}")
        self.socket = WG_RUN_DIR / f"{self.name}.sock"
        self.log_path = workdir / f"{self.name}.log"
        self.keys = gen_keypair()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start ``wireguard-go -f`` and wait (bounded) until its UAPI socket exists."""
        if self.socket.exists():
            raise InteropError(f"{self.socket} already exists: interface name clash")
        env = dict(os.environ, LOG_LEVEL="debug")
        with open(self.log_path, "wb") as log:
            self.proc = self.ns.popen(
                ["wireguard-go", "-f", self.name], stdout=log, stderr=subprocess.STDOUT, env=env
            )
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self.proc.poll() is not None:
                raise InteropError(f"wireguard-go exited {self.proc.returncode}: {self.log()}")
            if time.monotonic() > deadline:
                raise InteropError(f"wireguard-go socket did not appear: {self.log()}")
            time.sleep(0.02)

    def configure(
        self,
        listen_port: int,
        peers: Iterable[WgPeer],
        addresses: Iterable[str] = (),
        routes: Iterable[str] = (),
    ) -> None:
        """Set key, port and peers, add overlay addresses (no DAD) and routes, bring it up."""
        key_file = write_secret(self.workdir / f"{self.name}.key", self.keys.private)
        cmd = ["wg", "set", self.name, "private-key", str(key_file)]
        cmd += ["listen-port", str(listen_port)]
        for i, peer in enumerate(peers):
            cmd += ["peer", peer.public_key, "allowed-ips", ",".join(peer.allowed_ips)]
            if peer.endpoint:
                cmd += ["endpoint", peer.endpoint]
            if peer.preshared_key:
                psk = write_secret(self.workdir / f"{self.name}.psk{i}", peer.preshared_key)
                cmd += ["preshared-key", str(psk)]
            if peer.persistent_keepalive is not None:
                cmd += ["persistent-keepalive", str(peer.persistent_keepalive)]
        self.ns.run(cmd)
        for addr in addresses:
            extra = ["nodad"] if ":" in addr else []
            self.ns.run(["ip", "addr", "add", addr, "dev", self.name, *extra])
        self.ns.run(["ip", "link", "set", self.name, "up"])
        for route in routes:
            family = ["-6"] if ":" in route else []
            self.ns.run(["ip", *family, "route", "add", route, "dev", self.name])

    def set_peer(self, peer_public_key: str, *args: str) -> None:
        """``wg set NAME peer KEY <args>``, e.g. ("endpoint", "10.231.1.1:5000")."""
        self.ns.run(["wg", "set", self.name, "peer", peer_public_key, *args])

    def dump(self) -> list[WgPeerState]:
        lines = self.ns.run(["wg", "show", self.name, "dump"]).stdout.splitlines()
        peers = []
        for line in lines[1:]:
            f = line.split("\t")
            peers.append(
                WgPeerState(
                    public_key=f[0],
                    preshared_key=f[1],
                    endpoint=None if f[2] == "(none)" else f[2],
                    allowed_ips=f[3],
                    latest_handshake=int(f[4]),
                    rx_bytes=int(f[5]),
                    tx_bytes=int(f[6]),
                    persistent_keepalive=f[7],
                )
            )
        return peers

    def latest_handshakes(self) -> dict[str, int]:
        """Peer public key -> unix time of the last handshake (0 = never)."""
        return {p.public_key: p.latest_handshake for p in self.dump()}

    def transfer(self) -> dict[str, tuple[int, int]]:
        """Peer public key -> (rx bytes, tx bytes)."""
        return {p.public_key: (p.rx_bytes, p.tx_bytes) for p in self.dump()}

    def endpoints(self) -> dict[str, str | None]:
        return {p.public_key: p.endpoint for p in self.dump()}

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def force_receive_buffer(self, size: int) -> list[int]:
        """Give wireguard-go's UDP sockets ``size`` buffers, receive and send, as wireguard-go
        does itself since 0.0.20230223 (7 MiB, SO_RCVBUFFORCE and SO_SNDBUFFORCE); Debian's
        0.0.20220316 keeps the kernel's defaults (208 KiB). Done from outside with pidfd_getfd
        (root): the socket is shared, so the setting is wireguard-go's. Returns each socket's
        SO_RCVBUF after."""
        assert self.proc is not None
        pid = self.proc.pid
        inodes = set()
        for table in ("udp", "udp6"):
            with open(f"/proc/{pid}/net/{table}") as f:
                inodes.update(line.split()[9] for line in list(f)[1:])
        libc = ctypes.CDLL(None, use_errno=True)
        pidfd = os.pidfd_open(pid)
        sizes = []
        try:
            for fd_name in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd_name}")
                except OSError:
                    continue
                if not (target.startswith("socket:[") and target[8:-1] in inodes):
                    continue
                fd = libc.syscall(_SYS_PIDFD_GETFD, pidfd, int(fd_name), 0)
                if fd < 0:
                    raise InteropError(f"pidfd_getfd: {os.strerror(ctypes.get_errno())}")
                with socket.socket(fileno=fd) as sock:
                    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
                    sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, size)
                    sizes.append(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
        finally:
            os.close(pidfd)
        if not sizes:
            raise InteropError(f"wireguard-go (pid {pid}) has no UDP socket yet")
        return sizes

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)


def start_wireguard_go(add_cleanup: AddCleanup, ns: Namespace, workdir: Path) -> WireGuardGo:
    wg = WireGuardGo(ns, workdir)
    add_cleanup(wg.stop)
    wg.start()
    return wg


# --------------------------------------------------------------------------- ping from a netns


def ping(
    ns: Namespace, addr: str, count: int = 3, wait: float = 2, interval: float = 0.2
) -> subprocess.CompletedProcess[str]:
    """System ping inside ``ns``; returncode 0 iff at least one reply arrived."""
    family = ["-6"] if ":" in addr else ["-4"]
    cmd = ["ping", *family, "-n", "-c", str(count), "-W", str(wait), "-i", str(interval), addr]
    return ns.run(cmd, timeout=count * (interval + wait) + 10, check=False)


def ping_received(result: subprocess.CompletedProcess[str]) -> int:
    m = re.search(r"(\d+) received", result.stdout)
    return int(m.group(1)) if m else 0


# --------------------------------------------------------------------------- node.ini


@dataclass(frozen=True)
class IniPeer:
    name: str
    public_key: str
    allowed_ips: Sequence[str]
    endpoint: str | None = None
    preshared_key: str | None = None
    persistent_keepalive: int | None = None


def write_node_ini(
    workdir: Path,
    private_key: str,
    addresses: Sequence[str],
    peers: Sequence[IniPeer],
    listen_port: int = 0,
) -> Path:
    """Write node.ini plus a 0600 private-key-file (and psk files), as DESIGN.md specifies."""
    key_file = write_secret(workdir / "node.key", private_key)
    lines = [
        "[node]",
        f"private-key-file = {key_file}",
        f"listen-port = {listen_port}",
        f"address = {', '.join(addresses)}",
        "",
    ]
    for peer in peers:
        lines += [
            f"[peer {peer.name}]",
            f"public-key = {peer.public_key}",
            f"allowed-ips = {', '.join(peer.allowed_ips)}",
        ]
        if peer.endpoint:
            lines.append(f"endpoint = {peer.endpoint}")
        if peer.preshared_key:
            psk = write_secret(workdir / f"{peer.name}.psk", peer.preshared_key)
            lines.append(f"preshared-key-file = {psk}")
        if peer.persistent_keepalive is not None:
            lines.append(f"persistent-keepalive = {peer.persistent_keepalive}")
        lines.append("")
    path = workdir / "node.ini"
    path.write_text("\n".join(lines))
    return path


# --------------------------------------------------------------------------- our side


_EOF = object()


@dataclass
class OurPeer:
    """``python -m tests.interop.ourpeer`` running in a namespace, read as JSON lines.

    A daemon thread moves stdout lines into a queue so every wait has a timeout; stderr goes to a
    file that failure messages quote.
    """

    proc: subprocess.Popen[bytes]
    stderr_path: Path
    events: list[dict[str, Any]] = field(default_factory=list)
    _queue: queue.Queue[object] = field(default_factory=queue.Queue)
    _eof: bool = False

    def _start_reader(self) -> None:
        def read(stream: IO[bytes]) -> None:
            try:
                for raw in stream:
                    line = raw.decode(errors="replace").strip()
                    if not line:
                        continue
                    try:
                        event = json.loads(line)
                    except ValueError:
                        event = {"event": "_unparsed", "line": line}
                    if not isinstance(event, dict):
                        event = {"event": "_unparsed", "line": line}
                    self._queue.put(event)
            finally:
                self._queue.put(_EOF)

        assert self.proc.stdout is not None
        threading.Thread(target=read, args=(self.proc.stdout,), daemon=True).start()

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def describe(self) -> str:
        return f"exit={self.proc.poll()} events={self.events}\nstderr:\n{self.stderr()}"

    def next_event(self, timeout: float) -> dict[str, Any] | None:
        """The next event, or None on EOF; raises InteropError on timeout."""
        if self._eof:
            return None
        try:
            item = self._queue.get(timeout=max(timeout, 0))
        except queue.Empty:
            msg = f"no event from our side within {timeout:.1f}s; {self.describe()}"
            raise InteropError(msg) from None
        if item is _EOF:
            self._eof = True
            return None
        assert isinstance(item, dict)
        self.events.append(item)
        return item

    def wait_for(
        self, event: str, timeout: float, pred: Callable[[dict[str, Any]], bool] | None = None
    ) -> dict[str, Any]:
        """Consume events until one named ``event`` (matching ``pred``) arrives."""
        deadline = time.monotonic() + timeout
        while True:
            ev = self.next_event(deadline - time.monotonic())
            if ev is None:
                raise InteropError(f"our side ended before {event!r}; {self.describe()}")
            if ev.get("event") == event and (pred is None or pred(ev)):
                return ev

    def drain(self, timeout: float = 0.3) -> None:
        """Collect whatever events arrive within ``timeout`` without failing."""
        deadline = time.monotonic() + timeout
        while not self._eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                if self.next_event(remaining) is None:
                    return
            except InteropError:
                return

    def wait_exit(self, timeout: float) -> int:
        """Read everything until EOF and wait for exit; returns the exit code."""
        deadline = time.monotonic() + timeout
        while self.next_event(deadline - time.monotonic()) is not None:
            pass
        try:
            return self.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            msg = f"our side did not exit within {timeout}s; {self.describe()}"
            raise InteropError(msg) from None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM (which should print stats and exit 0), then read until EOF."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def kill(self) -> None:
        kill_group(self.proc)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def of(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]

    def stats(self) -> dict[str, int]:
        found = self.of("stats")
        if not found:
            raise InteropError(f"no stats event; {self.describe()}")
        counters = found[-1].get("counters", {})
        assert isinstance(counters, dict)
        return counters


def run_our_peer(
    add_cleanup: AddCleanup, ns: Namespace, workdir: Path, config: Path, *args: str
) -> OurPeer:
    """Start our WireGuard side in ``ns``; the caller waits for its ``ready`` event."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    stderr_path = workdir / f"ourpeer-{next(_counter)}.stderr"
    with open(stderr_path, "wb") as err:
        proc = ns.popen(
            [sys.executable, "-m", "tests.interop.ourpeer", "--config", str(config), *args],
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=str(REPO_ROOT),
            env=env,
        )
    peer = OurPeer(proc, stderr_path)
    add_cleanup(peer.kill)
    peer._start_reader()
    return peer
