"""Bulk TCP over an emulated distance between two WireGuard ends in namespaces (issue 12).

Used by bench/tcp_wan.py and tests/interop/test_tcp_wan.py. A *pair* is two namespaces X and Y
joined by a veth, one WireGuard end in each (overlay 100.64.0.1 in X, 100.64.0.2 in Y):

- ``ours-linux``: X runs our userspace node overlay (funnel-tw's WireGuard and TCP/IP stack),
  Y wireguard-go with the Linux kernel's TCP on its TUN device;
- ``linux-linux``: wireguard-go and kernel TCP in both (the reference);
- ``ours-ours``: our overlay in both.

Between the WireGuard ends sits the seeded UDP impairment relay (``tests.interop.impair``, in
Y, between X's endpoint and Y's WireGuard port): RTT/2 of delay each way, and per path
``clean``, ``loss`` (0.5 % of the datagrams dropped each way) or ``reorder`` (3 % of them held
5 ms more, so the ones behind overtake them). A transfer is one connection: the receiver counts
what arrives in ``seconds`` from the first byte (slow start included), then resets it
(``tests.interop.wan_ends`` on both sides). Linux's TCP metrics cache is off in the namespaces
(``tcp_no_metrics_save``), so one transfer does not leave a small ssthresh for the next.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.interop import netns as h
from tests.interop import tcp_trace
from tests.interop.kernel_tcp import NodeIni, write_tcp_node_ini

X4, Y4 = "100.64.0.1", "100.64.0.2"
PORT_X, PORT_Y, RELAY_PORT, SINK_PORT = 51820, 51821, 51830, 5001
#: path -> (loss %, reordered %) each way
PATHS = {"clean": (0.0, 0.0), "loss": (0.5, 0.0), "reorder": (0.0, 3.0)}
REORDER_MS = 5.0
PAIRS = ("ours-linux", "linux-linux", "ours-ours", "pure-linux")
BOTH_WAYS = ("xy", "yx")  # a pair's directions: X sending to Y, then Y to X
#: ``pure``: our overlay with FUNNEL_TW_PURE_PYTHON=1 (no compiled fast path), for the side by
#: side with ``ours`` (docs/performance.md, "Compiled fast path")
PURE_ENV = {"FUNNEL_TW_PURE_PYTHON": "1"}


def mbit(nbytes: int, seconds: float) -> float:
    return nbytes * 8 / max(seconds, 1e-9) / 1e6


def socket_drops(ns: h.Namespace, port: int) -> int:
    """Datagrams the UDP sockets bound to ``port`` in ``ns`` dropped (``ss``: skmem d)."""
    out = ns.run(["ss", "-uamnH"]).stdout
    drops, ours = 0, False
    for line in out.splitlines():
        if "skmem:(" in line:
            if ours:
                m = re.search(r"\bd(\d+)", line.split("skmem:(", 1)[1])
                drops += int(m.group(1)) if m else 0
            continue
        fields = line.split()
        ours = len(fields) >= 4 and fields[3].rsplit(":", 1)[-1] == str(port)
    return drops


class End:
    """``tests.interop.wan_ends`` in a namespace: commands on stdin, JSON lines on stdout."""

    def __init__(
        self,
        add_cleanup: h.AddCleanup,
        ns: h.Namespace,
        work: Path,
        *args: str,
        env_extra: dict[str, str] | None = None,
    ) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(h.REPO_ROOT), env.get("PYTHONPATH")]))
        env.pop("FUNNEL_TW_TCP_TRACE", None)  # traces are switched on per transfer
        self.stderr_path = work / f"end-{h.unique_suffix()}.stderr"
        with open(self.stderr_path, "wb") as err:
            proc = ns.popen(
                [sys.executable, "-m", "tests.interop.wan_ends", *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=str(h.REPO_ROOT),
                env=env,
            )
        self.reader = h.OurPeer(proc, self.stderr_path)
        add_cleanup(self.reader.kill)
        self.reader._start_reader()

    def command(self, line: str) -> None:
        stdin = self.reader.proc.stdin
        assert stdin is not None
        try:
            stdin.write((line + "\n").encode())
            stdin.flush()
        except OSError as e:
            raise h.InteropError(f"end gone ({e}); {self.reader.describe()}") from e

    def wait_for(self, event: str, timeout: float) -> dict[str, Any]:
        return self.reader.wait_for(event, timeout)

    def wait_any(self, events: tuple[str, ...], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            ev = self.reader.next_event(deadline - time.monotonic())
            if ev is None:
                raise h.InteropError(f"end exited; {self.reader.describe()}")
            if ev.get("event") in events:
                return ev


@dataclass
class Side:
    ns: h.Namespace
    kind: str  # "ours" or "linux"
    addr: str
    wg_port: int
    pure: bool = False  # ours, without the compiled fast path
    end: End | None = None


@dataclass
class Setup:
    pair: str
    x: Side
    y: Side
    ip_y: str
    stack: contextlib.ExitStack


@dataclass
class Transfer:
    mbit: float
    result: dict[str, Any]
    sent: dict[str, Any]
    drops: int  # datagrams the receiving WireGuard socket dropped
    rcvbuf_errors: int  # UdpRcvbufErrors in the receiver's namespace
    trace: dict[str, Any] | None = None


@dataclass
class Cell:
    rtt: int
    path: str
    seed: int
    transfers: dict[tuple[str, str], Transfer] = field(default_factory=dict)
    failures: dict[tuple[str, str], str] = field(default_factory=dict)
    relay: dict[str, dict[str, Any]] = field(default_factory=dict)
    ping: dict[str, float] = field(default_factory=dict)  # pair -> RTT through the relay, s


class WanPairs:
    """Builds pairs (kept for the next cells, rebuilt after a failure) and runs cells on them.

    ``trace``: a folder for our senders' event logs (funnel_tw/netstack/trace.py), one file per
    transfer, ``<pair>-rtt<R>-<path>-<direction>.jsonl``; ``log``: progress lines;
    ``wg_rcvbuf``: when set, wireguard-go's UDP receive buffer in bytes (a diagnostic: see
    WireGuardGo.force_receive_buffer); ``linux_cc``: the Linux senders' congestion control
    (``TCP_CONGESTION`` on each socket: this machine defaults to BBR, Linux to CUBIC);
    ``node_keys``: more [node] lines for our ends ("tcp-congestion = bbr").
    """

    def __init__(
        self,
        stack: contextlib.ExitStack,
        seconds: float,
        *,
        mtu: int = 1420,
        trace: Path | None = None,
        log: Callable[[str], None] = lambda text: None,
        wg_rcvbuf: int = 0,
        linux_cc: str = "cubic",
        node_keys: tuple[str, ...] = (),
    ) -> None:
        self.seconds = seconds
        self.linux_cc = linux_cc
        self.node_keys = node_keys
        self.wg_rcvbuf = wg_rcvbuf
        self.mtu = mtu
        self.trace = trace
        self.log = log
        self.tmp = h.make_tempdir(stack.callback)
        self.subnet = 100
        self.setups: dict[str, Setup] = {}
        stack.callback(self.close)

    @classmethod
    def for_test(
        cls, add_cleanup: Callable[[Callable[[], None]], None], seconds: float, **options: Any
    ) -> WanPairs:
        """Pairs whose namespaces and processes a test's cleanup removes (``add_cleanup``:
        the test's ``addCleanup``); ``options`` as for the constructor."""
        stack = contextlib.ExitStack()
        add_cleanup(stack.close)
        return cls(stack, seconds, **options)

    def run_pairs(
        self, cell: Cell, pairs: tuple[str, ...], directions: tuple[str, ...] = BOTH_WAYS
    ) -> Cell:
        """``cell`` measured on each of ``pairs`` in turn, in ``directions``; the cell,
        filled."""
        for pair in pairs:
            self.run_cell(pair, cell, directions)
        return cell

    # ------------------------------------------------------------------ setup

    def setup(self, pair: str) -> Setup:
        """Namespaces, WireGuard ends and the sink/sender tools of ``pair``; kept for the
        next cells, torn down on failure (and at the end)."""
        if pair in self.setups:
            return self.setups[pair]
        stack = contextlib.ExitStack()
        try:
            built = self._build(pair, stack)
        except BaseException:
            stack.close()
            raise
        self.setups[pair] = built
        return built

    def close(self) -> None:
        for pair in list(self.setups):
            self.drop_setup(pair)

    def drop_setup(self, pair: str) -> None:
        built = self.setups.pop(pair, None)
        if built is not None:
            built.stack.close()

    def _build(self, pair: str, stack: contextlib.ExitStack) -> Setup:
        ends = pair.split("-")
        kind_x, kind_y = ("ours" if k in ("ours", "pure") else "linux" for k in ends)
        self.subnet = self.subnet % 250 + 1
        ip_x, ip_y = f"10.233.{self.subnet}.1", f"10.233.{self.subnet}.2"
        x_ns = h.Namespace("wx")
        stack.callback(x_ns.delete)
        y_ns = h.Namespace("wy")
        stack.callback(y_ns.delete)
        h.veth_pair(x_ns, y_ns, f"{ip_x}/24", f"{ip_y}/24")
        work = self.tmp / f"{pair}-{self.subnet}"
        work.mkdir()
        x = Side(x_ns, kind_x, X4, PORT_X, pure=ends[0] == "pure")
        y = Side(y_ns, kind_y, Y4, PORT_Y, pure=ends[1] == "pure")
        wgs: dict[str, h.WireGuardGo] = {}
        keys: dict[str, h.KeyPair] = {}
        for name, side in (("x", x), ("y", y)):
            side.ns.sysctl("net.ipv4.tcp_no_metrics_save", "1")
            if side.kind == "linux":
                wg = h.WireGuardGo(side.ns, work)
                stack.callback(wg.stop)
                wgs[name] = wg
                keys[name] = wg.keys
            else:
                keys[name] = h.gen_keypair()
        common = ["--port", str(SINK_PORT), "--seconds", str(self.seconds), "--duration", "3600"]
        for name, side, other, peer_key in (("x", x, y, keys["y"]), ("y", y, x, keys["x"])):
            # X sends first (and knows the relay); Y learns X's address (the relay's far
            # socket) from the first authenticated packet, as WireGuard roams
            endpoint = f"{ip_y}:{RELAY_PORT}" if name == "x" else None
            if side.kind == "linux":
                wg = wgs[name]
                wg.start()
                peer = h.WgPeer(peer_key.public, (f"{other.addr}/32",), endpoint)
                wg.configure(
                    side.wg_port, [peer], addresses=(f"{side.addr}/32",),
                    routes=(f"{other.addr}/32",),
                )  # fmt: skip
                side.ns.run(["ip", "link", "set", wg.name, "mtu", str(self.mtu)])
                if self.wg_rcvbuf:
                    sizes = wg.force_receive_buffer(self.wg_rcvbuf)
                    self.log(f"  wireguard-go in {name.upper()}: SO_RCVBUF {sizes}")
                side.end = End(
                    stack.callback, side.ns, work, "kernel", "--cc", self.linux_cc, *common
                )
            else:
                ini = write_tcp_node_ini(
                    work, keys[name].private, (f"{side.addr}/32",), "peer", peer_key.public,
                    (f"{other.addr}/32",), listen_port=side.wg_port, endpoint=endpoint,
                    extra=NodeIni(mtu=self.mtu, keys=self.node_keys), filename=f"{name}.ini",
                )  # fmt: skip
                side.end = End(
                    stack.callback, side.ns, work, "ours", "--config", str(ini), *common,
                    env_extra=PURE_ENV if side.pure else None,
                )  # fmt: skip
            side.end.wait_for("ready", 30)
        return Setup(pair, x, y, ip_y, stack)

    # ------------------------------------------------------------------ one cell of one pair

    def relay(self, setup: Setup, cell: Cell, stack: contextlib.ExitStack) -> h.OurPeer:
        loss, reorder = PATHS[cell.path]
        work = self.tmp / f"relay-{h.unique_suffix()}"
        work.mkdir()
        stderr_path = work / "impair.stderr"
        bound = 2 * (self.seconds + 60) + 30
        with open(stderr_path, "wb") as err:
            proc = setup.y.ns.popen(
                [sys.executable, "-m", "tests.interop.impair",
                 "--listen", f"{setup.ip_y}:{RELAY_PORT}", "--forward", f"127.0.0.1:{PORT_Y}",
                 "--seed", str(cell.seed), "--delay-ms", str(cell.rtt / 2),
                 "--loss-pct", str(loss), "--reorder-pct", str(reorder),
                 "--reorder-ms", str(REORDER_MS), "--duration", str(bound)],
                stdout=subprocess.PIPE, stderr=err, cwd=str(h.REPO_ROOT),
            )  # fmt: skip
        relay = h.OurPeer(proc, stderr_path)
        stack.callback(relay.kill)
        relay._start_reader()
        relay.wait_for("ready", 10)
        return relay

    def warm(self, setup: Setup) -> float:
        """X pings Y through the (new) relay: the handshake, and Y roams to the relay.
        Returns the round-trip time of the answered ping (seconds), after the handshake."""
        x = setup.x
        rtt = None
        for _ in range(10):
            if x.kind == "linux":
                out = h.ping(x.ns, setup.y.addr, count=1, wait=1)
                found = re.search(r"time=([\d.]+) ms", out.stdout)
                answer = float(found.group(1)) / 1000 if found else None
            else:
                assert x.end is not None
                x.end.command(f"ping {setup.y.addr}")
                pong = x.end.wait_any(("pong", "lost"), 20)
                answer = float(pong["rtt"]) if pong["event"] == "pong" else None
            if answer is not None and rtt is not None:
                return answer  # the second answer: no handshake in it
            rtt = answer
        raise h.InteropError("no ping answer through the relay")

    def transfer(self, setup: Setup, cell: Cell, direction: str) -> Transfer:
        sender, receiver = (setup.x, setup.y) if direction == "xy" else (setup.y, setup.x)
        assert sender.end is not None and receiver.end is not None
        drops = socket_drops(receiver.ns, receiver.wg_port)
        rcvbuf = receiver.ns.udp_snmp()["RcvbufErrors"]
        trace_path = None
        if self.trace is not None and sender.kind == "ours":
            name = f"{setup.pair}-rtt{cell.rtt}-{cell.path}-{direction}.jsonl"
            trace_path = self.trace.resolve() / name
            sender.end.command(f"trace {trace_path}")
            sender.end.wait_for("traced", 10)
        bound = self.seconds + 30
        sender.end.command(f"send {receiver.addr} {SINK_PORT} {bound}")
        result = receiver.end.wait_for("result", bound + 10)
        sent = sender.end.wait_for("sent", 20)
        summary = None
        if trace_path is not None:
            sender.end.command("trace -")
            sender.end.wait_for("traced", 10)
            summary = tcp_trace.summarize(trace_path)
        return Transfer(
            mbit=mbit(int(result["bytes"]), float(result["seconds"])),
            result=result,
            sent=sent,
            drops=socket_drops(receiver.ns, receiver.wg_port) - drops,
            rcvbuf_errors=receiver.ns.udp_snmp()["RcvbufErrors"] - rcvbuf,
            trace=summary,
        )

    def run_cell(self, pair: str, cell: Cell, directions: tuple[str, ...] = BOTH_WAYS) -> None:
        for attempt in (1, 2):
            try:
                setup = self.setup(pair)
                with contextlib.ExitStack() as stack:
                    relay = self.relay(setup, cell, stack)
                    cell.ping[pair] = self.warm(setup)
                    for direction in directions:
                        t = self.transfer(setup, cell, direction)
                        cell.transfers[(pair, direction)] = t
                        self.log(
                            f"  {pair} {direction}: {t.mbit:7.1f} Mbit/s  "
                            f"(drops at the receiving WireGuard socket: {t.drops})"
                        )
                    relay.stop(10)
                    stats = relay.of("stats")
                    if stats:
                        cell.relay[pair] = {"up": stats[-1]["up"], "down": stats[-1]["down"]}
                return
            except h.InteropError as e:
                self.log(f"  {pair}: attempt {attempt} failed: {str(e)[:1500]}")
                self.drop_setup(pair)
                if attempt == 2:
                    for direction in directions:
                        if (pair, direction) not in cell.transfers:
                            cell.failures[(pair, direction)] = str(e)[:300]
