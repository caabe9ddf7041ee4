"""Abandoned connections: a reset reaches a paused reader at once; data that makes no progress
(unacknowledged, behind a zero window, after the application let go) ends in a bounded time."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.netstack import tcp
from funnel_tw.netstack.segment import RST
from funnel_tw.netstack.tcp import State

from .tcp_harness import MASK, Host, Net, connected_pair, payload

BUFFER = 64 * 1024


class Stalled(SynchronousTestCase):
    """The client sends more than the server's window while the server does not read."""

    def setUp(self) -> None:
        self.net = Net.pair(receive_buffer=BUFFER)
        self.client, self.server = connected_pair(self.net)
        self.server.pause_reading()
        self.client.send(payload(4 * BUFFER))
        self.net.run(lambda: self.client.snd_wnd == 0 and self.client.t_persist is not None)
        self.closed_at = self.net.now

    def silence(self, host: Host) -> None:
        """From now on every packet ``host`` sends is lost (it vanished)."""
        self.net.drop = lambda sender, packet: sender is host

    def resets(self, host: Host) -> list[int]:
        return [s.seq for s in host.segments() if s.has(RST)]


class ResetWhilePausedTests(Stalled):
    def test_reset_reaches_a_paused_reader_at_once(self) -> None:
        net, server = self.net, self.server
        self.assertTrue(server.reading_paused)
        self.assertGreater(server.held_bytes, 0)
        self.client.abort()
        net.pump()
        net.step()  # the RST arrives
        self.assertEqual(net.b.closed.get(server), "connection reset by peer")
        self.assertEqual(server.held, [])  # what it held is freed
        self.assertEqual(net.b.stack.connections, {})

    def test_reset_after_a_timeout_is_sent_at_the_highest_sequence(self) -> None:
        """After a retransmission timeout we send from snd_una again; a reset sent there would
        fall below what the peer expects next and be dropped, leaving the peer's flow behind."""
        net = Net.pair()
        client, server = connected_pair(net)
        net.drop = lambda sender, packet: sender is net.b  # received, but the ACKs are lost
        client.send(payload(20_000))
        net.run(lambda: client.retransmits >= 1)
        self.assertEqual(server.rcv_nxt, client.snd_max)
        net.drop = None
        client.abort()
        net.run(lambda: server in net.b.closed, timeout=1)
        self.assertEqual(self.resets(net.a), [client.snd_max & MASK])
        self.assertEqual(net.b.closed[server], "connection reset by peer")


class ZeroWindowForeverTests(Stalled):
    def test_answered_probes_keep_the_connection_without_a_user_timeout(self) -> None:
        self.net.run_for(1800)
        self.assertIs(self.client.state, State.ESTABLISHED)
        self.assertEqual(self.net.a.closed, {})

    def test_user_timeout_bounds_a_zero_window(self) -> None:
        net, client, server = self.net, self.client, self.server
        client.set_user_timeout(20.0)
        took = net.run(lambda: client in net.a.closed, timeout=100)
        # armed at the next output after the last progress: within a probe of the window closing
        self.assertLessEqual(net.now - self.closed_at, 20.0 + 0.5)
        self.assertGreaterEqual(took, 19.0)
        self.assertEqual(net.a.closed[client], "user timeout")
        self.assertEqual(net.a.stack.counters["tcp_user_timeouts"], 1)
        # the peer hears of it and frees what it held
        net.run(lambda: server in net.b.closed, timeout=1)
        self.assertEqual(net.b.closed[server], "connection reset by peer")
        self.assertEqual(net.a.stack.connections, {})
        self.assertEqual(net.b.stack.connections, {})

    def test_progress_restarts_the_user_timeout(self) -> None:
        net, client, server = self.net, self.client, self.server
        client.set_user_timeout(20.0)
        for _ in range(5):  # the reader takes a little every 15 s: never 20 s without progress
            net.run_for(15)
            server.resume_reading()
            net.run(lambda: server.held_bytes > 0 or client.send_buffered == 0, timeout=5)
            server.pause_reading()
        self.assertIs(client.state, State.ESTABLISHED)

    def test_unanswered_probes_give_up(self) -> None:
        """The peer vanished during a zero window: probes are retransmissions too."""
        net, client = self.net, self.client
        self.silence(net.b)
        net.run(lambda: client in net.a.closed, timeout=3600)
        self.assertEqual(net.a.closed[client], "connection timed out")
        self.assertEqual(net.a.stack.counters["tcp_probe_timeouts"], 1)
        self.assertEqual(net.a.stack.counters["tcp_window_probes"], tcp.MAX_RETRANSMITS)


class UnacknowledgedTests(SynchronousTestCase):
    def test_user_timeout_bounds_unacknowledged_data(self) -> None:
        net = Net.pair()
        client, _ = connected_pair(net)
        client.set_user_timeout(5.0)
        net.drop = lambda sender, packet: sender is net.b
        start = net.now
        client.send(b"x" * 5000)
        net.run(lambda: client in net.a.closed, timeout=60)
        self.assertAlmostEqual(net.now - start, 5.0, delta=0.01)
        self.assertEqual(net.a.closed[client], "user timeout")
        self.assertLess(client.retransmits, tcp.MAX_RETRANSMITS)

    def test_no_user_timeout_while_idle(self) -> None:
        net = Net.pair()
        client, _ = connected_pair(net)
        client.set_user_timeout(5.0)
        client.send(b"x" * 5000)
        net.run_for(600)
        self.assertIs(client.state, State.ESTABLISHED)
        self.assertIsNone(client.t_stall)


class OrphanTests(Stalled):
    def test_orphan_behind_a_zero_window_is_reset(self) -> None:
        net, client, server = self.net, self.client, self.server
        client.orphan(net.now)
        net.run(lambda: client in net.a.closed, timeout=3600)
        self.assertAlmostEqual(net.now - self.closed_at, tcp.ORPHAN_TIMEOUT, delta=0.5)
        self.assertEqual(net.a.closed[client], "orphan timeout")
        net.run(lambda: server in net.b.closed, timeout=1)
        self.assertEqual(net.b.closed[server], "connection reset by peer")

    def test_orphaned_reader_releases_what_it_held(self) -> None:
        """The paused side lets go: its window reopens, the sender finishes and both close."""
        net, client, server = self.net, self.client, self.server
        server.orphan(net.now)
        self.assertEqual(server.held_bytes, 0)
        client.close()
        net.run(lambda: client in net.a.closed and server in net.b.closed, timeout=60)
        self.assertIsNone(net.a.closed[client])
        self.assertIsNone(net.b.closed[server])
        self.assertEqual(net.b.data_received(), b"")  # nothing delivered after letting go

    def test_fin_wait_2_is_bounded_for_an_orphan(self) -> None:
        net = Net.pair()
        client, server = connected_pair(net)
        client.orphan(net.now)
        net.run(lambda: client.state is State.FIN_WAIT_2)
        start = net.now
        net.run(lambda: client in net.a.closed, timeout=600)
        self.assertAlmostEqual(net.now - start, tcp.ORPHAN_TIMEOUT, delta=0.01)
        net.run(lambda: server in net.b.closed, timeout=1)
        self.assertEqual(net.b.closed[server], "connection reset by peer")

    def test_half_close_is_not_an_orphan(self) -> None:
        net = Net.pair()
        client, _ = connected_pair(net)
        client.close()
        net.run(lambda: client.state is State.FIN_WAIT_2)
        net.run_for(600)
        self.assertIs(client.state, State.FIN_WAIT_2)

    def test_orphan_of_a_closed_connection_is_harmless(self) -> None:
        net = Net.pair()
        client, _ = connected_pair(net)
        client.abort()
        client.orphan(net.now)
        self.assertIs(client.state, State.CLOSED)
        self.assertIsNone(client.next_deadline())
