"""TCP timestamps (RFC 7323, tcp/timestamps.py): negotiation, what we echo, PAWS.

The echo is what a Linux sender builds on: the ACK that a late original (not its
retransmission) draws must echo the original's clock, so the sender sees the loss was not one
and undoes its reduction. A raw peer plays that sender here, with a clock of its own.
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.netstack import tcp
from funnel_tw.netstack.segment import (
    ACK,
    RST,
    SYN,
    sack_option,
    syn_options,
    timestamp_option,
)
from funnel_tw.netstack.stack import Stack
from funnel_tw.netstack.tcp.timestamps import PAWS_IDLE
from tests.netstack.tcp_harness import (
    A4,
    B4,
    T0,
    Net,
    RawPeer,
    Seg,
    connected_pair,
    listening_stack,
    payload,
    raw_established,
)

MSS = 1240  # a 1280-byte MTU's
PEER_SYN_TS = 50  # the raw peer's clock at its SYN (its own unit: only order matters)


def ts_syn(tsval: int = PEER_SYN_TS) -> bytes:
    return syn_options(1460, 7, True, (tsval, 0))


def echoes(segs: list[Seg]) -> list[int]:
    return [s.options.tsecr for s in segs]


class NegotiationTests(SynchronousTestCase):
    def test_both_offer_every_segment_carries_them(self) -> None:
        net = Net.pair(seed=1)
        client, server = connected_pair(net)
        client.send(payload(50_000, 1))
        server.send(payload(30_000, 2))
        net.run(
            lambda: len(net.b.data_received()) == 50_000 and len(net.a.data_received()) == 30_000
        )
        for conn in (client, server):
            self.assertTrue(conn.ts_ok)
            self.assertEqual(conn.mss, MSS - 12)
        for host in net.hosts:
            segs = host.segments()
            self.assertTrue(all(s.options.tsval is not None for s in segs), segs[:3])
            self.assertEqual(max(len(s.payload) for s in segs), MSS - 12)
            # our clock runs in milliseconds and never goes back
            clocks = [s.options.tsval for s in segs if s.options.tsval is not None]
            self.assertEqual(clocks, sorted(clocks))
        self.assertEqual(net.problems, [])

    def test_clock_is_milliseconds_from_an_offset_of_its_own(self) -> None:
        stack = listening_stack()
        _, first, synack = raw_established(stack, options=ts_syn())
        _, second, synack2 = raw_established(stack, sport=40001, options=ts_syn(), now=T0 + 0.25)
        assert synack.options.tsval is not None and synack2.options.tsval is not None
        self.assertEqual(synack.options.tsecr, PEER_SYN_TS)
        self.assertNotEqual(first.ts_offset, second.ts_offset)
        expected = (250 + (second.ts_offset or 0) - (first.ts_offset or 0)) & tcp.MASK
        self.assertEqual((synack2.options.tsval - synack.options.tsval) & tcp.MASK, expected)

    def test_off_when_either_side_does_not_offer(self) -> None:
        # the peer offers none: our SYN-ACK offers none back and no segment carries them
        stack = listening_stack()
        peer, conn, synack = raw_established(stack, options=syn_options(1460, 7, True))
        self.assertIsNone(synack.options.tsval)
        self.assertFalse(conn.ts_ok)
        self.assertEqual(conn.mss, MSS)
        conn.send(b"x" * 3000)
        stack.flush(T0)
        self.assertTrue(all(s.options.tsval is None for s in peer.take()))
        # we offer none (Stack(timestamps=False)) to a peer that does
        stack = listening_stack(timestamps=False)
        _, conn, synack = raw_established(stack, options=ts_syn())
        self.assertIsNone(synack.options.tsval)
        self.assertFalse(conn.ts_ok)
        # ... and between two of our stacks, one of them without
        a = Stack([A4], mtu=1280, rng=random.Random(1), timestamps=False)
        b = Stack([B4], mtu=1280, rng=random.Random(2))
        net = Net(a, b)
        client, server = connected_pair(net)
        self.assertEqual((client.ts_ok, server.ts_ok), (False, False))
        self.assertEqual((client.mss, server.mss), (MSS, MSS))


class EchoTests(SynchronousTestCase):
    """What the ACKs echo, with a raw peer that sends data stamped with its own clock."""

    def setUp(self) -> None:
        self.stack = listening_stack()
        self.peer, self.conn, _ = raw_established(self.stack, options=ts_syn())
        self.start = self.peer.seq

    def data(self, index: int, tsval: int, now: float) -> list[Seg]:
        """Segment ``index`` (1000 bytes each) stamped ``tsval``."""
        return self.peer.send(
            ACK,
            now,
            seq=(self.start + 1000 * index) & tcp.MASK,
            data=bytes(1000),
            options=timestamp_option(tsval, 0),
        )

    def test_a_late_original_is_echoed_not_the_segments_after_it(self) -> None:
        t = T0 + 0.1
        self.data(0, 100, t)
        self.data(1, 101, t)  # two in order: the ACK goes out, echoing the first's clock
        out = self.data(3, 103, t)  # segment 2 is late: a duplicate ACK
        self.assertEqual(echoes(out), [100])
        out = self.data(4, 104, t)
        self.assertEqual(echoes(out), [100])  # out-of-order data does not move TS.Recent
        out = self.data(2, 102, t + 0.005)  # the original, late: it fills the hole
        self.assertEqual([s.ack for s in out], [(self.start + 5000) & tcp.MASK])
        # its own clock, earlier than any retransmission's: the sender may undo (Eifel)
        self.assertEqual(echoes(out), [102])

    def test_a_retransmission_first_then_the_original_old_by_its_clock(self) -> None:
        t = T0 + 0.1
        self.data(0, 100, t)
        self.data(1, 101, t)
        self.data(3, 103, t)
        out = self.data(2, 110, t + 0.004)  # the retransmission fills the hole
        self.assertEqual(echoes(out), [110])
        before = dict(self.stack.counters)
        got = len(self.conn_data())
        out = self.data(2, 102, t + 0.005)  # ... then the original: PAWS, and a D-SACK
        counters = self.stack.counters
        self.assertEqual(counters.get("tcp_paws_drops", 0), before.get("tcp_paws_drops", 0) + 1)
        self.assertEqual(len(out), 1)
        self.assertEqual(
            out[0].options.sack[:1],
            [((self.start + 2000) & tcp.MASK, (self.start + 3000) & tcp.MASK)],
        )
        self.assertEqual(echoes(out), [110])  # TS.Recent did not go back
        self.assertEqual(len(self.conn_data()), got)  # nothing delivered twice

    def conn_data(self) -> bytes:
        return b"".join(
            bytes(d) for k, c, d in self.stack.events if k == tcp.DATA and c is self.conn
        )

    def test_new_data_with_an_old_clock_is_dropped(self) -> None:
        """PAWS (RFC 7323 5.3): an old duplicate of a wrapped sequence number must not be
        taken as new data. A RST is not held to it, and a clock not heard for 24 days is
        not trusted."""
        t = T0 + 0.1
        self.data(0, 1000, t)
        got = len(self.conn_data())
        self.data(1, 900, t)  # in sequence, but from before TS.Recent
        self.assertEqual(len(self.conn_data()), got)
        self.assertEqual(self.stack.counters.get("tcp_paws_drops"), 1)
        self.assertEqual(self.conn.rcv_nxt - self.conn.irs - 1, 1000)
        # wrapping: a clock just past 2**32 is newer, not older
        self.data(1, (1000 + (1 << 31) - 1) & tcp.MASK, t)
        self.assertEqual(self.conn.rcv_nxt - self.conn.irs - 1, 2000)
        # after 24 days of silence an old clock is taken (RFC 7323 5.5)
        self.data(2, 5, t + PAWS_IDLE + 1)
        self.assertEqual(self.conn.rcv_nxt - self.conn.irs - 1, 3000)
        self.assertEqual(self.stack.counters.get("tcp_paws_drops"), 1)
        # a reset with an old clock still resets
        self.peer.send(
            RST | ACK,
            t + PAWS_IDLE + 2,
            seq=(self.start + 3000) & tcp.MASK,
            options=timestamp_option(1, 0),
        )
        self.assertIs(self.conn.state, tcp.State.CLOSED)

    def test_a_segment_without_them_is_taken(self) -> None:
        """As Linux does (RFC 7323 3.2 would allow dropping it)."""
        t = T0 + 0.1
        self.data(0, 100, t)
        self.peer.send(ACK, t, seq=(self.start + 1000) & tcp.MASK, data=bytes(1000))
        self.assertEqual(self.conn.rcv_nxt - self.conn.irs - 1, 2000)
        self.assertEqual(self.conn.ts_recent, 100)

    def test_our_syn_offers_and_takes_the_answer(self) -> None:
        stack = Stack([B4], mtu=1280, rng=random.Random(3))
        conn = stack.connect(B4, A4, 80, T0)
        peer = RawPeer(stack, A4, B4, 80, conn.local[1], iss=9000)
        syn = peer.take()[0]
        self.assertTrue(syn.has(SYN))
        self.assertIsNotNone(syn.options.tsval)
        self.assertEqual(syn.options.tsecr, 0)
        peer.ack = (syn.seq + 1) & tcp.MASK
        out = peer.send(
            SYN | ACK, T0 + 0.02, options=syn_options(1460, 7, True, (777, syn.options.tsval or 0))
        )
        peer.seq = peer.iss + 1
        self.assertTrue(conn.ts_ok)
        self.assertEqual(echoes([s for s in out if s.flags & ACK]), [777])


class LateAckTests(SynchronousTestCase):
    """Our sender's side: ACKs that a reordering path delivers late (Linux's rules)."""

    def setUp(self) -> None:
        self.stack = listening_stack()
        self.peer, self.conn, _ = raw_established(self.stack, options=ts_syn())
        self.conn.send(bytes(20 * self.conn.mss))
        self.stack.flush(T0 + 0.01)
        self.segs = [s for s in self.peer.take() if s.payload]
        self.assertGreaterEqual(len(self.segs), 8)

    def ack(self, tsval: int, upto: int, sack: tuple[int, int] | None = None) -> None:
        options = timestamp_option(tsval, 0)
        if sack is not None:
            first, last = self.segs[sack[0]], self.segs[sack[1]]
            options += sack_option([(first.seq, (last.seq + len(last.payload)) & tcp.MASK)])
        self.peer.send(ACK, T0 + 0.03, ack=self.segs[upto].seq, options=options)

    def test_a_late_duplicate_ack_still_counts(self) -> None:
        """A duplicate ACK with an older clock (held on the way) is taken: its SACK block
        marks what it reports, as Linux's tcp_disordered_ack allows."""
        self.ack(200, upto=1)
        self.ack(205, upto=1, sack=(3, 3))  # the newer duplicate ACK came first
        sacked = self.conn.sacked_bytes
        self.ack(201, upto=1, sack=(5, 6))  # the older one, late
        self.assertEqual(self.conn.sacked_bytes, sacked + 2 * len(self.segs[5].payload))
        self.assertEqual(self.stack.counters.get("tcp_paws_drops", 0), 0)
        self.assertEqual(self.conn.ts_recent, 205)  # TS.Recent does not go back

    def test_an_overtaken_ack_still_counts_its_sack_blocks(self) -> None:
        """An ACK behind snd_una with an older clock (newer ACKs overtook it on a reordering
        path): not a new acknowledgement, but its SACK and D-SACK blocks are read (the D-SACK
        that undoes a spurious retransmission often rides on one)."""
        self.ack(200, upto=2)
        self.ack(205, upto=4)
        self.ack(201, upto=2, sack=(5, 6))  # overtaken: SACK news
        self.assertEqual(self.conn.snd_una & tcp.MASK, self.segs[4].seq)
        self.assertEqual(self.conn.sacked_bytes, 2 * len(self.segs[5].payload))
        self.ack(202, upto=2, sack=(0, 0))  # and a D-SACK: the first segment came twice
        self.assertEqual(self.stack.counters.get("tcp_dsack_received"), 1)
        self.assertEqual(self.stack.counters.get("tcp_paws_drops", 0), 0)
        self.assertEqual(self.conn.ts_recent, 205)

    def test_an_old_cumulative_ack_is_dropped_a_tick_is_tolerated(self) -> None:
        self.ack(200, upto=2)
        self.ack(199, upto=3)  # one tick older: taken (Linux's TCP_PAWS_WINDOW)
        self.assertEqual(self.conn.snd_una & tcp.MASK, self.segs[3].seq)
        self.assertEqual(self.conn.ts_recent, 200)
        self.ack(150, upto=4)  # news, but its clock is far older: an old duplicate
        self.assertEqual(self.conn.snd_una & tcp.MASK, self.segs[3].seq)
        self.assertEqual(self.stack.counters.get("tcp_paws_drops"), 1)


class RetransmissionFitsTests(SynchronousTestCase):
    def test_sack_blocks_never_push_a_full_retransmission_over_the_mtu(self) -> None:
        """A full segment sent again while we hold out-of-order data: its ACK's SACK block
        rides only if it fits, with timestamps or without (the check once skipped a 12-byte
        SACK option on a connection without them: a 1,292-byte packet on a 1,280 MTU)."""
        for options in (ts_syn(), syn_options(1460, 7, True)):
            stack = listening_stack()
            peer, conn, _ = raw_established(stack, options=options)
            conn.send(bytes(5 * conn.mss))
            stack.flush(T0)
            first = next(s for s in peer.take() if s.payload)
            hole = dict(options=timestamp_option(100, 0)) if conn.ts_ok else {}
            peer.send(
                ACK, T0 + 0.01, seq=(peer.seq + 1000) & tcp.MASK, data=bytes(500), ack=first.seq,
                **hole,
            )  # fmt: skip
            self.assertTrue(conn.ooo)
            stack.tick(T0 + 3)  # the RTO: the first segment again
            stack.flush(T0 + 3)
            again = [s for s in peer.take() if s.payload]
            self.assertEqual(again[0].payload, first.payload)
            self.assertLessEqual(max(s.length for s in again), 1280)
            self.assertEqual(again[0].options.tsval is not None, conn.ts_ok)
