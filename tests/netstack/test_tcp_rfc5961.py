"""RFC 5961 (blind in-window attacks) and segment acceptability (RFC 9293 3.10.7.4)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.netstack import tcp
from funnel_tw.netstack.segment import ACK, RST, SYN, syn_options
from funnel_tw.netstack.tcp import State

from .tcp_harness import (
    A4,
    B4,
    MASK,
    T0,
    RawPeer,
    Seg,
    listening_stack,
    raw_established,
)

MIB = tcp.RECEIVE_BUFFER  # the first window (autotuning grows it later)


class Rfc5961Base(SynchronousTestCase):
    options: bytes | None = None

    def setUp(self) -> None:
        self.stack = listening_stack(challenge_ack_limit=1000)
        self.peer, self.conn, _ = raw_established(self.stack, options=self.options)
        self.stack.events.clear()

    def assert_challenge_ack(self, out: list[Seg]) -> None:
        self.assertEqual(len(out), 1, out)
        seg = out[0]
        self.assertTrue(seg.is_pure_ack)
        self.assertEqual(seg.seq, self.conn.snd_nxt & MASK)
        self.assertEqual(seg.ack, self.conn.rcv_nxt & MASK)

    def assert_alive(self) -> None:
        self.assertIs(self.conn.state, State.ESTABLISHED)
        self.assertNotIn(tcp.CLOSED, [k for k, _, _ in self.stack.events])

    def delivered(self) -> bytes:
        return b"".join(d for k, _, d in self.stack.events if k == tcp.DATA)


class ResetTests(Rfc5961Base):
    def test_exact_rst_closes(self) -> None:
        out = self.peer.send(RST, T0)
        self.assertEqual(out, [])
        self.assertIs(self.conn.state, State.CLOSED)
        self.assertEqual(self.stack.events, [(tcp.CLOSED, self.conn, "connection reset by peer")])
        self.assertEqual(self.stack.connections, {})

    def test_exact_rst_ack_closes(self) -> None:
        self.peer.send(RST | ACK, T0)
        self.assertIs(self.conn.state, State.CLOSED)

    def test_in_window_rst_gets_a_challenge_ack(self) -> None:
        for offset in (1, 100, 60_000, MIB - 1):
            out = self.peer.send(RST, T0, seq=self.peer.seq + offset)
            self.assert_challenge_ack(out)
            self.assert_alive()
        self.assertEqual(self.stack.counters["tcp_rst_challenged"], 4)

    def test_challenged_peer_answers_with_exact_rst(self) -> None:
        out = self.peer.send(RST, T0, seq=self.peer.seq + 10)
        self.assertEqual(out[0].ack, self.peer.seq & MASK)
        self.peer.send(RST, T0, seq=out[0].ack)
        self.assertIs(self.conn.state, State.CLOSED)

    def test_out_of_window_rst_is_ignored(self) -> None:
        for seq in (self.peer.seq - 1, self.peer.seq + MIB + 10, self.peer.seq + (1 << 31)):
            self.assertEqual(self.peer.send(RST, T0, seq=seq), [])
            self.assert_alive()
        self.assertNotIn("tcp_rst_challenged", self.stack.counters)

    def test_rst_in_syn_received(self) -> None:
        stack = listening_stack()
        peer = RawPeer(stack, A4, B4, 6000, 80)
        peer.syn(T0)
        self.assertEqual(stack.listeners[80], 1)
        out = peer.send(RST, T0, seq=peer.seq + 50)
        self.assertEqual(len(out), 1)  # challenged
        self.assertEqual(len(stack.connections), 1)
        peer.send(RST, T0)
        self.assertEqual(stack.connections, {})
        self.assertEqual(stack.listeners[80], 0)
        self.assertEqual(stack.events, [])  # never accepted: nobody to tell


class SynTests(Rfc5961Base):
    def test_in_window_syn_gets_a_challenge_ack(self) -> None:
        for flags in (SYN, SYN | ACK):
            out = self.peer.send(flags, T0, options=syn_options(1460, 7, True))
            self.assert_challenge_ack(out)
            self.assert_alive()
        self.assertEqual(self.stack.counters["tcp_syn_challenged"], 2)

    def test_old_syn_gets_an_ack(self) -> None:
        out = self.peer.send(SYN, T0, seq=self.peer.iss)
        self.assert_challenge_ack(out)
        self.assert_alive()

    def test_syn_with_data_is_not_delivered(self) -> None:
        self.peer.send(SYN | ACK, T0, data=b"smuggled")
        self.assertEqual(self.delivered(), b"")
        self.assert_alive()


class AckTests(Rfc5961Base):
    options = syn_options(1460, None, True)  # no scaling: MAX.SND.WND stays 65535

    def test_ack_of_data_never_sent_is_answered_and_dropped(self) -> None:
        conn = self.conn
        rcv_nxt = conn.rcv_nxt
        out = self.peer.send(ACK, T0, ack=conn.snd_max + 5000, data=b"abc")
        self.assert_challenge_ack(out)
        self.assertEqual(conn.rcv_nxt, rcv_nxt)
        self.assertEqual(self.delivered(), b"")
        self.assertEqual(self.stack.counters["tcp_ack_beyond_sent"], 1)
        self.assert_alive()
        # the same data with a sane ACK is taken
        self.peer.send(ACK, T0, data=b"abc")
        self.assertEqual(self.delivered(), b"abc")

    def test_ack_too_old_gets_a_challenge_ack(self) -> None:
        conn = self.conn
        self.assertEqual(conn.max_snd_wnd, 0xFFFF)
        out = self.peer.send(ACK, T0, ack=conn.snd_una - 70_000, data=b"old")
        self.assert_challenge_ack(out)
        self.assertEqual(self.delivered(), b"")
        self.assertEqual(self.stack.counters["tcp_ack_too_old"], 1)

    def test_slightly_old_ack_is_fine(self) -> None:
        self.peer.push(b"data", T0, ack=self.conn.snd_una - 1000)
        self.assertEqual(self.delivered(), b"data")

    def test_ack_below_iss_on_a_fresh_connection(self) -> None:
        out = self.peer.send(ACK, T0, ack=self.conn.iss - 5, data=b"x")
        # within MAX.SND.WND below SND.UNA: acceptable, a plain old duplicate
        self.assertEqual(self.delivered(), b"x")
        self.assertLessEqual(len(out), 1)


class OutOfWindowTests(Rfc5961Base):
    def test_segment_beyond_the_window_is_dropped_and_counted(self) -> None:
        out = self.peer.send(ACK, T0, seq=self.peer.seq + MIB + 1, data=b"far")
        self.assert_challenge_ack(out)
        self.assertEqual(self.delivered(), b"")
        self.assertEqual(self.stack.counters["tcp_out_of_window"], 1)
        self.assertEqual(self.conn.ooo, [])

    def test_old_segment_is_dropped_and_counted(self) -> None:
        self.peer.push(b"fresh", T0)
        out = self.peer.send(ACK, T0, seq=self.peer.seq - 5, data=b"fresh")
        self.assertEqual(len(out), 1)
        self.assertEqual(out[0].ack, self.peer.seq & MASK)
        self.assertEqual(self.delivered(), b"fresh")
        self.assertEqual(self.stack.counters["tcp_out_of_window"], 1)

    def test_pure_ack_with_old_sequence_is_answered(self) -> None:
        out = self.peer.send(ACK, T0, seq=self.peer.seq - 1)
        self.assert_challenge_ack(out)

    def test_rst_far_away_in_both_directions(self) -> None:
        for delta in (-(1 << 30), 1 << 30):
            self.assertEqual(self.peer.send(RST | ACK, T0, seq=self.peer.seq + delta), [])
        self.assert_alive()


class ChallengeAckLimitTests(SynchronousTestCase):
    def test_global_limit_per_second(self) -> None:
        stack = listening_stack(challenge_ack_limit=5)
        peers = [raw_established(stack, sport=40000 + i)[0] for i in range(2)]
        answers = 0
        for i in range(20):
            peer = peers[i % 2]  # the limit is for the whole stack, not per connection
            answers += len(peer.send(RST, T0 + 0.5, seq=peer.seq + 10))
        self.assertEqual(answers, 5)
        self.assertEqual(stack.counters["tcp_rst_challenged"], 20)
        self.assertEqual(len(stack.connections), 2)
        # SYNs share the budget
        self.assertEqual(peers[0].send(SYN, T0 + 0.9), [])
        # a second later the budget is back
        self.assertEqual(len(peers[0].send(RST, T0 + 1.6, seq=peers[0].seq + 10)), 1)

    def test_default_limit_is_1000(self) -> None:
        stack = listening_stack()
        self.assertEqual(stack.challenge_ack_limit, 1000)
        peer, _, _ = raw_established(stack)
        answers = sum(len(peer.send(RST, T0, seq=peer.seq + 10)) for _ in range(1100))
        self.assertEqual(answers, 1000)
