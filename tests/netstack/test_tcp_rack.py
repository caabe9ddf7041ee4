"""Loss detection by time (RACK-TLP, RFC 8985), D-SACK (RFC 2883) both ways, and undo."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.netstack import tcp
from funnel_tw.netstack.segment import ACK, SYN, sack_option, syn_options

from .tcp_harness import (
    MASK,
    T0,
    Host,
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


# --- the receiver: D-SACK (RFC 2883) -------------------------------------------------------------


class DsackReceiverTests(SynchronousTestCase):
    """What our receiver reports when data arrives twice (fed by a hand-driven peer)."""

    def setUp(self) -> None:
        self.stack = listening_stack()
        self.peer, self.conn, _ = raw_established(self.stack)
        self.mss = self.conn.mss

    def test_duplicate_below_the_ack_is_reported_first(self) -> None:
        """RFC 2883 4.1.1: a duplicate of acknowledged data, answered at once with a D-SACK
        block below the cumulative ACK."""
        peer = self.peer
        start = peer.seq
        peer.push(b"x" * 100, T0)
        peer.seq = start
        out = peer.push(b"x" * 100, T0)
        self.assertEqual(len(out), 1)
        self.assertEqual(out[0].ack, (start + 100) & MASK)
        self.assertEqual(out[0].options.sack, [(start & MASK, (start + 100) & MASK)])
        self.assertEqual(self.stack.counters["tcp_dsack_sent"], 1)

    def test_reported_once(self) -> None:
        peer = self.peer
        start = peer.seq
        peer.push(b"x" * 100, T0)
        peer.seq = start
        peer.push(b"x" * 100, T0)
        out = peer.push(b"y" * 100, T0, flags=ACK)
        self.stack.tick(T0 + 1)
        out += peer.take()
        self.assertTrue(out)
        for seg in out:
            self.assertEqual(seg.options.sack, [])

    def test_duplicate_out_of_order_data_then_its_block(self) -> None:
        """RFC 2883 4.1.2: the D-SACK block, then the block of held data that contains it."""
        peer, mss = self.peer, self.mss
        base = peer.seq
        peer.seq = base + mss
        peer.push(bytes(mss), T0)
        peer.push(bytes(mss), T0)  # [base+mss, base+3mss) held, base..base+mss missing
        peer.seq = base + 2 * mss
        out = peer.push(bytes(mss), T0)
        self.assertEqual(out[0].ack, base & MASK)
        self.assertEqual(
            out[0].options.sack,
            [
                ((base + 2 * mss) & MASK, (base + 3 * mss) & MASK),
                ((base + mss) & MASK, (base + 3 * mss) & MASK),
            ],
        )

    def test_partial_overlap_reports_the_old_part(self) -> None:
        peer = self.peer
        start = peer.seq
        peer.push(b"abcdef", T0)
        peer.seq = start + 3
        acks = peer.push(b"defghi", T0)
        self.assertEqual(len(acks), 1)
        self.assertEqual(acks[0].options.sack, [((start + 3) & MASK, (start + 6) & MASK)])

    def test_no_dsack_without_sack_permitted(self) -> None:
        stack = listening_stack()
        peer, _, _ = raw_established(stack, options=syn_options(1460, 7, False))
        start = peer.seq
        peer.push(b"x" * 100, T0)
        peer.seq = start
        out = peer.push(b"x" * 100, T0)
        self.assertEqual(len(out), 1)  # still answered at once
        self.assertEqual(out[0].raw_options, b"")


# --- the sender: RACK, undo, TLP (hand-driven receiver) ------------------------------------------


class RackSenderTests(SynchronousTestCase):
    """Our sender against a hand-driven receiver 20 ms away (the handshake measures it)."""

    def setUp(self) -> None:
        self.stack = listening_stack()
        peer = RawPeer(self.stack, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 40000, 80)
        out = peer.syn(T0)
        synack = next(s for s in out if s.has(SYN | ACK))
        peer.ack = (synack.seq + 1) & MASK
        peer.send(ACK, T0 + RTT)
        self.conn = next(c for k, c, _ in self.stack.events if k == tcp.ACCEPTED)
        self.peer = peer
        self.mss = self.conn.mss
        self.una = self.conn.snd_una
        self.now = T0 + RTT
        self.assertAlmostEqual(self.conn.srtt or 0, RTT)

    def send_flight(self, segments: int) -> list[int]:
        self.conn.pacing = False  # the whole flight at self.now (pacing has its own tests)
        self.conn.send(bytes(segments * self.mss))
        self.stack.flush(self.now)
        out = [s for s in self.peer.take() if s.payload]
        self.assertEqual(len(out), segments)
        return [self.una + i * self.mss for i in range(segments)]

    def ack(self, at: float, ack: int, *blocks: tuple[int, int]) -> list[int]:
        """The receiver acknowledges ``ack`` with SACK ``blocks``; the data segments our
        sender answers with (their sequence numbers, unwrapped)."""
        options = sack_option([(s & MASK, e & MASK) for s, e in blocks]) if blocks else b""
        out = self.peer.send(ACK, at, ack=ack & MASK, options=options)
        return [self.una + ((s.seq - self.una) & MASK) for s in out if s.payload]

    def test_three_sacked_segments_mean_loss_before_reordering_is_seen(self) -> None:
        """RFC 8985 6.2: until reordering is seen, reo_wnd is 0 once three segments are SACKed
        (DupThresh), so the hole goes at once; with one SACKed it waits min_rtt/4."""
        seqs = self.send_flight(10)
        mss, t = self.mss, self.now + RTT
        self.assertEqual(self.ack(t, seqs[0], (seqs[1], seqs[2])), [])
        self.assertAlmostEqual(self.conn.t_reo or 0, t + RTT / 4)
        self.assertEqual(self.ack(t, seqs[0], (seqs[1], seqs[4])), [seqs[0]])
        self.assertTrue(self.conn.in_recovery)
        self.assertEqual(self.stack.counters["tcp_fast_retransmits"], 1)
        self.assertEqual(self.conn.lost_bytes, 0)  # retransmitted: in flight again
        self.assertEqual(self.conn.sacked_bytes, 3 * mss)

    def test_rack_timer_marks_the_hole_lost_after_the_window(self) -> None:
        seqs = self.send_flight(10)
        t = self.now + RTT
        self.ack(t, seqs[0], (seqs[1], seqs[2]))  # one SACKed: reo_wnd = min_rtt / 4
        deadline = self.conn.t_reo
        assert deadline is not None
        self.stack.tick(deadline - 0.001)
        self.assertEqual([s for s in self.peer.take() if s.payload], [])
        self.stack.tick(deadline)
        again = [s for s in self.peer.take() if s.payload]
        self.assertEqual([s.seq for s in again], [seqs[0] & MASK])

    def test_spurious_retransmission_undone_by_dsack(self) -> None:
        """The hole was only late: its original arrives, then the D-SACK of the retransmission;
        cwnd and ssthresh go back to what they were, and reordering now counts as seen."""
        seqs = self.send_flight(10)
        end = seqs[-1] + self.mss
        conn, t = self.conn, self.now + RTT
        cwnd, ssthresh = conn.cwnd, conn.ssthresh
        self.assertEqual(self.ack(t, seqs[0], (seqs[1], seqs[5])), [seqs[0]])
        self.assertLess(conn.ssthresh, ssthresh)
        self.ack(t + 0.002, end)  # the original got there
        self.assertFalse(conn.in_recovery)
        self.ack(t + RTT, end, (seqs[0], seqs[0] + self.mss))  # D-SACK: the copy too
        self.assertEqual(self.stack.counters["tcp_dsack_received"], 1)
        self.assertEqual(self.stack.counters["tcp_undo"], 1)
        self.assertGreaterEqual(conn.cwnd, cwnd)
        self.assertEqual(conn.ssthresh, ssthresh)
        self.assertTrue(conn.reordering_seen)
        self.assertEqual(conn.reo_wnd_mult, 2)

    def test_real_loss_is_not_undone(self) -> None:
        seqs = self.send_flight(10)
        end = seqs[-1] + self.mss
        conn, t = self.conn, self.now + RTT
        self.ack(t, seqs[0], (seqs[1], seqs[5]))
        ssthresh = conn.ssthresh
        self.ack(t + RTT, end)  # the retransmission filled the hole: no D-SACK follows
        self.ack(t + 2 * RTT, end)
        self.assertNotIn("tcp_undo", self.stack.counters)
        self.assertEqual(conn.ssthresh, ssthresh)
        self.assertLessEqual(conn.cwnd, max(ssthresh, conn.cwnd))

    def test_once_reordering_is_seen_a_late_segment_is_waited_for(self) -> None:
        conn = self.conn
        conn.reordering_seen = True
        seqs = self.send_flight(10)
        t = self.now + RTT
        self.assertEqual(self.ack(t, seqs[0], (seqs[1], seqs[8])), [])
        self.assertFalse(conn.in_recovery)
        self.assertAlmostEqual(conn.reo_wnd(), RTT / 4)
        self.ack(t + 0.003, seqs[-1] + self.mss)  # it came, within the window
        self.stack.tick(t + RTT)
        self.assertNotIn("tcp_retransmitted_segments", self.stack.counters)
        self.assertIsNone(conn.t_reo)

    def send_spread(self, segments: int, gap: float) -> list[int]:
        """``segments`` one at a time, ``gap`` apart: each record has its own send time
        (the windows opened wide enough by hand)."""
        self.conn.pacing = False
        self.conn.cwnd = self.conn.snd_wnd = (segments + 10) * self.mss
        seqs = []
        for i in range(segments):
            self.conn.send(bytes(self.mss))
            self.stack.flush(self.now)
            self.assertEqual(len([s for s in self.peer.take() if s.payload]), 1)
            seqs.append(self.una + i * self.mss)
            self.now += gap
        return seqs

    def test_many_records_in_the_reordering_window_are_not_walked_per_ack(self) -> None:
        """With reordering seen, a SACK beyond 300 segments sent 10 us apart leaves them all
        waiting out min_rtt / 4. Loss detection looks at REO_SCAN of them, not all 300 on
        every ACK; the timer is then set for a segment sent with RACK's own (later than the
        RFC's largest remaining time, never sooner), and when it fires all 300 go lost."""
        from funnel_tw.netstack.tcp import rack

        conn = self.conn
        conn.reordering_seen = True
        seqs = self.send_spread(302, 10e-6)
        last = seqs[-1]
        calls = 0
        original = rack.sent_after

        def counting(*args: object) -> bool:
            nonlocal calls
            calls += 1
            return original(*args)  # type: ignore[arg-type]

        self.patch(rack, "sent_after", counting)
        t = self.now + RTT - 0.003
        self.assertEqual(self.ack(t, seqs[0], (last, last + self.mss)), [])
        self.assertLess(rack.REO_SCAN, 300)
        self.assertLessEqual(calls, rack.REO_SCAN + 2)
        horizon = conn.rack_rtt + conn.reo_wnd()
        self.assertAlmostEqual(conn.t_reo or 0, conn.rack_xmit + horizon)
        self.assertGreater(conn.t_reo or 0, (self.now - 2 * 10e-6) + horizon - 1e-9)
        deadline = conn.t_reo
        assert deadline is not None
        self.stack.tick(deadline)
        waited = [r for r in conn.rtx[conn.rtx_head :] if r.end <= last]
        self.assertEqual(len(waited), 301)
        self.assertTrue(all(r.state == rack.LOST or r.retrans for r in waited))  # all at once
        self.assertTrue(conn.in_recovery)

    def test_a_few_records_in_the_window_keep_the_rfcs_timer(self) -> None:
        """Under REO_SCAN waiting records the timer is RFC 8985's: the last one's expiry."""
        conn = self.conn
        conn.reordering_seen = True
        seqs = self.send_spread(12, 100e-6)
        t = self.now + RTT - 0.003
        self.ack(t, seqs[0], (seqs[-1], seqs[-1] + self.mss))
        horizon = conn.rack_rtt + conn.reo_wnd()
        newest_waiting = self.now - 2 * 100e-6  # seqs[-2] left one gap before seqs[-1]
        self.assertAlmostEqual(conn.t_reo or 0, newest_waiting + horizon)

    def test_tail_loss_probe_retransmits_the_last_segment(self) -> None:
        """RFC 8985 7: with nothing new to send, the probe two round trips after the last
        segment is that segment again; the ACK that follows repairs it without an RTO."""
        seqs = self.send_flight(4)
        conn = self.conn
        pto = conn.t_tlp
        assert pto is not None and conn.t_rto is not None
        self.assertAlmostEqual(pto, self.now + 2 * RTT)
        self.assertLess(pto, conn.t_rto)
        self.ack(self.now + RTT, seqs[2])  # the last two got lost
        pto = conn.t_tlp
        assert pto is not None
        self.stack.tick(pto)
        probe = [s for s in self.peer.take() if s.payload]
        self.assertEqual([s.seq for s in probe], [seqs[3] & MASK])
        self.assertEqual(self.stack.counters["tcp_tlp_probes"], 1)
        # the probe gets a SACK: RACK sees the third segment lost and repairs it
        again = self.ack(pto + RTT, seqs[2], (seqs[3], seqs[3] + self.mss))
        self.assertEqual(again, [seqs[2]])
        self.assertNotIn("tcp_rto", self.stack.counters)

    def test_tail_loss_probe_sends_new_data_when_it_can(self) -> None:
        conn = self.conn
        conn.cwnd = 2 * self.mss
        conn.pacing = False
        conn.send(bytes(4 * self.mss))
        self.stack.flush(self.now)
        self.assertEqual(len([s for s in self.peer.take() if s.payload]), 2)
        assert conn.t_tlp is not None
        self.stack.tick(conn.t_tlp)
        probe = [s for s in self.peer.take() if s.payload]
        self.assertEqual([s.seq for s in probe], [(self.una + 2 * self.mss) & MASK])
        self.assertFalse(conn.tlp_retrans)

    def test_timeout_retransmits_everything_not_sacked(self) -> None:
        seqs = self.send_flight(6)
        conn = self.conn
        self.ack(self.now + RTT, seqs[0], (seqs[3], seqs[4]))
        assert conn.t_rto is not None
        conn.t_tlp = conn.t_reo = None
        t = conn.t_rto
        self.stack.tick(t)
        self.assertEqual(self.stack.counters["tcp_rto"], 1)
        self.assertEqual(conn.cwnd, self.mss)
        self.assertTrue(conn.in_loss)
        sent = [s.seq for s in self.peer.take() if s.payload]
        self.assertEqual(sent, [seqs[0] & MASK])
        # each ACK lets more go; the SACKed segment is skipped
        out = self.ack(t + RTT, seqs[1])
        out += self.ack(t + 2 * RTT, seqs[3], (seqs[3], seqs[4]))
        self.assertNotIn(seqs[3], out)
        self.assertIn(seqs[5], out)


class ReoWndTests(SynchronousTestCase):
    """RFC 8985 6.2 step 4, on a connection's state directly."""

    def setUp(self) -> None:
        stack = listening_stack()
        _, self.conn, _ = raw_established(stack)
        conn = self.conn
        conn.min_rtt = 0.02
        conn.srtt = 0.03
        conn.snd_max = conn.snd_una + 100_000

    def test_rules(self) -> None:
        conn = self.conn
        self.assertAlmostEqual(conn.reo_wnd(), 0.005)
        conn.sacked_bytes = 3 * conn.mss
        self.assertEqual(conn.reo_wnd(), 0.0)
        conn.in_recovery = True
        conn.sacked_bytes = 0
        self.assertEqual(conn.reo_wnd(), 0.0)
        conn.reordering_seen = True
        self.assertAlmostEqual(conn.reo_wnd(), 0.005)

    def test_dsack_widens_once_per_round_trip_up_to_srtt(self) -> None:
        conn = self.conn
        conn.reordering_seen = True
        conn._rack_dsack_seen()
        self.assertAlmostEqual(conn.reo_wnd(), 0.010)
        conn._rack_dsack_seen()  # the same round trip
        self.assertAlmostEqual(conn.reo_wnd(), 0.010)
        for _ in range(5):
            conn.snd_una = conn.snd_max  # a round trip later
            conn.snd_max += 100_000
            conn._rack_dsack_seen()
        self.assertAlmostEqual(conn.reo_wnd(), 0.03)  # capped at srtt

    def test_falls_back_after_16_recoveries_without_dsack(self) -> None:
        conn = self.conn
        conn.reordering_seen = True
        conn._rack_dsack_seen()
        for _ in range(15):
            conn._rack_recovery_ended()
        self.assertAlmostEqual(conn.reo_wnd(), 0.010)
        conn._rack_recovery_ended()
        self.assertAlmostEqual(conn.reo_wnd(), 0.005)


# --- whole transfers on the simulated link -------------------------------------------------------


def hold(net: Net, sender: Host, nth: list[int], extra: float) -> list[int]:
    """Hold the listed data segments of ``sender`` (1-based, first transmissions) ``extra``
    seconds longer than the link's latency, so the ones behind overtake them."""
    seen: list[int] = []
    held: list[int] = []
    latency = net.profile.latency

    def drop(host: Host, packet: bytes) -> bool:
        seg = parse_seg(packet)
        if host is not sender or seg is None or not seg.payload or seg.seq in seen:
            return False
        seen.append(seg.seq)
        if len(seen) in nth:
            held.append(seg.seq)
            net.inject(net.peer_of(host), packet, latency + extra)
            return True
        return False

    net.drop = drop
    return held


class ReorderedTransferTests(SynchronousTestCase):
    def transfer(self, profile: LinkProfile, size: int, seed: int = 1) -> tuple[Net, float]:
        net = Net.pair(profile=profile, seed=seed)
        client, server = connected_pair(net)
        data = payload(size, seed)
        client.send(data)
        took = net.run(lambda: len(net.b.data_received(server)) >= size, timeout=120)
        self.assertEqual(sha(net.b.data_received(server)), sha(data))
        return net, took

    def test_late_segment_costs_one_undone_retransmission_then_none(self) -> None:
        """The first late segment is retransmitted (reordering not seen yet) and the D-SACK
        undoes the reduction; the later ones are waited for."""
        net = Net.pair(profile=LinkProfile(latency=RTT / 2), seed=3)
        client, server = connected_pair(net)
        held = hold(net, net.a, [40, 400, 800], 0.004)
        data = payload(2_000_000, 3)
        client.send(data)
        net.run(lambda: len(net.b.data_received(server)) >= len(data), timeout=60)
        self.assertEqual(len(held), 3)
        self.assertEqual(sha(net.b.data_received(server)), sha(data))
        counters = net.a.stack.counters
        self.assertEqual(counters.get("tcp_retransmitted_segments"), 1, counters)
        self.assertEqual(counters.get("tcp_undo"), 1, counters)
        self.assertTrue(client.reordering_seen)

    def test_holds_longer_than_the_round_trip_leave_no_reduction(self) -> None:
        """Sixteen datagrams held 5 ms on a 1 ms path: each D-SACK comes back after the next
        recovery began, and every episode is still undone on its own D-SACKs (with one undo
        state only, the episode before was forgotten and its reduction stayed)."""
        net = Net.pair(profile=LinkProfile(latency=0.0005), seed=3)
        client, server = connected_pair(net)
        ssthresh = client.ssthresh
        held = hold(net, net.a, list(range(300, 700, 25)), 0.005)
        data = payload(2_000_000, 3)
        client.send(data)
        net.run(lambda: len(net.b.data_received(server)) >= len(data), timeout=60)
        self.assertEqual(len(held), 16)
        self.assertEqual(sha(net.b.data_received(server)), sha(data))
        counters = net.a.stack.counters
        self.assertGreaterEqual(counters["tcp_fast_retransmits"], 2, counters)  # they overlapped
        self.assertEqual(counters.get("tcp_undo"), counters["tcp_fast_retransmits"], counters)
        self.assertEqual(client.ssthresh, ssthresh)

    def test_reordering_costs_little_throughput(self) -> None:
        """3 % of the packets held 5 ms at 20 ms RTT: the transfer takes hardly longer than on
        a clean link (before RACK and undo, each held packet halved the window)."""
        size = 3_000_000
        _, clean = self.transfer(LinkProfile(latency=RTT / 2), size)
        net, reordered = self.transfer(
            LinkProfile(latency=RTT / 2, reorder=0.03, reorder_delay=0.005), size
        )
        self.assertGreater(net.link.reordered, 30)
        self.assertLess(reordered, clean * 1.3, f"{reordered:.3f}s vs {clean:.3f}s clean")

    @settings(max_examples=15, deadline=None)
    @given(
        reorder=st.floats(0.0, 0.3),
        delay=st.floats(0.001, 0.02),
        latency=st.floats(0.001, 0.03),
        seed=st.integers(0, 2**16),
    )
    def test_reordering_alone_never_times_out(
        self, reorder: float, delay: float, latency: float, seed: int
    ) -> None:
        """Nothing is lost: whatever the reordering, RACK, D-SACK and undo repair it without a
        retransmission timeout, and byte-exact."""
        profile = LinkProfile(latency=latency, reorder=reorder, reorder_delay=delay)
        net, _ = self.transfer(profile, 300_000, seed)
        self.assertNotIn("tcp_rto", net.a.stack.counters)
