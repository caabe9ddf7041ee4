"""Careful Resume (RFC 9959, tcp/resume.py) and the path memory behind it (paths.py).

Sans-IO: two stacks on the simulated link of tcp_harness, fixed time. The server (b) sends,
as the node does to the relay (a) that opened the connection.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.netstack import tcp
from funnel_tw.netstack.paths import PathMemory
from funnel_tw.netstack.tcp.resume import UNVALIDATED

from .tcp_harness import A4, B4, Host, LinkProfile, Net, Transfer, parse_seg, payload

SIZE = 8 << 20
WAN = LinkProfile(latency=0.025)  # 50 ms round trips, no loss


def download(net: Net, seed: int, size: int = SIZE) -> tuple[float, Transfer]:
    """One new connection that downloads ``size`` bytes; the simulated seconds it took."""
    transfer = Transfer(net, b"", payload(size, seed), port=1000 + seed).start()
    took = transfer.run()
    assert transfer.client is not None
    assert net.a.data_received(transfer.client) == payload(size, seed)
    return took, transfer


def counter(host: Host, name: str) -> int:
    return host.stack.counters.get(name, 0)


class ResumeTests(SynchronousTestCase):
    def test_the_next_connection_to_a_peer_starts_from_what_the_last_one_learned(self) -> None:
        net = Net.pair(profile=WAN, seed=1)
        first, _ = download(net, 1)
        saved = net.b.stack.paths.entries[A4] if net.b.stack.paths else None
        assert saved is not None
        # the best round carried about half the window slow start reached (~8 MB by then)
        self.assertGreater(saved.cwnd, 1 << 20)
        self.assertAlmostEqual(saved.rtt, 0.05, delta=0.005)
        second, _ = download(net, 2)
        self.assertEqual(counter(net.b, "tcp_resume_jumps"), 1)
        # slow start from ten segments to 8 MB is ~9 round trips; a jump saves most of them
        self.assertLess(second, 0.65 * first)

    def test_the_jump_is_half_the_saved_window_paced_over_a_round_trip(self) -> None:
        net = Net.pair(profile=WAN, seed=2)
        download(net, 1)
        assert net.b.stack.paths is not None
        saved = net.b.stack.paths.entries[A4].cwnd
        transfer = Transfer(net, b"", payload(SIZE, 2), port=2002).start()
        net.run(lambda: counter(net.b, "tcp_resume_jumps") == 1)
        server = transfer.server
        assert server is not None
        self.assertEqual(server.cr_phase, UNVALIDATED)
        self.assertEqual(server.cwnd, saved // 2)
        # paced at cwnd / RTT (not slow start's 2x): in a tenth of a round trip ~a tenth of
        # the jump leaves (measured 0.08; 0.20 at 2x)
        sent_before = server.snd_max
        net.run_for(0.005)
        self.assertLess(server.snd_max - sent_before, 0.13 * (saved // 2))
        self.assertGreater(server.snd_max - sent_before, 0.04 * (saved // 2))
        transfer.run()
        self.assertEqual(net.a.data_received(transfer.client), payload(SIZE, 2))

    def test_nothing_is_remembered_when_the_memory_is_off(self) -> None:
        net = Net.pair(profile=WAN, seed=3, path_memory=0)
        first, _ = download(net, 1)
        second, _ = download(net, 2)
        self.assertIsNone(net.b.stack.paths)
        self.assertEqual(counter(net.b, "tcp_resume_jumps"), 0)
        self.assertAlmostEqual(second, first, delta=0.1 * first)

    def test_a_path_with_another_round_trip_is_not_resumed(self) -> None:
        for before, after in ((0.025, 0.005), (0.002, 0.025)):  # RTT halved; over 10x
            net = Net.pair(profile=LinkProfile(latency=before), seed=4)
            download(net, 1)
            net.profile = LinkProfile(latency=after)
            download(net, 2)
            self.assertEqual(counter(net.b, "tcp_resume_jumps"), 0, (before, after))
            self.assertEqual(counter(net.b, "tcp_resume_path_changed"), 1, (before, after))
            # what the second connection measured replaces the entry
            assert net.b.stack.paths is not None
            self.assertAlmostEqual(
                net.b.stack.paths.entries[A4].rtt, 2 * after, delta=0.2 * 2 * after
            )

    def test_a_jump_the_path_does_not_carry_retreats_and_forgets_the_path(self) -> None:
        net = Net.pair(profile=WAN, seed=5)
        download(net, 1)
        transfer = Transfer(net, b"", payload(SIZE, 2), port=2005).start()
        net.run(lambda: counter(net.b, "tcp_resume_jumps") == 1)
        server = transfer.server
        assert server is not None and net.b.stack.paths is not None
        count = [0]

        def lossy(sender: Host, packet: bytes) -> bool:  # a path that takes a tenth of it
            seg = parse_seg(packet)
            if sender is not net.b or seg is None or not seg.payload:
                return False
            count[0] += 1
            return count[0] % 10 == 0

        net.drop = lossy
        net.run(lambda: counter(net.b, "tcp_resume_retreats") == 1)
        self.assertEqual(server.cr_phase, 0)
        self.assertLessEqual(server.ssthresh, max(server.cr_pipe // 2, 2 * server.mss))
        self.assertNotIn(A4, net.b.stack.paths.entries)
        net.drop = None
        transfer.run()
        self.assertEqual(net.a.data_received(transfer.client), payload(SIZE, 2))

    def test_one_connection_at_a_time_uses_a_saved_entry(self) -> None:
        net = Net.pair(profile=WAN, seed=6)
        download(net, 1)
        servers: list[Any] = []

        def on_server(kind: int, conn: Any, data: Any) -> None:
            if kind == tcp.ACCEPTED:
                servers.append(conn)
                conn.send(payload(SIZE, conn.local[1] - 3000))
            elif kind == tcp.EOF:
                conn.close()

        def on_client(kind: int, conn: Any, data: Any) -> None:
            if kind == tcp.CONNECTED:
                conn.close()

        ports = [3001, 3002, 3003]
        for port in ports:
            net.b.stack.listen(port)
        net.a.on_event = on_client
        net.b.on_event = on_server
        clients = [net.a.connect(B4, port) for port in ports]  # three at once
        net.run(lambda: all(c in net.a.closed for c in clients) and len(servers) == 3)
        self.assertEqual(counter(net.b, "tcp_resume_jumps"), 1)
        for conn in clients:
            self.assertEqual(net.a.data_received(conn), payload(SIZE, conn.remote[1] - 3000))

    def test_an_expired_entry_is_not_used(self) -> None:
        net = Net.pair(profile=WAN, seed=7, path_memory=30)
        download(net, 1)
        net.now += 31
        download(net, 2)
        self.assertEqual(counter(net.b, "tcp_resume_jumps"), 0)

    def test_a_small_answer_does_not_jump_and_leaves_the_entry_for_the_next(self) -> None:
        net = Net.pair(profile=WAN, seed=8)
        download(net, 1)
        assert net.b.stack.paths is not None
        saved = net.b.stack.paths.entries[A4]
        download(net, 2, size=20_000)  # fits the first windows: nothing to jump for
        self.assertEqual(counter(net.b, "tcp_resume_jumps"), 0)
        self.assertIs(net.b.stack.paths.entries[A4], saved)
        self.assertFalse(saved.busy)
        download(net, 3)
        self.assertEqual(counter(net.b, "tcp_resume_jumps"), 1)

    def test_the_receiver_starts_with_the_window_its_last_connection_grew_to(self) -> None:
        net = Net.pair(profile=WAN, seed=9)
        download(net, 1)
        assert net.a.stack.paths is not None
        grown = net.a.stack.paths.entries[B4].window
        self.assertGreater(grown, tcp.RECEIVE_BUFFER)
        transfer = Transfer(net, b"", payload(SIZE, 2), port=2009).start()
        assert transfer.client is not None
        net.run(lambda: transfer.client in net.a.connected)
        self.assertEqual(transfer.client.receive_buffer, grown)
        # within the stack's budget: it is granted, and given back at the end
        self.assertGreaterEqual(net.a.stack.window_granted, grown - tcp.RECEIVE_BUFFER)
        transfer.run()
        self.assertEqual(net.a.stack.window_granted, 0)

    def test_downloads_in_a_row_over_loss_and_reordering_stay_byte_exact(self) -> None:
        profile = LinkProfile(latency=0.02, loss=0.01, reorder=0.03, reorder_delay=0.01)
        for seed in range(3):
            net = Net.pair(profile=profile, seed=100 + seed)
            for i in range(3):
                download(net, i, size=2 << 20)
            self.assertEqual(net.problems, [])


class PathMemoryTests(SynchronousTestCase):
    def test_bounded_least_recently_saved_first(self) -> None:
        paths = PathMemory(lifetime=60, capacity=3)
        for i in range(5):
            paths.save(bytes([10, 0, 0, i]), 0.0, 100_000 + i, 0.05, 0)
        self.assertEqual(list(paths.entries), [bytes([10, 0, 0, i]) for i in (2, 3, 4)])
        paths.save(bytes([10, 0, 0, 2]), 1.0, 1, 0.05, 0)  # saved again: the newest
        self.assertEqual(list(paths.entries)[-1], bytes([10, 0, 0, 2]))

    def test_taken_once_until_given_back(self) -> None:
        paths = PathMemory(lifetime=60)
        paths.save(A4, 0.0, 1 << 20, 0.05, 0)
        entry = paths.take(A4, 1.0)
        assert entry is not None
        self.assertIsNone(paths.take(A4, 1.0))
        paths.give_back(A4, entry)
        self.assertIs(paths.take(A4, 2.0), entry)
        paths.forget(A4, entry)
        self.assertIsNone(paths.take(A4, 2.0))

    def test_expired_entries_go(self) -> None:
        paths = PathMemory(lifetime=60)
        paths.save(A4, 0.0, 1 << 20, 0.05, 0)
        self.assertIsNone(paths.take(A4, 60.0))
        self.assertNotIn(A4, paths.entries)

    def test_a_stale_entry_given_back_after_a_new_save_is_ignored(self) -> None:
        paths = PathMemory(lifetime=60)
        paths.save(A4, 0.0, 1 << 20, 0.05, 0)
        old = paths.take(A4, 1.0)
        assert old is not None
        paths.save(A4, 2.0, 2 << 20, 0.05, 0)
        paths.give_back(A4, old)
        paths.forget(A4, old)
        self.assertEqual(paths.entries[A4].cwnd, 2 << 20)
