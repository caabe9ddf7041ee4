"""TCP over distance: bulk throughput per direction, ours vs Linux, through an impaired path.

    sudo python bench/tcp_wan.py [--rtt 0,10,20,50,100] [--paths clean,loss,reorder]
        [--pairs ours-linux,linux-linux,ours-ours,funnel] [--funnel-rtt 0,10,20,50]
        [--seconds 4] [--seed 1] [--trace DIR] [--json FILE] [--budget 1800] [--wg-rcvbuf-mib 7]
        [--linux-cc cubic]
        [--relay-set KEY=VALUE ...] [--node-set KEY=VALUE ...]

Root (network namespaces), not a test. Each pair is two namespaces with one WireGuard end
in each, MTU 1420, and the seeded UDP impairment relay between them (tests/interop/wan.py):

- ``ours-linux``: our userspace node overlay (funnel-tw's WireGuard and TCP/IP stack) in X,
  wireguard-go with the Linux kernel's TCP in Y;
- ``linux-linux``: wireguard-go and kernel TCP on both ends (the reference);
- ``ours-ours``: our overlay on both ends;
- ``pure-linux``: as ``ours-linux`` with ``FUNNEL_TW_PURE_PYTHON=1`` on our end, so without
  the compiled checksum (not in the default ``--pairs``; run it beside ``ours-linux`` to see
  what the C extension is worth).

The relay adds RTT/2 each way, and per path: ``clean``; ``loss``, 0.5 % of the datagrams
dropped each way; ``reorder``, 3 % of them held 5 ms more, so the ones behind overtake them.
Every pair of a cell gets the same relay seed, so the n-th datagram meets the same fate
whoever sends it; ``--seed`` repeats a run. Each cell measures both directions, one connection
at a time: the receiver counts what arrives in ``--seconds`` from the first byte (slow start
included), then resets the connection.

``--linux-cc NAME``: the congestion control of the Linux ends' sockets (``TCP_CONGESTION``;
a namespace may not pick one outside the host's ``tcp_allowed_congestion_control``). Default
``cubic``, Linux's own default; the machine these figures come from defaults to ``bbr``, and
every table before 2026-12-07 (evening) in docs/netstack.md was taken with it.

``--wg-rcvbuf-mib N``: give wireguard-go's UDP socket an N MiB receive buffer, as wireguard-go
itself asks for 7 MiB since 0.0.20230223 (Debian's 0.0.20220316 keeps the kernel's 208 KiB,
where every sender meets drops): to compare the senders without those drops.

``funnel``: the download through the whole funnel (curl -> relay -> WireGuard -> node -> Caddy
backend, the processes of bench/funnel.py) with the impairment relay between relay and node,
clean, at ``--funnel-rtt``; best of ``--funnel-runs`` curl runs of ``--seconds``, each on a new
connection (so with the handshakes before and slow start in it; the first on a path nothing is
known of, the later ones resuming from what the one before learned, as Careful Resume does
unless ``--node-set tcp-path-memory=off``), then a *warm* figure: the same
download again on the connection a first one opened, best of ``--funnel-runs`` (what a path's
distance costs once a connection is open).
``--relay-set``/``--node-set KEY=VALUE`` add a key to the demo relay.ini's ``[relay]`` or
node.ini's ``[node]`` (``tcp-receive-buffer-max=16M``...), to try a setting on that path.

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
import dataclasses
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.interop import netns as h
from tests.interop.wan import PAIRS, PATHS, Cell, WanPairs

LABELS = {
    ("ours-linux", "xy"): "ours→Linux",
    ("ours-linux", "yx"): "Linux→ours",
    ("linux-linux", "xy"): "Linux→Linux",
    ("linux-linux", "yx"): "Linux→Linux (Y→X)",
    ("ours-ours", "xy"): "ours→ours",
    ("ours-ours", "yx"): "ours→ours (Y→X)",
    ("pure-linux", "xy"): "ours (pure Python)→Linux",
    ("pure-linux", "yx"): "Linux→ours (pure Python)",
}

# what our receiving stack counted during a transfer (shown when not zero)
RECEIVER_COUNTERS = (
    "tcp_paws_drops",
    "tcp_ooo_overflow",
    "tcp_dsack_sent",
    "tcp_out_of_window",
    "tcp_zero_window_drops",
    "tcp_rcvbuf_grown",
)


def say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# ====================================================================== the funnel download


@dataclasses.dataclass
class FunnelFigures:
    """The downloads at one RTT: MB/s per run, CPU ms per MB moved per process, and the best
    of the downloads after the first over one connection (MB/s; None if it failed)."""

    rates: list[float]
    cpu_ms_per_mb: dict[str, float]
    warm: float | None = None


CPU_PROCESSES = ("relay", "node", "impair", "backend", "curl")


def funnel_downloads(
    stack: contextlib.ExitStack, options: argparse.Namespace, rtts: list[int], started: float
) -> dict[int, FunnelFigures]:
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
    results: dict[int, FunnelFigures] = {}
    for rtt in rtts:
        if time.monotonic() - started > options.budget:
            say(f"funnel {rtt} ms: skipped, time budget spent")
            continue
        with contextlib.ExitStack() as inner:
            try:
                results[rtt] = _funnel_at(inner, folder / f"rtt{rtt}", base, backend, rtt, options)
            except (RuntimeError, h.InteropError, subprocess.SubprocessError, ValueError) as e:
                say(f"funnel {rtt} ms: FAILED: {str(e)[:1500]}")
        say(f"funnel {rtt} ms: {results.get(rtt)}")
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
    stack: contextlib.ExitStack,
    folder: Path,
    base: Any,
    backend: int,
    rtt: int,
    options: argparse.Namespace,
) -> FunnelFigures:
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
        _with_keys(
            text.replace(f"endpoint = 127.0.0.1:{relay_wg}", f"endpoint = 127.0.0.1:{impair_port}"),
            "[node]",
            options.node_set,
        )
    )
    relay_ini.write_text(_with_keys(relay_ini.read_text(), "[relay]", options.relay_set))
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
    moved = 0
    cpu = dict.fromkeys(CPU_PROCESSES, 0.0)

    def cpu_now() -> dict[str, float]:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # curl, once it was reaped
        return {
            "relay": bench.cpu_seconds("relay"),
            "node": bench.cpu_seconds("node"),
            "impair": bench.cpu_seconds("impair"),
            "backend": base.cpu_seconds("backend"),
            "curl": children.ru_utime + children.ru_stime,
        }

    url = f"https://{HOSTNAME}:{public}/big.bin"

    def download(times: int) -> list[tuple[int, float]]:
        """curl fetching ``url`` ``times`` times over one connection: (bytes, MB/s) each,
        the rate from the first byte of the answer to its end."""
        argv = ["curl", "-sS", "--http1.1", "--max-time", str(times * (options.seconds + 2))]
        argv += ["--cacert", str(ca), "--resolve", f"{HOSTNAME}:{public}:127.0.0.1"]
        argv += ["-w", "%{http_code} %{size_download} %{time_total} %{time_starttransfer}\\n"]
        for _ in range(times):
            argv += ["-o", "/dev/null", url]
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=times * (options.seconds + 30)
        )
        found = []
        for line in out.stdout.splitlines():
            status, size, total, first = line.split()
            if status != "200":
                raise RuntimeError(f"download: HTTP {status}: {out.stderr.strip()}")
            found.append((int(size), int(size) / max(float(total) - float(first), 1e-9) / 1e6))
        if len(found) != times:
            raise RuntimeError(f"download: {len(found)} of {times}: {out.stderr.strip()}")
        return found

    for _ in range(options.funnel_runs):
        before = cpu_now()
        ((size, rate),) = download(1)
        after = cpu_now()
        rates.append(rate)
        moved += size
        for name in CPU_PROCESSES:
            cpu[name] += after[name] - before[name]
    per_mb = {name: 1000 * seconds / max(moved / 1e6, 1e-9) for name, seconds in cpu.items()}
    # the same download again on the connection the first one opened: no handshake, no slow
    # start (the relay's connection to the node is the public connection's), so what is left
    # of the path's cost once a connection is warm
    warm: float | None = None
    try:
        warm = max(rate for _, rate in download(options.funnel_runs + 1)[1:])
    except (RuntimeError, ValueError, subprocess.SubprocessError) as e:
        say(f"funnel {rtt} ms: the warm download failed: {str(e)[:300]}")
    return FunnelFigures(rates, per_mb, warm)


def _with_keys(text: str, section: str, settings: list[str]) -> str:
    """``text`` (an ini) with ``KEY=VALUE`` settings added at the top of ``section``."""
    lines = [f"{k.strip()} = {v.strip()}" for k, _, v in (s.partition("=") for s in settings)]
    if not lines:
        return text
    if section not in text:
        raise ValueError(f"no {section} section to add {settings} to")
    return text.replace(section + "\n", "\n".join([section, *lines, ""]), 1)


# ====================================================================== the report


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "—"


def rate_of(cell: Cell, pair: str, direction: str) -> float | None:
    t = cell.transfers.get((pair, direction))
    return None if t is None else t.mbit


def report(
    cells: list[Cell], funnel: dict[int, FunnelFigures], options: argparse.Namespace
) -> None:
    out: list[str] = []
    out.append(
        f"### Bulk TCP through the relay, Mbit/s ({options.seconds:g} s a transfer, seed "
        f"{options.seed}, MTU {options.mtu}, Linux's TCP: {options.linux_cc}"
        f"{', our node: ' + ', '.join(options.node_set) if options.node_set else ''})"
    )
    out.append("")
    out.append(
        "| RTT ms | path | ours→Linux | Linux→ours | ours/Linux | Linux→Linux | "
        "Linux→Linux (Y→X) | ours→Linux ÷ Linux→Linux | ours→ours | ours→ours (Y→X) |"
    )
    out.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")

    for cell in cells:

        def show(pair: str, direction: str, cell: Cell = cell) -> str:
            if (pair, direction) in cell.failures:
                return "failed"
            return fmt(rate_of(cell, pair, direction))

        ol, lo = rate_of(cell, "ours-linux", "xy"), rate_of(cell, "ours-linux", "yx")
        ll = rate_of(cell, "linux-linux", "xy")
        out.append(
            f"| {cell.rtt} | {cell.path} | {show('ours-linux', 'xy')} | "
            f"{show('ours-linux', 'yx')} | {ratio(ol, lo)} | {show('linux-linux', 'xy')} | "
            f"{show('linux-linux', 'yx')} | {ratio(ol, ll)} | {show('ours-ours', 'xy')} | "
            f"{show('ours-ours', 'yx')} |"
        )
    pure = [c for c in cells if any(p == "pure-linux" for p, _ in c.transfers)]
    if pure:
        out.append("")
        out.append("Without the compiled fast path (FUNNEL_TW_PURE_PYTHON=1 on our end):")
        out.append("")
        out.append(
            "| RTT ms | path | ours→Linux C | pure Python | C ÷ pure | Linux→ours C | pure |"
        )
        out.append("|---:|---|---:|---:|---:|---:|---:|")
        for cell in pure:
            c_up, py_up = rate_of(cell, "ours-linux", "xy"), rate_of(cell, "pure-linux", "xy")
            c_down, py_down = rate_of(cell, "ours-linux", "yx"), rate_of(cell, "pure-linux", "yx")
            out.append(
                f"| {cell.rtt} | {cell.path} | {fmt(c_up)} | {fmt(py_up)} | "
                f"{ratio(c_up, py_up)} | {fmt(c_down)} | {fmt(py_down)} |"
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
        "| relay lost / reordered (both transfers of the pair) | sender's own view |"
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
            received = t.result.get("counters") or {}
            shown = [k for k in RECEIVER_COUNTERS if received.get(k)]
            shown += sorted(k for k, v in received.items() if k.startswith("drop") and v)
            if shown:
                view += "; our receiver: " + ", ".join(f"{k} {received[k]}" for k in shown)
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
        zero = funnel.get(0)
        base = max(zero.rates) if zero and zero.rates else None
        first_base = zero.rates[0] if zero and zero.rates else None
        out.append("")
        out.append("### Funnel download (curl → relay → WireGuard → node → Caddy), clean path")
        out.append("")
        warm_base = zero.warm if zero else None
        names = " | ".join(CPU_PROCESSES)
        out.append(
            f"| RTT ms | MB/s (best) | runs | ÷ 0 ms | first ÷ 0 ms first | warm MB/s"
            f" | ÷ 0 ms warm | CPU ms per MB: {names} |"
        )
        out.append("|---:|---:|---|---:|---:|---:|---:|" + "---:|" * len(CPU_PROCESSES))
        for rtt, figures in sorted(funnel.items()):
            best = max(figures.rates) if figures.rates else None
            runs = ", ".join(f"{r:.1f}" for r in figures.rates)
            cpu = " | ".join(f"{figures.cpu_ms_per_mb[n]:.2f}" for n in CPU_PROCESSES)
            first = figures.rates[0] if figures.rates else None
            out.append(
                f"| {rtt} | {fmt(best)} | {runs} | {ratio(best, base)}"
                f" | {ratio(first, first_base)} | {fmt(figures.warm)}"
                f" | {ratio(figures.warm, warm_base)} | {cpu} |"
            )
        out.append("")
        out.append(
            "warm: the best of the downloads after the first on one connection (one curl,"
            " --funnel-runs + 1 transfers): no handshakes, no slow start. first: the first"
            " download after the daemons started, a path nothing is known of; each later run"
            " is a new connection that starts from what the one before learned of the path"
            " (tcp-path-memory, Careful Resume), unless the node is set tcp-path-memory=off."
        )
        if options.relay_set or options.node_set:
            out.append("")
            out.append(
                f"Set for the funnel: relay {options.relay_set or 'defaults'}, "
                f"node {options.node_set or 'defaults'}."
            )
    print("\n".join(out), flush=True)


def as_json(cells: list[Cell], funnel: dict[int, FunnelFigures]) -> dict[str, Any]:
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
        "funnel": {rtt: dataclasses.asdict(f) for rtt, f in funnel.items()},
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
    parser.add_argument(
        "--wg-rcvbuf-mib",
        type=int,
        default=0,
        help="give wireguard-go's UDP socket this receive buffer, as wireguard-go releases "
        "since 2023 do themselves (7); default: Debian's wireguard-go as it is (208 KiB)",
    )
    parser.add_argument(
        "--linux-cc",
        default="cubic",
        help="the congestion control of the Linux ends' TCP, set per socket (TCP_CONGESTION): "
        "cubic (Linux's default), bbr, reno",
    )
    parser.add_argument(
        "--relay-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="funnel: add this key to the demo relay.ini's [relay] section (repeatable)",
    )
    parser.add_argument(
        "--node-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="add this key to the [node] section of our ends (ours-linux, ours-ours) and of "
        "the funnel's node.ini (repeatable): --node-set tcp-congestion=bbr",
    )
    options = parser.parse_args()
    bad = [s for s in options.relay_set + options.node_set if "=" not in s]
    if bad:
        parser.error(f"not KEY=VALUE: {', '.join(bad)}")
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
    funnel: dict[int, FunnelFigures] = {}
    with contextlib.ExitStack() as stack:
        trace = Path(options.trace) if options.trace else None
        bench = WanPairs(
            stack,
            options.seconds,
            mtu=options.mtu,
            trace=trace,
            log=say,
            wg_rcvbuf=options.wg_rcvbuf_mib << 20,
            linux_cc=options.linux_cc,
            node_keys=tuple(s.replace("=", " = ", 1) for s in options.node_set),
        )
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
