"""The kernel's side of the TCP interop tests: a tiny tool run inside a test namespace.

    python -m tests.interop.kernel_tcp sink --port P [--count N]
    python -m tests.interop.kernel_tcp source --port P --bytes N [--count N]
    python -m tests.interop.kernel_tcp send HOST:PORT --bytes N [--connections K]
    python -m tests.interop.kernel_tcp fetch HOST:PORT
    python -m tests.interop.kernel_tcp probe HOST --tcp-ports 1-1024 [--skip P] [--open P]
        [--udp-ports 53,..] [--interface IF] [--wait S]

It speaks the same protocol as ``tests.interop.ourpeer``'s TCP modes, with the kernel's TCP:

- ``sink``: accept on [::]:P (IPv4 too); read to EOF; answer "<bytes> <sha256>\\n"; close.
  Prints {"event": "sink", "peer", "bytes", "sha256", "seconds"} per connection.
- ``source``: accept; send N random bytes; close. Prints {"event": "source", "peer", "bytes",
  "sha256", "seconds"}.
- ``send``: K concurrent connections, each sends N random bytes, half-closes and reads the
  answer to EOF. Prints {"event": "sent", "bytes", "sha256", "reply", "seconds"} per connection
  (or {"event": "tcp-error", "error"}).
- ``fetch``: connect, read to EOF. Prints {"event": "fetched", "bytes", "sha256", "seconds"}.
- ``probe``: non-blocking connects to every TCP port (and to the ``--open`` port, the control
  that must connect), datagrams to the UDP ports (on connected sockets, so an ICMP
  port-unreachable would surface as ECONNREFUSED), then waits; with ``--interface`` it also
  counts every packet arriving on that interface from HOST. Prints {"event": "probe", "tcp":
  {"connected", "refused", "pending", "other", "open_port"}, "udp": {"replies", "refused",
  "silent"}, "arrived": {"open_port", "other", "capture_drops"}}.

Listeners print {"event": "listening", "port"} first; every mode prints {"event": "done"} last.
Every mode is bounded by ``--duration`` (default 120 s) and exits non-zero when it runs out.

The second half of this module holds host-side helpers (used by the tests and the benchmark,
never inside a namespace): node.ini with the keys the TCP tests need (mtu, network,
peerapi-port, funnel-ingress), a bounded runner for this tool, and ``ss`` state counts.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import hashlib
import json
import os
import resource
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.interop import netns as h

_CHUNK = 256 * 1024
_SOL_PACKET = 263
_PACKET_STATISTICS = 6
_PACKET_IGNORE_OUTGOING = 23
LISTEN_BACKLOG = 1024  # above any test's concurrent connections


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _peer(writer: asyncio.StreamWriter) -> str:
    info = writer.get_extra_info("peername")
    return f"[{info[0]}]:{info[1]}" if info else "?"


def _dual_stack_listener(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


async def _send_random(writer: asyncio.StreamWriter, total: int) -> str:
    digest = hashlib.sha256()
    left = total
    while left > 0:
        chunk = os.urandom(min(_CHUNK, left))
        left -= len(chunk)
        digest.update(chunk)
        writer.write(chunk)
        await writer.drain()
    return digest.hexdigest()


async def _read_all(reader: asyncio.StreamReader) -> tuple[int, str]:
    digest = hashlib.sha256()
    count = 0
    while True:
        data = await reader.read(1 << 20)
        if not data:
            return count, digest.hexdigest()
        count += len(data)
        digest.update(data)


async def _serve(options: argparse.Namespace) -> None:
    finished = asyncio.Event()
    served = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        started = time.monotonic()
        peer = _peer(writer)
        try:
            if options.mode == "sink":
                count, digest = await _read_all(reader)
                writer.write(f"{count} {digest}\n".encode())
                await writer.drain()
                writer.close()
                await writer.wait_closed()
                elapsed = time.monotonic() - started
                emit(event="sink", peer=peer, bytes=count, sha256=digest, seconds=elapsed)
            else:
                digest = await _send_random(writer, options.bytes)
                writer.close()
                await writer.wait_closed()
                elapsed = time.monotonic() - started
                emit(event="source", peer=peer, bytes=options.bytes, sha256=digest, seconds=elapsed)
        except OSError as e:
            emit(event="tcp-error", peer=peer, error=repr(e))
        served += 1
        if options.count and served >= options.count:
            finished.set()

    # start_server listens again with its own backlog (100 by default): with more concurrent
    # SYNs than that, Linux answers with SYN cookies, drops the ACK while the accept queue is
    # full, and resets the data that follows (the cookie no longer checks out).
    server = await asyncio.start_server(
        handle, sock=_dual_stack_listener(options.port), limit=1 << 20, backlog=LISTEN_BACKLOG
    )
    emit(event="listening", port=options.port)
    async with server:
        await finished.wait()


async def _clients(options: argparse.Namespace) -> None:
    host, port = _host_port(options.target)

    async def one() -> None:
        started = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=1 << 20), options.connect_timeout
            )
            if options.mode == "send":
                digest = await _send_random(writer, options.bytes)
                writer.write_eof()
                reply = await reader.read()
                writer.close()
                emit(
                    event="sent",
                    bytes=options.bytes,
                    sha256=digest,
                    reply=reply.decode(errors="replace").strip(),
                    seconds=time.monotonic() - started,
                )
            else:
                count, digest = await _read_all(reader)
                writer.close()
                elapsed = time.monotonic() - started
                emit(event="fetched", bytes=count, sha256=digest, seconds=elapsed)
        except (TimeoutError, OSError) as e:
            emit(event="tcp-error", error=repr(e))

    connections = options.connections if options.mode == "send" else 1
    await asyncio.gather(*(one() for _ in range(connections)))


def _ports(text: str) -> list[int]:
    ports: list[int] = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        ports.extend(range(int(lo), int(hi or lo) + 1))
    return ports


def _source_port(packet: bytes) -> tuple[int, int]:
    """(protocol, source port) of an IPv4/IPv6 packet (no extension headers); port 0 if none."""
    if packet[0] >> 4 == 4:
        ihl = (packet[0] & 0x0F) * 4
        protocol, rest = packet[9], packet[ihl:]
    else:
        protocol, rest = packet[6], packet[40:]
    port = int.from_bytes(rest[:2], "big") if protocol in (6, 17) and len(rest) >= 2 else 0
    return protocol, port


def _probe(options: argparse.Namespace) -> None:
    """Knock on closed doors and count every answer (there should be none).

    ``--open P`` is the control: a connect to a port that is open must succeed, and its
    packets must show up in the capture (so a capture that sees nothing means something).
    """
    host = options.target
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    capture = None
    if options.interface:
        capture = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0003))
        # Only what arrives, with room for all of it: a full buffer would hide answers.
        capture.setsockopt(_SOL_PACKET, _PACKET_IGNORE_OUTGOING, 1)
        capture.setsockopt(socket.SOL_SOCKET, h.SO_RCVBUFFORCE, 8 << 20)
        capture.bind((options.interface, 0))
        capture.setblocking(False)
    packed = socket.inet_pton(family, host)
    skip = set(_ports(options.skip))
    tcp: dict[socket.socket, int] = {}
    ports = [p for p in _ports(options.tcp_ports) if p not in skip]
    if options.open:
        ports.append(options.open)
    for port in ports:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            s.close()
            raise OSError(err, f"connect to port {port}")
        tcp[s] = port
    udp = []
    for port in _ports(options.udp_ports):
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.connect((host, port))
        s.send(b"probe %d\n" % port)
        udp.append(s)
    deadline = time.monotonic() + options.wait
    arrived = {"open_port": 0, "other": 0}
    while time.monotonic() < deadline:
        if capture is None:
            time.sleep(0.05)
            continue
        select.select([capture], [], [], max(deadline - time.monotonic(), 0))
        while True:
            try:
                data, address = capture.recvfrom(65535)
            except BlockingIOError:
                break
            if address[2] == socket.PACKET_OUTGOING or not data:
                continue
            version = data[0] >> 4
            src = data[12:16] if version == 4 else data[8:24] if version == 6 else b""
            if src != packed:
                continue
            protocol, sport = _source_port(data)
            key = "open_port" if protocol == 6 and sport == options.open else "other"
            arrived[key] += 1
    tcp_result = {"connected": 0, "refused": 0, "pending": 0, "other": 0, "open_port": 0}
    poller = select.poll()
    for s in tcp:
        poller.register(s, select.POLLOUT)
    writable = {fd for fd, _ in poller.poll(0)}
    for s, port in tcp.items():
        if s.fileno() in writable:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            key = "connected" if err == 0 else "refused" if err == errno.ECONNREFUSED else "other"
        else:
            key = "pending"
        if port == options.open and key == "connected":
            key = "open_port"
        tcp_result[key] += 1
        s.close()
    udp_result = {"replies": 0, "refused": 0, "silent": 0}
    for s in udp:
        try:
            s.recv(65535)
            udp_result["replies"] += 1
        except BlockingIOError:
            udp_result["silent"] += 1
        except ConnectionRefusedError:
            udp_result["refused"] += 1
        s.close()
    if capture is not None:
        _, drops = struct.unpack("II", capture.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, 8))
        arrived["capture_drops"] = drops
        capture.close()
    emit(event="probe", tcp=tcp_result, udp=udp_result, arrived=arrived)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["sink", "source", "send", "fetch", "probe"])
    parser.add_argument("target", nargs="?", default="", help="HOST:PORT (HOST for probe)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--bytes", type=int, default=1 << 20)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--count", type=int, default=0, help="listeners: exit after N")
    parser.add_argument("--connect-timeout", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=120.0, help="hard bound, seconds")
    parser.add_argument("--tcp-ports", default="")
    parser.add_argument("--skip", default="")
    parser.add_argument("--udp-ports", default="")
    parser.add_argument("--open", type=int, default=0, help="probe: a port that must answer")
    parser.add_argument("--interface", default="")
    parser.add_argument("--wait", type=float, default=2.0)
    options = parser.parse_args(argv)
    if options.mode == "probe":
        _probe(options)
        emit(event="done")
        return 0
    if options.mode in ("sink", "source"):
        if not options.port:
            parser.error("--port is required")
        work = _serve(options)
    else:
        if not options.target:
            parser.error("HOST:PORT is required")
        work = _clients(options)

    async def bounded() -> None:
        await asyncio.wait_for(work, options.duration)

    try:
        asyncio.run(bounded())
    except TimeoutError:
        emit(event="timeout", seconds=options.duration)
        return 1
    emit(event="done")
    return 0


# =========================================================================== host side
#
# Everything below runs on the host (in the test or benchmark process), not in a namespace.


@dataclass(frozen=True)
class NodeIni:
    """The [node] keys the TCP tests set beyond netns.write_node_ini's."""

    mtu: int = 1420
    network: str = "userspace"
    peerapi_port: int | None = None
    funnel_ingress: bool = False
    keys: tuple[str, ...] = ()  # more [node] lines, "KEY = VALUE" (tcp-congestion = bbr)


def write_tcp_node_ini(
    workdir: Path,
    private_key: str,
    addresses: Sequence[str],
    peer_name: str,
    peer_public_key: str,
    peer_allowed_ips: Sequence[str],
    *,
    listen_port: int = 0,
    endpoint: str | None = None,
    extra: NodeIni = NodeIni(),
    filename: str = "node.ini",
) -> Path:
    """node.ini (one peer) with mtu, network, peerapi-port and funnel-ingress as asked."""
    key_file = h.write_secret(workdir / f"{filename}.key", private_key)
    lines = [
        "[node]",
        f"private-key-file = {key_file}",
        f"listen-port = {listen_port}",
        f"address = {', '.join(addresses)}",
        f"mtu = {extra.mtu}",
        f"network = {extra.network}",
    ]
    if extra.peerapi_port is not None:
        lines.append(f"peerapi-port = {extra.peerapi_port}")
    lines += extra.keys
    lines += [
        "",
        f"[peer {peer_name}]",
        f"public-key = {peer_public_key}",
        f"allowed-ips = {', '.join(peer_allowed_ips)}",
    ]
    if endpoint:
        lines.append(f"endpoint = {endpoint}")
    if extra.funnel_ingress:
        lines.append("funnel-ingress = yes")
    path = workdir / filename
    path.write_text("\n".join(lines) + "\n")
    return path


class KernelTool:
    """``python -m tests.interop.kernel_tcp ...`` in a namespace, read as JSON lines."""

    def __init__(self, ns: h.Namespace, workdir: Path, *args: str) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(h.REPO_ROOT), env.get("PYTHONPATH")]))
        self.stderr_path = workdir / f"kernel-tcp-{h.unique_suffix()}.stderr"
        self.args = args
        with open(self.stderr_path, "wb") as err:
            proc = ns.popen(
                [sys.executable, "-m", "tests.interop.kernel_tcp", *args],
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=str(h.REPO_ROOT),
                env=env,
            )
        # Reuse OurPeer's bounded JSON-lines reader: same output conventions.
        self.reader = h.OurPeer(proc, self.stderr_path)
        self.reader._start_reader()

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.reader.proc

    def wait_for(self, event: str, timeout: float) -> dict[str, Any]:
        return self.reader.wait_for(event, timeout)

    def finish(self, timeout: float) -> list[dict[str, Any]]:
        """Read to EOF (bounded); return all events. Raises if it does not exit in time."""
        code = self.reader.wait_exit(timeout)
        if code != 0:
            raise h.InteropError(f"kernel_tcp {self.args} exited {code}; {self.describe()}")
        return self.reader.events

    def of(self, event: str) -> list[dict[str, Any]]:
        return self.reader.of(event)

    def describe(self) -> str:
        return f"kernel_tcp {' '.join(self.args)}: {self.reader.describe()}"

    def kill(self) -> None:
        h.kill_group(self.proc, grace=1.0)


def kernel_tool(
    add_cleanup: h.AddCleanup, ns: h.Namespace, workdir: Path, *args: str
) -> KernelTool:
    tool = KernelTool(ns, workdir, *args)
    add_cleanup(tool.kill)
    return tool


def snapshot_ss(ns: h.Namespace) -> dict[str, int]:
    """TCP socket states in ``ns`` (``ss -tan``), counted by state."""
    out = ns.run(["ss", "-tanH"]).stdout
    states: dict[str, int] = {}
    for line in out.splitlines():
        fields = line.split()
        if fields:
            states[fields[0]] = states.get(fields[0], 0) + 1
    return states


if __name__ == "__main__":
    sys.exit(main())
