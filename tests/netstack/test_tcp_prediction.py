"""Header prediction (Connection.segment_arrived's fast path for the next in-order data):
it must fire for plain in-order data, and every segment it lets pass must get what the
general path would give, so each condition it checks is tested by a segment that fails it
and needs the general path's work (a window update, SACK/D-SACK news, an ACK that is news,
a FIN, another state)."""

from __future__ import annotations

import hashlib
import random
from typing import Any

from twisted.python.monkey import MonkeyPatcher
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.netstack import tcp
from funnel_tw.netstack.segment import ACK, FIN, PSH, sack_option
from funnel_tw.netstack.tcp import Connection, State

from .tcp_harness import (
    B4,
    T0,
    LinkProfile,
    Net,
    RawPeer,
    listening_stack,
    payload,
    random_profile,
    raw_established,
)


class _Predicting(SynchronousTestCase):
    """An established connection with a raw peer; ``predicted`` counts the calls of the
    prediction named ``counted``."""

    counted = ""

    def setUp(self) -> None:
        self.stack = listening_stack()
        self.peer: RawPeer
        self.conn: Connection
        self.peer, self.conn, synack = raw_established(self.stack)
        self.peer.ack = synack.seq + 1
        self.stack.events.clear()
        self.predicted = 0
        real = getattr(Connection, self.counted)

        def counting(conn: Connection, *args: Any) -> None:
            self.predicted += 1
            real(conn, *args)

        self.patch(Connection, self.counted, counting)

    def delivered(self) -> bytes:
        return b"".join(d for k, _, d in self.stack.events if k == tcp.DATA)


class PredictionTests(_Predicting):
    counted = "_in_order_data"

    def our_data_acked(self, n: int) -> None:
        """We send ``n`` bytes and the peer acknowledges them: snd_una moves past them."""
        self.conn.send(b"s" * n)
        self.stack.flush(T0)
        sent = sum(len(s.payload) for s in self.peer.take())
        self.assertEqual(sent, n)
        self.peer.ack += n
        self.peer.send(ACK, T0)

    def test_in_order_data_is_predicted(self) -> None:
        for i in range(3):
            self.peer.push(b"abc%d" % i, T0, flags=ACK | PSH if i % 2 else ACK)
        self.assertEqual(self.predicted, 3)
        self.assertEqual(self.delivered(), b"abc0abc1abc2")
        self.assertEqual(self.conn.rcv_nxt, self.peer.seq)

    def test_a_pure_ack_is_not_data(self) -> None:
        self.assertEqual(self.peer.send(ACK, T0), [])  # nothing to answer
        self.assertEqual(self.predicted, 0)

    def test_a_new_window_takes_the_general_path(self) -> None:
        self.peer.push(b"first", T0)
        self.peer.push(b"second", T0, window=1000)
        self.assertEqual(self.predicted, 1)
        self.assertEqual(self.conn.snd_wnd, 1000 << self.conn.snd_wscale)

    def test_sack_blocks_take_the_general_path(self) -> None:
        self.our_data_acked(300)
        una = self.conn.snd_una
        # a D-SACK: the peer reports our last 100 bytes as received twice
        dsack = sack_option([((una - 100) & 0xFFFFFFFF, una & 0xFFFFFFFF)])
        self.peer.push(b"data", T0, options=dsack)
        self.assertEqual(self.predicted, 0)
        self.assertEqual(self.stack.counters.get("tcp_dsack_received"), 1)
        self.assertEqual(self.delivered(), b"data")

    def test_an_ack_that_is_news_is_not_this_prediction(self) -> None:
        # (acknowledging all we sent, it is the second one's: AckingPredictionTests)
        self.conn.send(b"s" * 100)
        self.stack.flush(T0)
        self.peer.take()
        self.peer.ack += 100
        self.peer.push(b"data", T0)
        self.assertEqual(self.predicted, 0)
        self.assertEqual(self.conn.snd_una, self.conn.snd_max)
        self.assertEqual(self.delivered(), b"data")

    def test_an_ack_beyond_what_we_sent_takes_the_general_path(self) -> None:
        self.peer.push(b"data", T0, ack=self.peer.ack + 100)
        self.assertEqual(self.predicted, 0)
        self.assertEqual(self.stack.counters.get("tcp_ack_beyond_sent"), 1)
        self.assertEqual(self.delivered(), b"")  # dropped (RFC 9293 3.10.7.4)

    def test_filling_a_gap_is_predicted_and_delivers_what_was_held(self) -> None:
        self.peer.send(ACK, T0, seq=self.peer.seq + 5, data=b"later")  # (seq stays)
        self.peer.push(b"first", T0)
        self.assertEqual(self.predicted, 1)
        self.assertEqual(self.delivered(), b"firstlater")
        self.assertEqual(self.conn.ooo_bytes, 0)

    def test_data_with_ours_in_flight_takes_the_general_path(self) -> None:
        self.conn.send(b"s" * 100)
        self.stack.flush(T0)
        self.peer.take()
        self.peer.push(b"data", T0)  # acknowledges none of it
        self.assertEqual(self.predicted, 0)
        self.assertEqual(self.delivered(), b"data")

    def test_fin_takes_the_general_path(self) -> None:
        self.peer.push(b"last", T0, flags=ACK | FIN)
        self.assertEqual(self.predicted, 0)
        self.assertIs(self.conn.state, State.CLOSE_WAIT)
        self.assertEqual(self.delivered(), b"last")
        self.assertIn(tcp.EOF, [k for k, _, _ in self.stack.events])

    def test_out_of_order_takes_the_general_path(self) -> None:
        self.peer.send(ACK, T0, seq=self.peer.seq + 10, data=b"x")  # a gap before it
        self.assertEqual(self.predicted, 0)
        self.assertEqual(self.delivered(), b"")
        self.assertEqual(self.conn.ooo_bytes, 1)

    def test_beyond_the_window_takes_the_general_path(self) -> None:
        self.conn.pause_reading()  # the window closes as data is held
        chunk = b"w" * 1400
        while self.conn.rcv_adv - self.conn.rcv_nxt >= len(chunk):
            self.peer.push(chunk, T0)
        room = self.conn.rcv_adv - self.conn.rcv_nxt
        predicted = self.predicted
        self.peer.push(chunk, T0)  # trimmed to the window by the general path
        self.assertEqual(self.predicted, predicted)
        self.assertEqual(self.conn.rcv_adv, self.conn.rcv_nxt)
        self.assertEqual(self.conn.held_bytes, predicted * len(chunk) + room)


class AckingPredictionTests(_Predicting):
    """The second prediction: in-order data that acknowledges everything we sent, as a
    request/response connection's every segment does (the answer acknowledges the request,
    the next request the answer)."""

    counted = "_in_order_data_acking_all"

    def we_send(self, n: int, now: float = T0) -> int:
        """We send ``n`` bytes (taken off the wire): how many segments."""
        self.conn.send(b"s" * n)
        self.stack.flush(now)
        segs = self.peer.take()
        self.assertEqual(sum(len(s.payload) for s in segs), n)
        return len(segs)

    def test_an_answer_acknowledging_all_is_predicted(self) -> None:
        srtt = self.conn.srtt
        assert srtt is not None
        for i in range(3):
            self.we_send(100 + i, T0 + i * 0.01)
            self.peer.ack += 100 + i
            self.peer.push(b"answer%d" % i, T0 + i * 0.01 + 0.002)
            srtt = 0.875 * srtt + 0.125 * 0.002
        self.assertEqual(self.predicted, 3)
        self.assertEqual(self.delivered(), b"answer0answer1answer2")
        conn = self.conn
        self.assertEqual(conn.snd_una, conn.snd_max)
        self.assertEqual((conn.t_rto, conn.t_tlp, conn.t_reo), (None, None, None))
        self.assertAlmostEqual(conn.srtt, srtt)  # the answers' round trips were sampled
        self.assertEqual(conn.rtx, [])
        self.assertEqual(conn.snd_wl2, conn.snd_una)

    def test_a_partial_ack_takes_the_general_path(self) -> None:
        self.assertGreater(self.we_send(4000), 1)
        self.peer.ack += 1000  # not all of it
        self.peer.push(b"data", T0)
        self.assertEqual(self.predicted, 0)
        self.assertLess(self.conn.snd_una, self.conn.snd_max)
        self.assertEqual(self.delivered(), b"data")

    def test_our_fin_acknowledged_takes_the_general_path(self) -> None:
        self.conn.send(b"s" * 100)
        self.conn.close()
        self.stack.flush(T0)
        self.peer.take()
        self.peer.ack += 101  # the data and the FIN
        self.peer.push(b"data", T0)
        self.assertEqual(self.predicted, 0)
        self.assertIs(self.conn.state, State.FIN_WAIT_2)

    def test_a_loss_probe_or_episode_takes_the_general_path(self) -> None:
        """Each state in which an ACK of everything still has work in _ack_arrived."""
        conn = self.conn
        self.assertTrue(conn._all_acked_plainly())
        for name, value in [
            ("in_recovery", True),
            ("in_loss", True),
            ("lost_bytes", 1),
            ("sacked_bytes", 1),
            ("reno_sacked", 1),
            ("tlp_end", conn.snd_max),
            ("undo", object()),
            ("fin_seq", conn.snd_max),
        ]:
            saved = getattr(conn, name)
            setattr(conn, name, value)
            self.assertFalse(conn._all_acked_plainly(), name)
            setattr(conn, name, saved)
        conn.undo_done, conn.undo_older = True, [object()]
        self.assertFalse(conn._all_acked_plainly())


def _one_ack(plain: bool, sent: int, answer_after: float) -> tuple[Any, ...]:
    """A connection sends ``sent`` bytes in one flush; the peer answers with data that
    acknowledges all of it ``answer_after`` seconds later. What the connection holds then,
    with the acking prediction (``plain``) or through the general path."""
    stack = listening_stack()
    peer, conn, synack = raw_established(stack)
    peer.ack = synack.seq + 1
    conn.drained_pending = True  # so that DRAINED is due once the buffer empties
    conn.user_timeout = 30.0  # a stall clock, which the acknowledgement stops
    conn.keepalive_idle = 60.0  # and a keepalive clock, which the answer restarts
    conn.send(b"s" * sent)
    stack.flush(T0)
    peer.take()
    peer.ack += sent
    patcher = MonkeyPatcher()
    if not plain:
        patcher.addPatch(Connection, "_all_acked_plainly", lambda conn: False)
    patcher.runWithPatches(peer.push, b"answer", T0 + answer_after)
    return (
        conn.cwnd,
        conn.ssthresh,
        conn.cc.state(),
        conn.srtt,
        conn.rttvar,
        conn.rto,
        conn.min_rtt,
        conn.rack_rtt,
        conn.rack_xmit,
        conn.rack_end,
        conn.rack_fack,
        conn.t_rto,
        conn.t_tlp,
        conn.t_reo,
        conn.t_stall,
        conn.t_delack,
        conn.t_keepalive,
        conn.last_heard,
        conn.snd_wl1,
        conn.snd_wl2,
        conn.snd_una,
        conn.snd_nxt,
        conn.rtx,
        len(conn.in_flight),
        conn.ack_pending,
        conn.drained_pending,
        conn.retransmits,
        conn.dupacks,
        [(kind, data) for kind, _, data in stack.events],
    )


class ShortcutEquivalenceTests(SynchronousTestCase):
    """The request/response shortcuts (the acking prediction, ``_all_acked``, and output's
    ``_nothing_to_send``) must change nothing a peer can see: seeded request/response
    exchanges over clean and lossy, reordering links emit the same packets, and end in the
    same congestion and timer state, with and without them."""

    def exchanges(self, shortcuts: bool) -> tuple[str, list[tuple[Any, ...]], int]:
        taken = 0
        if not shortcuts:
            self.patch(Connection, "_all_acked_plainly", lambda conn: False)
            self.patch(Connection, "_nothing_to_send", lambda conn: False)
        else:
            real = Connection._all_acked

            def counting(conn: Connection, now: float) -> None:
                nonlocal taken
                taken += 1
                real(conn, now)

            self.patch(Connection, "_all_acked", counting)
        digest = hashlib.sha256()
        states: list[tuple[Any, ...]] = []
        for seed in range(4):
            rng = random.Random(seed + 300)
            profile = random_profile(rng) if seed % 2 else LinkProfile()
            net = Net.pair(profile=profile, seed=seed + 300)
            net.b.stack.listen(80)
            clients = [net.a.connect(B4, 80) for _ in range(3)]
            net.run(lambda accepted=net.b.accepted: len(accepted) == 3)
            servers = [
                next(s for s in net.b.accepted if s.remote[1] == c.local[1]) for c in clients
            ]
            for r in range(40):
                for i, conn in enumerate(clients):
                    conn.send(payload(100 + (r * 37 + i) % 900, seed * 1000 + r))
                net.run_for(0.003 + (r % 5) * 0.002)
                for i, conn in enumerate(servers):
                    conn.send(payload(200 + (r * 53 + i) % 3000, seed * 2000 + r))
                net.run_for(0.001 + (r % 3) * 0.004)
            net.run_for(2.0)
            for packet in net.a.sent + net.b.sent:
                digest.update(packet)
            for conn in clients + servers:
                # (not the pacer's or the window validation's last values: with nothing
                # sent after the last idle output, only the shortcut-less run refreshed them)
                states.append(
                    (
                        conn.cwnd,
                        conn.ssthresh,
                        conn.srtt,
                        conn.rttvar,
                        conn.rto,
                        conn.min_rtt,
                        conn.snd_una,
                        conn.snd_max,
                        conn.rcv_nxt,
                        conn.cc.state(),
                    )
                )
            states.append((repr(net.a.stack.stats()), repr(net.b.stack.stats())))
        return digest.hexdigest(), states, taken

    def test_one_ack_leaves_what_the_general_path_leaves(self) -> None:
        # a small answer; a whole initial window in slow start (cwnd grows); a late answer
        for sent, after in [(100, 0.002), (10 * 1240, 0.03), (3000, 1.5)]:
            predicted = _one_ack(True, sent, after)
            self.assertEqual(predicted, _one_ack(False, sent, after), (sent, after))
        self.assertGreater(_one_ack(True, 10 * 1240, 0.03)[0], 10 * 1240)  # it grew

    def test_same_packets_and_state_with_and_without_the_shortcuts(self) -> None:
        fast, fast_states, taken = self.exchanges(True)
        self.assertGreater(taken, 300)  # the shortcuts were taken, on every link
        slow, slow_states, _ = self.exchanges(False)
        self.assertEqual(fast_states, slow_states)
        self.assertEqual(fast, slow)
