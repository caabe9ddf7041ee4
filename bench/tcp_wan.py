"""TCP over distance: bulk throughput per direction, ours vs Linux, through an impaired path.

    sudo python bench/tcp_wan.py [--rtt 0,10,20,50,100] [--paths clean,loss,reorder]
        [--pairs ours-linux,linux-linux,ours-ours,funnel] [--funnel-rtt 0,10,20,50]
        [--seconds 4] [--seed 1] [--trace DIR] [--json FILE] [--budget 1800]

Root (network namespaces), not a test. Each pair is two namespaces X and Y joined by a veth,
one WireGuard end in each (MTU 1420, overlay 100.64.0.1 in X, 100.64.0.2 in Y):

- ``ours-linux``: X runs our userspace node overlay (funnel-tw's WireGuard and TCP/IP stack),
  Y wireguard-go with the Linux kernel's TCP on its TUN device;
- ``linux-linux``: wireguard-go and kernel TCP in both (the reference);
- ``ours-ours``: our overlay in both.

Between the WireGuard ends sits the seeded UDP impairment relay (``tests/interop/impair.py``,
in Y, between X's endpoint and Y's WireGuard port): RTT/2 of delay each way, and per path
``clean``, ``loss`` (0.5 % of the datagrams dropped each way) or ``reorder`` (3 % of them held
5 ms more, so the ones behind overtake them). Every pair of a cell gets the same relay seed,
so the n-th datagram meets the same fate whoever sends it. ``--seed`` repeats a run.

Each cell measures both directions, one connection at a time: the receiver counts the bytes
that arrive in ``--seconds`` from the first byte (slow start included) and then resets the
connection. Linux's TCP metrics cache is off in the namespaces (``tcp_no_metrics_save``), so
a lossy cell does not leave a small ssthresh for the next. ``funnel``: the download through the
whole funnel (curl -> relay -> WireGuard -> node -> Caddy backend, processes as in
bench/funnel.py) with the relay between relay and node, clean, at ``--funnel-rtt``.

Prints progress on stderr and, on stdout, Markdown tables: Mbit/s per direction and the
ratios ours/Linux, then what each sender saw (retransmissions, datagrams the receiving
WireGuard socket dropped, Linux's TCP_INFO, our sender's trace summary with ``--trace``).
With ``--trace DIR`` our senders write their event log (funnel_tw/netstack/trace.py) to
DIR/<pair>-rtt<R>-<path>-<direction>.jsonl, and the funnel's node to DIR/funnel-rtt<R>-*.jsonl.

Every wait is bounded; no cell starts after ``--budget`` seconds; namespaces, processes and
temporary files go away however the run ends (also on SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _tcp_trace
from tests.interop import netns as h
from tests.interop.kernel_tcp import NodeIni, write_tcp_node_ini

ENDS = Path(__file__).resolve().parent / "_wan_ends.py"
X4, Y4 = "100.64.0.1", "100.64.0.2"
PORT_X, PORT_Y, RELAY_PORT, SINK_PORT = 51820, 51821, 51830, 5001
#: path -> (loss %, reordered %) each way
PATHS = {"clean": (0.0, 0.0), "loss": (0.5, 0.0), "reorder": (0.0, 3.0)}
REORDER_MS = 5.0
PAIRS = ("ours-linux", "linux-linux", "ours-ours")
#: (pair, direction) -> column label; X->Y first
LABELS = {
    ("ours-linux", "xy"): "ours→Linux",
    ("ours-linux", "yx"): "Linux→ours",
    ("linux-linux", "xy"): "Linux→Linux",
    ("linux-linux", "yx"): "Linux→Linux (Y→X)",
    ("ours-ours", "xy"): "ours→ours",
    ("ours-ours", "yx"): "ours→ours (Y→X)",
}


def say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


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
    """bench/_wan_ends.py in a namespace: commands on stdin, JSON lines on stdout."""

    def __init__(self, add_cleanup: h.AddCleanup, ns: h.Namespace, work: Path, *args: str) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(h.REPO_ROOT), env.get("PYTHONPATH")]))
        env.pop("FUNNEL_TW_TCP_TRACE", None)  # traces are switched on per transfer
        self.stderr_path = work / f"end-{h.unique_suffix()}.stderr"
        with open(self.stderr_path, "wb") as err:
            proc = ns.popen(
                [sys.executable, str(ENDS), *args],
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


class WanBench:
    def __init__(self, stack: contextlib.ExitStack, options: argparse.Namespace) -> None:
        self.stack = stack
        self.options = options
        self.seconds: float = options.seconds
        self.tmp = h.make_tempdir(stack.callback)
        self.subnet = 100
        self.setups: dict[str, Setup] = {}

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
        kind_x, kind_y = ("ours" if k == "ours" else "linux" for k in pair.split("-"))
        self.subnet = self.subnet % 250 + 1
        ip_x, ip_y = f"10.233.{self.subnet}.1", f"10.233.{self.subnet}.2"
        x_ns = h.Namespace("wx")
        stack.callback(x_ns.delete)
        y_ns = h.Namespace("wy")
        stack.callback(y_ns.delete)
        h.veth_pair(x_ns, y_ns, f"{ip_x}/24", f"{ip_y}/24")
        work = self.tmp / f"{pair}-{self.subnet}"
        work.mkdir()
        x = Side(x_ns, kind_x, X4, PORT_X)
        y = Side(y_ns, kind_y, Y4, PORT_Y)
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
                side.ns.run(["ip", "link", "set", wg.name, "mtu", str(self.options.mtu)])
                side.end = End(stack.callback, side.ns, work, "kernel", *common)
            else:
                ini = write_tcp_node_ini(
                    work, keys[name].private, (f"{side.addr}/32",), "peer", peer_key.public,
                    (f"{other.addr}/32",), listen_port=side.wg_port, endpoint=endpoint,
                    extra=NodeIni(mtu=self.options.mtu), filename=f"{name}.ini",
                )  # fmt: skip
                side.end = End(stack.callback, side.ns, work, "ours", "--config", str(ini), *common)
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

    def warm(self, setup: Setup) -> None:
        """X pings Y through the (new) relay: the handshake, and Y roams to the relay."""
        x = setup.x
        if x.kind == "linux":
            for _ in range(10):
                if h.ping_received(h.ping(x.ns, setup.y.addr, count=1, wait=1)):
                    return
            raise h.InteropError("no ping answer through the relay")
        assert x.end is not None
        x.end.command(f"ping {setup.y.addr}")
        if x.end.wait_any(("pong", "lost"), 20)["event"] != "pong":
            raise h.InteropError("no ping answer through the relay")

    def transfer(self, setup: Setup, cell: Cell, direction: str) -> Transfer:
        sender, receiver = (setup.x, setup.y) if direction == "xy" else (setup.y, setup.x)
        assert sender.end is not None and receiver.end is not None
        drops = socket_drops(receiver.ns, receiver.wg_port)
        rcvbuf = receiver.ns.udp_snmp()["RcvbufErrors"]
        trace_path = None
        if self.options.trace and sender.kind == "ours":
            name = f"{setup.pair}-rtt{cell.rtt}-{cell.path}-{direction}.jsonl"
            trace_path = Path(self.options.trace).resolve() / name
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
            summary = _tcp_trace.summarize(trace_path)
        return Transfer(
            mbit=mbit(int(result["bytes"]), float(result["seconds"])),
            result=result,
            sent=sent,
            drops=socket_drops(receiver.ns, receiver.wg_port) - drops,
            rcvbuf_errors=receiver.ns.udp_snmp()["RcvbufErrors"] - rcvbuf,
            trace=summary,
        )

    def run_cell(self, pair: str, cell: Cell) -> None:
        for attempt in (1, 2):
            try:
                setup = self.setup(pair)
                with contextlib.ExitStack() as stack:
                    relay = self.relay(setup, cell, stack)
                    self.warm(setup)
                    for direction in ("xy", "yx"):
                        t = self.transfer(setup, cell, direction)
                        cell.transfers[(pair, direction)] = t
                        say(
                            f"  {pair} {direction}: {t.mbit:7.1f} Mbit/s  "
                            f"(drops at the receiving WireGuard socket: {t.drops})"
                        )
                    relay.stop(10)
                    stats = relay.of("stats")
                    if stats:
                        cell.relay[pair] = {"up": stats[-1]["up"], "down": stats[-1]["down"]}
                return
            except h.InteropError as e:
                say(f"  {pair}: attempt {attempt} failed: {str(e)[:1500]}")
                self.drop_setup(pair)
                if attempt == 2:
                    for direction in ("xy", "yx"):
                        if (pair, direction) not in cell.transfers:
                            cell.failures[(pair, direction)] = str(e)[:300]


# ====================================================================== the funnel download


def funnel_downloads(
    stack: contextlib.ExitStack, options: argparse.Namespace, rtts: list[int], started: float
) -> dict[int, list[float]]:
    """MB/s of curl downloads through relay -> WireGuard (impaired) -> node -> Caddy."""
    from bench import funnel as fb

    for tool in ("caddy", "curl"):
        if shutil.which(tool) is None:
            say(f"funnel: {tool} not installed: skipped")
            return {}
    folder = Path(stack.enter_context(_tempdir()))
    size_mib = int(min(max(80 * options.seconds, 64), 1024))
    base = fb.Bench(stack, folder, argparse.Namespace(size_mib=size_mib))
    backend = base.start_backend()
    results: dict[int, list[float]] = {}
    for rtt in rtts:
        if time.monotonic() - started > options.budget:
            say(f"funnel {rtt} ms: skipped, time budget spent")
            continue
        with contextlib.ExitStack() as inner:
            try:
                results[rtt] = _funnel_at(inner, folder / f"rtt{rtt}", backend, rtt, options)
            except (RuntimeError, h.InteropError, subprocess.SubprocessError, ValueError) as e:
                say(f"funnel {rtt} ms: FAILED: {str(e)[:1500]}")
        say(f"funnel {rtt} ms: {results.get(rtt)} MB/s")
    return results


@contextlib.contextmanager
def _tempdir() -> Any:
    import tempfile

    path = tempfile.mkdtemp(prefix="ftw-wan-funnel-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _funnel_at(
    stack: contextlib.ExitStack, folder: Path, backend: int, rtt: int, options: argparse.Namespace
) -> list[float]:
    from bench import funnel as fb
    from funnel_tw.demo import HOSTNAME, write_configs

    cfg = folder / "cfg"
    relay_ini, node_ini, public = write_configs(cfg, backend)
    found = re.search(r"listen-port = (\d+)", relay_ini.read_text())
    if found is None:
        raise RuntimeError("no listen-port in the demo relay.ini")
    relay_wg = int(found.group(1))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        impair_port = int(probe.getsockname()[1])
    text = node_ini.read_text()
    node_ini.write_text(
        text.replace(f"endpoint = 127.0.0.1:{relay_wg}", f"endpoint = 127.0.0.1:{impair_port}")
    )
    bench = fb.Bench(stack, folder, argparse.Namespace())
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(h.REPO_ROOT), env.get("PYTHONPATH")]))
    env.pop("FUNNEL_TW_TCP_TRACE", None)
    bench.spawn(
        "impair",
        [sys.executable, "-m", "tests.interop.impair", "--listen", f"127.0.0.1:{impair_port}",
         "--forward", f"127.0.0.1:{relay_wg}", "--seed", str(options.seed),
         "--delay-ms", str(rtt / 2), "--duration", "300"],
        h.REPO_ROOT, env,
    )  # fmt: skip
    fb.wait_for(lambda: '"ready"' in bench.log_text("impair"), "the impairment relay", 10)
    node_env = dict(env)
    if options.trace:
        path = Path(options.trace).resolve() / f"funnel-rtt{rtt}-node-%p.jsonl"
        node_env["FUNNEL_TW_TCP_TRACE"] = str(path)
    bench.spawn("relay", [*fb.TWISTD, "funnel-relay", "--config", str(relay_ini)], cfg, env)
    bench.spawn("node", [*fb.TWISTD, "funnel", "--config", str(node_ini)], cfg, node_env)
    handshake = re.compile(r"handshake with .* complete")
    fb.wait_for(
        lambda: (
            bench.alive("relay")
            and bench.alive("node")
            and bool(handshake.search(bench.log_text("node")))
            and bool(handshake.search(bench.log_text("relay")))
        ),
        "the WireGuard handshake through the impairment relay",
        30,
    )
    ca = cfg / "state" / "tls" / "ca.pem"
    fb.wait_for(lambda: ca.exists() and fb.port_open(public), "the node's CA and the relay", 15)
    rates = []
    for _ in range(options.funnel_runs):
        argv = ["curl", "-sS", "--http1.1", "-o", "/dev/null", "--max-time"]
        argv += [str(options.seconds + 2), "--cacert", str(ca)]
        argv += ["--resolve", f"{HOSTNAME}:{public}:127.0.0.1"]
        argv += ["-w", "%{http_code} %{size_download} %{time_total} %{time_starttransfer}"]
        out = subprocess.run(
            [*argv, f"https://{HOSTNAME}:{public}/big.bin"],
            capture_output=True, text=True, timeout=options.seconds + 30,
        )  # fmt: skip
        status, size, total, first = out.stdout.split()
        if status != "200":
            raise RuntimeError(f"download: HTTP {status}: {out.stderr.strip()}")
        rates.append(int(size) / max(float(total) - float(first), 1e-9) / 1e6)
    return rates


# ====================================================================== the report


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "—"


def report(cells: list[Cell], funnel: dict[int, list[float]], options: argparse.Namespace) -> None:
    out: list[str] = []
    out.append(
        f"### Bulk TCP through the relay, Mbit/s ({options.seconds:g} s a transfer, seed "
        f"{options.seed}, MTU {options.mtu})"
    )
    out.append("")
    out.append(
        "| RTT ms | path | ours→Linux | Linux→ours | ours/Linux | Linux→Linux | "
        "Linux→Linux (Y→X) | ours→Linux ÷ Linux→Linux | ours→ours | ours→ours (Y→X) |"
    )
    out.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")

    for cell in cells:

        def rate(pair: str, direction: str, cell: Cell = cell) -> float | None:
            t = cell.transfers.get((pair, direction))
            return None if t is None else t.mbit

        def show(pair: str, direction: str, cell: Cell = cell) -> str:
            if (pair, direction) in cell.failures:
                return "failed"
            return fmt(rate(pair, direction))

        ol, lo = rate("ours-linux", "xy"), rate("ours-linux", "yx")
        ll = rate("linux-linux", "xy")
        out.append(
            f"| {cell.rtt} | {cell.path} | {show('ours-linux', 'xy')} | "
            f"{show('ours-linux', 'yx')} | {ratio(ol, lo)} | {show('linux-linux', 'xy')} | "
            f"{show('linux-linux', 'yx')} | {ratio(ol, ll)} | {show('ours-ours', 'xy')} | "
            f"{show('ours-ours', 'yx')} |"
        )
    out.append("")
    out.append(
        "ours/Linux: our TCP sending ÷ Linux sending on the same pair and path (the issue's "
        "ratio). ours→Linux ÷ Linux→Linux: the same receiver (wireguard-go + kernel), only the "
        "sender differs."
    )
    out.append("")
    out.append("### What the senders saw")
    out.append("")
    out.append(
        "| RTT ms | path | direction | Mbit/s | sender retransmits | receiving WG socket drops "
        "| relay lost / reordered | sender's own view |"
    )
    out.append("|---:|---|---|---:|---:|---:|---|---|")
    for cell in cells:
        for (pair, direction), t in cell.transfers.items():
            relay = cell.relay.get(pair, {})
            up, down = relay.get("up", {}), relay.get("down", {})
            relay_text = (
                f"{up.get('lost', 0) + down.get('lost', 0)} / "
                f"{up.get('reordered', 0) + down.get('reordered', 0)}"
                if relay
                else "—"
            )
            info = t.sent.get("info", {})
            if "total_retrans" in info:
                retrans = info["total_retrans"]
                busy = max(info.get("busy_time_us", 0), 1)
                view = (
                    f"Linux: cwnd {info.get('snd_cwnd')} seg, rtt "
                    f"{info.get('rtt_us', 0) / 1000:.1f} ms, rwnd-limited "
                    f"{info.get('rwnd_limited_us', 0) / busy:.0%}, "
                    f"sndbuf-limited {info.get('sndbuf_limited_us', 0) / busy:.0%}, reord_seen "
                    f"{info.get('reord_seen')}, dsack_dups {info.get('dsack_dups')}"
                )
            else:
                retrans = info.get("tcp_retransmitted_segments", 0)
                view = (
                    f"ours: rto {info.get('tcp_rto', 0)}, fast retransmits "
                    f"{info.get('tcp_fast_retransmits', 0)}"
                )
                if t.trace and t.trace.get("records"):
                    s = t.trace
                    held = ", ".join(f"{k} {v:.0%}" for k, v in s["held_by"].items())
                    view += (
                        f"; trace: held by {held}; cwnd median {s['cwnd_segments']['median']}"
                        f" seg; srtt {s['srtt_ms']['median']} ms; recoveries "
                        f"{s['recovery_episodes']}, collapses {s['cwnd_collapses']}, D-SACKs "
                        f"{s['dsacks']}; {s['segments_per_burst']} seg/burst (max "
                        f"{s['burst_max']})"
                    )
            out.append(
                f"| {cell.rtt} | {cell.path} | {LABELS[(pair, direction)]} | {t.mbit:.1f} | "
                f"{retrans} | {t.drops} | {relay_text} | {view} |"
            )
        for (pair, direction), why in cell.failures.items():
            out.append(
                f"| {cell.rtt} | {cell.path} | {LABELS[(pair, direction)]} | failed | | | | "
                f"{why.splitlines()[0][:160]} |"
            )
    if funnel:
        base = max(funnel.get(0) or [0.0]) or None
        out.append("")
        out.append("### Funnel download (curl → relay → WireGuard → node → Caddy), clean path")
        out.append("")
        out.append("| RTT ms | MB/s (best) | runs | ÷ 0 ms |")
        out.append("|---:|---:|---|---:|")
        for rtt, rates in sorted(funnel.items()):
            best = max(rates) if rates else None
            runs = ", ".join(f"{r:.1f}" for r in rates)
            out.append(f"| {rtt} | {fmt(best)} | {runs} | {ratio(best, base)} |")
    print("\n".join(out), flush=True)


def as_json(cells: list[Cell], funnel: dict[int, list[float]]) -> dict[str, Any]:
    return {
        "cells": [
            {
                "rtt": c.rtt,
                "path": c.path,
                "seed": c.seed,
                "relay": c.relay,
                "failures": {f"{p} {d}": w for (p, d), w in c.failures.items()},
                "transfers": {
                    f"{p} {d}": {
                        "mbit": t.mbit,
                        "result": t.result,
                        "sent": t.sent,
                        "drops": t.drops,
                        "rcvbuf_errors": t.rcvbuf_errors,
                        "trace": t.trace,
                    }
                    for (p, d), t in c.transfers.items()
                },
            }
            for c in cells
        ],
        "funnel": funnel,
    }


def numbers(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rtt", default="0,10,20,50,100", help="round-trip times, ms")
    parser.add_argument("--paths", default="clean,loss,reorder")
    parser.add_argument("--pairs", default="ours-linux,linux-linux,ours-ours,funnel")
    parser.add_argument("--funnel-rtt", default="0,10,20,50", help="ms, for the funnel pair")
    parser.add_argument("--funnel-runs", type=int, default=2, help="downloads per RTT (best)")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured per transfer")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mtu", type=int, default=1420)
    parser.add_argument("--trace", default="", help="folder for our senders' event logs")
    parser.add_argument("--json", default="", help="also write every figure here")
    parser.add_argument("--budget", type=float, default=1800.0, help="no cell starts after")
    options = parser.parse_args()
    rtts, funnel_rtts = numbers(options.rtt), numbers(options.funnel_rtt)
    paths = [p for p in options.paths.split(",") if p]
    pairs = [p for p in options.pairs.split(",") if p]
    unknown = [p for p in paths if p not in PATHS] + [
        p for p in pairs if p not in (*PAIRS, "funnel")
    ]
    if unknown:
        parser.error(f"unknown path or pair: {', '.join(unknown)}")
    reason = h.interop_unavailable_reason()
    if reason is not None:
        say(f"cannot run: {reason}")
        return 2
    if options.trace:
        Path(options.trace).mkdir(parents=True, exist_ok=True)

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds the ExitStacks: everything is cleaned up

    signal.signal(signal.SIGTERM, terminate)
    from bench.funnel import quiet_check

    say(quiet_check())
    started = time.monotonic()
    cells: list[Cell] = []
    funnel: dict[int, list[float]] = {}
    with contextlib.ExitStack() as stack:
        bench = WanBench(stack, options)
        stack.callback(bench.close)
        bulk_pairs = [p for p in PAIRS if p in pairs]
        for i, rtt in enumerate(rtts):
            for j, path in enumerate(paths):
                if not bulk_pairs:
                    break
                cell = Cell(rtt, path, options.seed * 1000 + i * 10 + j)
                cells.append(cell)
                for pair in bulk_pairs:
                    if time.monotonic() - started > options.budget:
                        cell.failures[(pair, "xy")] = "skipped: time budget spent"
                        continue
                    say(f"RTT {rtt} ms, {path}, {pair} (seed {cell.seed}):")
                    bench.run_cell(pair, cell)
        bench.close()
        if "funnel" in pairs and funnel_rtts:
            funnel = funnel_downloads(stack, options, funnel_rtts, started)
    report(cells, funnel, options)
    if options.json:
        Path(options.json).write_text(json.dumps(as_json(cells, funnel), indent=1))
    say(f"total {time.monotonic() - started:.0f} s; namespaces and processes cleaned up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
