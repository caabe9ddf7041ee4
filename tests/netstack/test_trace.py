"""The sender event log (netstack/trace.py): what it records matches what went over the wire."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.netstack import trace
from funnel_tw.netstack.stack import Stack

from .tcp_harness import A4, MASK, Host, LinkProfile, Net, Transfer, parse_seg, payload

SIZE = 400_000


def records(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines]


class TraceTests(SynchronousTestCase):
    def traced_transfer(
        self, drop_nth: int | None, congestion: str = "cubic"
    ) -> tuple[Net, Transfer, list[dict[str, Any]]]:
        """400 kB from a to b over 10 ms each way; a's stack traced; one data segment lost."""
        net = Net.pair(profile=LinkProfile(latency=0.01), congestion=congestion)
        lines: list[str] = []
        net.a.stack.trace = trace.TcpTrace(lines.append, net.a.stack.counters)
        data_segments = 0

        def drop(sender: Host, packet: bytes) -> bool:
            nonlocal data_segments
            seg = parse_seg(packet)
            if sender is net.a and seg is not None and seg.payload:
                data_segments += 1
                return data_segments == drop_nth
            return False

        net.drop = drop
        t = Transfer(net, payload(SIZE), b"").start()
        t.run(timeout=60)
        return net, t, records(lines)

    def test_bbr_state_is_recorded(self) -> None:
        """With BBR every record says its state, bandwidth, min_rtt and gain; with CUBIC none."""
        _, _, recs = self.traced_transfer(drop_nth=None, congestion="bbr")
        states = [r["bbr"] for r in recs if r["ev"] == "ack"]
        self.assertEqual({s[0] for s in states}, {"startup"})  # 400 kB: never a full pipe
        last = states[-1]
        self.assertGreater(last[1], 0)
        self.assertLess(abs(last[2] - 20.0), 1.0)
        self.assertEqual(last[3], 2.885)
        _, _, cubic = self.traced_transfer(drop_nth=None)
        self.assertFalse([r for r in cubic if "bbr" in r])

    def test_records_follow_the_wire(self) -> None:
        net, t, recs = self.traced_transfer(drop_nth=40)
        assert t.client is not None
        name = f"{t.client.local[1]}>{t.client.remote[1]}"
        self.assertEqual(recs[0]["ev"], "start")
        self.assertEqual(
            recs[1], {**recs[1], "ev": "flow", "c": name, "sack_ok": True, "ts_ok": True}
        )
        acks = [r for r in recs if r["ev"] == "ack" and r["c"] == name]
        self.assertGreater(len(acks), 20)
        # everything the client sent with data shows up in some record's tx, retransmissions too
        wire = [s for s in net.a.segments() if s.payload and s.sport == t.client.local[1]]
        high, resent = -1, 0
        for s in wire:
            rel = (s.seq - t.client.iss) & MASK
            resent += rel < high
            high = max(high, rel + len(s.payload))
        tx = [r["tx"] for r in recs if "tx" in r and r["c"] == name]
        self.assertEqual(sum(x[0] for x in tx), len(wire))
        self.assertEqual(sum(x[1] for x in tx), sum(len(s.payload) for s in wire))
        self.assertEqual(sum(x[2] for x in tx), resent)
        self.assertGreaterEqual(resent, 1)
        self.assertTrue(all(x[4] <= x[0] and x[3] >= 1 for x in tx))
        # the lost segment: SACK blocks, recovery, the counters; and the ACKs climb to the end
        self.assertTrue(any(r.get("sack") for r in acks))
        self.assertTrue(any(r["rec"] for r in acks))
        last = [r["stack"] for r in recs if "stack" in r][-1]
        counters = net.a.stack.counters
        self.assertEqual(last["tcp_retransmitted_segments"], counters["tcp_retransmitted_segments"])
        self.assertEqual(max(r["ack"] for r in acks), SIZE + 2)  # SYN and FIN count too
        self.assertTrue(all(a["una"] <= b["una"] for a, b in itertools.pairwise(acks)))
        self.assertLess(abs(acks[-1]["srtt"] - 20.0), 5.0)  # ms
        # slow start is window-limited, the end has nothing left to send
        self.assertIn("cwnd", {r["lim"] for r in acks})
        self.assertEqual(acks[-1]["lim"], "app")

    def test_receiver_side_stays_quiet(self) -> None:
        """A connection that only receives (b here) writes no ack records but at its close."""
        net = Net.pair(profile=LinkProfile(latency=0.01))
        lines: list[str] = []
        net.b.stack.trace = trace.TcpTrace(lines.append, net.b.stack.counters)
        Transfer(net, payload(SIZE), b"").start().run(timeout=60)
        acks = [r for r in records(lines) if r["ev"] == "ack"]
        self.assertLessEqual(len(acks), 2, acks)  # the ACK of its FIN
        self.assertTrue(all(r["len"] == 0 and r["una"] <= 2 for r in acks), acks)

    def test_limit_ends_the_log(self) -> None:
        net = Net.pair(profile=LinkProfile(latency=0.01))
        lines: list[str] = []
        net.a.stack.trace = trace.TcpTrace(lines.append, net.a.stack.counters, limit=10)
        Transfer(net, payload(SIZE), b"").start().run(timeout=60)
        self.assertEqual(len(lines), 11)
        self.assertEqual(json.loads(lines[-1]), {"ev": "end", "records": 10})

    def test_environment(self) -> None:
        """Off by default; with the variable, a file per process (``%p``) that gets records."""
        folder = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, folder, True)
        path = folder / f"t-{os.getpid()}.jsonl"
        with mock.patch.dict(os.environ):
            os.environ.pop(trace.ENV, None)
            self.assertIsNone(Stack([A4]).trace)
            os.environ[trace.ENV] = str(folder / "t-%p.jsonl")
            os.environ[trace.LIMIT_ENV] = "3"
            stack = Stack([A4])
        assert stack.trace is not None
        self.assertEqual(stack.trace.limit, 3)
        self.assertTrue(path.exists())
        with self.assertRaises(OSError) as e:
            trace.from_environment({}, {trace.ENV: str(folder / "missing" / "t")})
        self.assertIn(trace.ENV, str(e.exception))
