"""Pacing: data leaves at a rate derived from cwnd and srtt, in quanta, not a window at once."""

from __future__ import annotations

import itertools
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.netstack import tcp
from funnel_tw.netstack.segment import ACK, SYN
from funnel_tw.netstack.tcp.pacing import (
    PACING_CA_RATIO,
    PACING_MAX_QUANTUM,
    PACING_SS_RATIO,
)

from .tcp_harness import (
    MASK,
    T0,
    LinkProfile,
    Net,
    RawPeer,
    connected_pair,
    listening_stack,
    parse_seg,
    payload,
    raw_established,
    sha,
)

RTT = 0.02


class PacerTests(SynchronousTestCase):
    """Against a hand-driven receiver 20 ms away (the handshake measures it)."""

    def setUp(self) -> None:
        self.open_stack()

    def open_stack(self, **stack_args: Any) -> None:
        self.stack = listening_stack(**stack_args)
        peer = RawPeer(self.stack, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 40000, 80)
        out = peer.syn(T0)
        synack = next(s for s in out if s.has(SYN | ACK))
        peer.ack = (synack.seq + 1) & MASK
        peer.send(ACK, T0 + RTT)
        self.conn = next(c for k, c, _ in self.stack.events if k == tcp.ACCEPTED)
        self.peer = peer
        self.now = T0 + RTT

    def departures(self, until: float) -> list[tuple[float, int]]:
        """Run the stack's timers up to ``until``: (time, payload bytes) of each data segment."""
        out = [(self.now, len(s.payload)) for s in self.peer.take() if s.payload]
        while True:
            deadline = self.stack.next_deadline()
            if deadline is None or deadline > until:
                return out
            self.stack.tick(deadline)
            out += [(deadline, len(s.payload)) for s in self.peer.take() if s.payload]

    def test_initial_window_leaves_in_quanta_at_twice_cwnd_per_rtt(self) -> None:
        conn = self.conn
        mss = conn.mss
        conn.send(bytes(conn.cwnd))
        self.stack.flush(self.now)
        rate = PACING_SS_RATIO * conn.cwnd / RTT
        self.assertLess(abs(conn.pace_rate - rate), 1e-6 * rate)
        quantum = max(rate * 0.001, 2 * mss)
        sent = self.departures(self.now + RTT)
        self.assertEqual(sum(n for _, n in sent), conn.cwnd)
        # at once: at most the bucket (two quanta); then a quantum at a time
        times = [t for t, _ in sent]
        bursts = [sum(n for _, n in group) for _, group in itertools.groupby(sent, lambda x: x[0])]
        self.assertLessEqual(bursts[0], 2 * quantum + mss)
        for burst in bursts[1:]:
            self.assertLessEqual(burst, quantum + mss)
        # and the whole window took what the rate says (less the bucket sent at once)
        spread = times[-1] - times[0]
        expected = (conn.cwnd - bursts[0]) / rate
        self.assertLessEqual(abs(spread - expected), quantum / rate + 1e-9)
        self.assertGreater(spread, RTT / 4)

    def test_congestion_avoidance_paces_at_1_2(self) -> None:
        conn = self.conn
        conn.ssthresh = conn.cwnd  # cwnd >= ssthresh / 2
        conn.send(bytes(conn.cwnd))
        self.stack.flush(self.now)
        rate = PACING_CA_RATIO * conn.cwnd / RTT
        self.assertLess(abs(conn.pace_rate - rate), 1e-6 * rate)

    def test_a_late_timer_loses_nothing_up_to_a_quantum(self) -> None:
        """The bucket is two quanta deep: a wake-up late by less than a quantum's time still
        sends what the rate earned."""
        conn = self.conn
        conn.send(bytes(conn.cwnd))
        self.stack.flush(self.now)
        self.peer.take()
        deadline = conn.t_pace
        assert deadline is not None
        quantum_time = conn.pace_depth / 2 / conn.pace_rate
        late = deadline + 0.9 * quantum_time
        self.stack.tick(late)
        sent = sum(len(s.payload) for s in self.peer.take())
        self.assertGreaterEqual(sent, 1.8 * conn.pace_depth / 2 - conn.mss)

    def test_bbr_wakes_late_by_three_quanta_without_loss(self) -> None:
        """With BBR the bucket is four quanta deep: its rate is what it measured, so what a
        late reactor does not send would lower the next measurement (a CPU-bound sender
        settled 30 % below the path: docs/netstack.md, "BBR")."""
        self.open_stack(congestion="bbr")
        conn = self.conn
        conn.cwnd = 1000 * conn.mss  # (the window does not stop it first)
        conn.send(bytes(conn.cwnd))
        self.stack.flush(self.now)
        self.peer.take()
        deadline = conn.t_pace
        assert deadline is not None
        quantum = min(max(conn.pace_rate * 0.001, 2 * conn.mss), 64 * 1024)
        self.assertEqual(conn.pace_depth, 4 * quantum)
        self.assertLess(abs(deadline - self.now - quantum / conn.pace_rate), 1e-3)  # wakes for one
        self.stack.tick(deadline + 2.9 * quantum / conn.pace_rate)
        sent = sum(len(s.payload) for s in self.peer.take())
        self.assertGreaterEqual(sent, 3.8 * quantum - conn.mss)

    def test_switched_off(self) -> None:
        conn = self.conn
        conn.pacing = False
        conn.send(bytes(conn.cwnd))
        self.stack.flush(self.now)
        self.assertEqual(sum(len(s.payload) for s in self.peer.take()), conn.cwnd)
        self.assertIsNone(conn.t_pace)


class PacedTransferTests(SynchronousTestCase):
    def test_no_burst_beyond_two_quanta_in_a_bulk_transfer(self) -> None:
        """4 MB at 20 ms: the window grows to hundreds of segments, yet no more than two
        quanta (at most 64 KiB each) ever leave at the same instant."""
        net = Net.pair(profile=LinkProfile(latency=RTT / 2), seed=5)
        client, server = connected_pair(net)
        data = payload(4_000_000, 5)
        client.send(data)
        net.run(lambda: len(net.b.data_received(server)) >= len(data), timeout=60)
        self.assertEqual(sha(net.b.data_received(server)), sha(data))
        self.assertGreater(client.cwnd, 200 * client.mss)
        sizes: dict[float, int] = {}
        for at, packet in zip(net.a.sent_times, net.a.sent, strict=True):
            seg = parse_seg(packet)
            if seg is not None:
                sizes[at] = sizes.get(at, 0) + len(seg.payload)
        self.assertLessEqual(max(sizes.values()), 2 * PACING_MAX_QUANTUM + 2 * client.mss)

    def test_pacing_keeps_a_transfer_fast(self) -> None:
        """Pacing spreads a window over the round trip; it must not slow the transfer down
        (at 2x/1.2x the window's own rate, the ACK clock stays ahead)."""
        took = {}
        for paced in (True, False):
            net = Net.pair(profile=LinkProfile(latency=RTT / 2), seed=6)
            client, server = connected_pair(net)
            client.pacing = paced
            data = payload(3_000_000, 6)
            client.send(data)
            took[paced] = net.run(
                lambda s=server, n=net, d=data: len(n.b.data_received(s)) >= len(d), timeout=60
            )
        self.assertLess(took[True], took[False] * 1.25, took)


class CwndValidationTests(SynchronousTestCase):
    """RFC 7661 as Linux 6.1 applies it: cwnd limited the sender once in a window, so it
    counts as cwnd-limited until that window is acknowledged, even if more went out later
    in the window while the pacer (not cwnd) held it back."""

    def test_cwnd_limited_sticks_for_the_window(self) -> None:
        stack = listening_stack()
        _, conn, _ = raw_established(stack)
        mss = conn.mss
        una = conn.snd_una
        conn.cwnd = 10 * mss
        conn.snd_max = una + 10 * mss  # a whole window in flight: cwnd holds the sender
        conn._validate_cwnd()
        self.assertTrue(conn.cwnd_limited)
        # two segments acknowledged, the window grew, five more sent: more in flight than
        # ever in this window, but the pacer, not cwnd, stopped the sender this time
        conn.snd_una = una + 2 * mss
        conn.cwnd = 20 * mss
        conn.snd_max = una + 15 * mss
        conn._validate_cwnd()
        self.assertEqual(conn.max_flight, 10 * mss)
        self.assertTrue(conn.cwnd_limited)
        # the window that was cwnd-limited is acknowledged: the next one starts afresh
        conn.snd_una = una + 10 * mss
        conn._validate_cwnd()
        self.assertFalse(conn.cwnd_limited)
        self.assertEqual(conn.max_flight, 5 * mss)
