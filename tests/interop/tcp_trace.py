"""Summaries of the TCP sender event log (funnel_tw/netstack/trace.py).

    python -m tests.interop.tcp_trace TRACE.jsonl [...]     # one summary per file, as JSON

The busiest connection of a file (most ``ack`` records) is the one summarized: how long the
sender was held back by its congestion window, by the peer's window or by the application
(time-weighted), the congestion window and RTT it ran with, loss recovery episodes, RTOs,
retransmissions, the D-SACKs the peer sent (each one a retransmission that was not needed),
cwnd collapses, and how bursty the output was (segments per output call).
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
from pathlib import Path
from typing import Any


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def _dsacks(record: dict[str, Any]) -> int:
    """RFC 2883: the first block is a D-SACK if it lies at or below the cumulative ACK, or
    inside the second block."""
    blocks = record.get("sack") or []
    if not blocks:
        return 0
    left, right = blocks[0]
    if right <= record["ack"]:
        return 1
    if len(blocks) > 1 and blocks[1][0] <= left and right <= blocks[1][1]:
        return 1
    return 0


def summarize(path: Path) -> dict[str, Any]:
    flows: dict[str, list[dict[str, Any]]] = {}
    mss: dict[str, int] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("ev") == "flow":
            mss[record["c"]] = record["mss"]
        elif record.get("ev") in ("ack", "timer"):
            flows.setdefault(record["c"], []).append(record)
    if not flows:
        return {"records": 0}
    name = max(flows, key=lambda c: sum(1 for r in flows[c] if r["ev"] == "ack"))
    recs = flows[name]
    seg = mss.get(name, 1380)
    duration = recs[-1]["t"] - recs[0]["t"]
    held: dict[str, float] = {}
    in_recovery = 0.0
    episodes = collapses = dsacks = 0
    for before, after in itertools.pairwise(recs):
        dt = after["t"] - before["t"]
        held[after["lim"]] = held.get(after["lim"], 0.0) + dt
        if before["rec"]:
            in_recovery += dt
        if after["rec"] and not before["rec"]:
            episodes += 1
        if after["cwnd"] < 0.7 * before["cwnd"]:
            collapses += 1
    counters_first: dict[str, int] = {}
    counters_last: dict[str, int] = {}
    for r in recs:
        for k, v in r.get("stack", {}).items():
            counters_first.setdefault(k, v)
            counters_last[k] = v
    tx = [r["tx"] for r in recs if "tx" in r]
    segments = sum(x[0] for x in tx)
    bursts = sum(x[3] for x in tx)
    acks = [r for r in recs if r["ev"] == "ack"]
    dsacks = sum(_dsacks(r) for r in acks)
    srtt = [r["srtt"] for r in recs if r["srtt"] is not None]
    cwnd = [r["cwnd"] / seg for r in recs]
    total = max(sum(held.values()), 1e-9)
    acked = recs[-1]["una"] - recs[0]["una"]
    return {
        "connection": name,
        "records": len(recs),
        "seconds": round(duration, 3),
        "acked_mbit_s": round(acked * 8 / max(duration, 1e-9) / 1e6, 1),
        "held_by": {k: round(v / total, 3) for k, v in sorted(held.items())},
        "cwnd_segments": {
            "median": round(statistics.median(cwnd), 1),
            "p90": round(_pct(cwnd, 0.9), 1),
            "max": round(max(cwnd), 1),
        },
        "pipe_segments_median": round(statistics.median(r["pipe"] / seg for r in recs), 1),
        "peer_window_kib_median": round(statistics.median(r["wnd"] for r in recs) / 1024),
        "srtt_ms": {
            "min": round(min(srtt), 1) if srtt else None,
            "median": round(statistics.median(srtt), 1) if srtt else None,
            "max": round(max(srtt), 1) if srtt else None,
        },
        "recovery_episodes": episodes,
        "time_in_recovery": round(in_recovery / max(duration, 1e-9), 3),
        "cwnd_collapses": collapses,
        "rto": counters_last.get("tcp_rto", 0) - counters_first.get("tcp_rto", 0),
        "segments_sent": segments,
        "retransmitted": sum(x[2] for x in tx),
        "dsacks": dsacks,
        "segments_per_burst": round(segments / bursts, 1) if bursts else None,
        "burst_max": max((x[4] for x in tx), default=0),
        "burst_p90": _pct([float(x[4]) for x in tx], 0.9),
    }


def main(argv: list[str]) -> int:
    for arg in argv:
        print(json.dumps({"file": arg, **summarize(Path(arg))}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
