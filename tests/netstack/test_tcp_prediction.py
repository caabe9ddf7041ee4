"""Header prediction (Connection.segment_arrived's fast path for the next in-order data):
it must fire for plain in-order data, and every segment it lets pass must get what the
general path would give, so each condition it checks is tested by a segment that fails it
and needs the general path's work (a window update, SACK/D-SACK news, an ACK that is news,
a FIN, another state)."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.netstack import tcp
from funnel_tw.netstack.segment import ACK, FIN, PSH, sack_option
from funnel_tw.netstack.tcp import Connection, State

from .tcp_harness import T0, RawPeer, listening_stack, raw_established


class PredictionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stack = listening_stack()
        self.peer: RawPeer
        self.conn: Connection
        self.peer, self.conn, synack = raw_established(self.stack)
        self.peer.ack = synack.seq + 1
        self.stack.events.clear()
        self.predicted = 0
        real = Connection._in_order_data

        def counting(conn: Connection, *args: Any) -> None:
            self.predicted += 1
            real(conn, *args)

        self.patch(Connection, "_in_order_data", counting)

    def delivered(self) -> bytes:
        return b"".join(d for k, _, d in self.stack.events if k == tcp.DATA)

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

    def test_an_ack_that_is_news_takes_the_general_path(self) -> None:
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
