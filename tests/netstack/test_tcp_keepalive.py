"""TCP keepalive: probes after idle time, answered or not."""

from __future__ import annotations

import itertools

from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.netstack import tcp
from funnel_tw.netstack.tcp import Connection, State

from .tcp_harness import B4, MASK, Net

IDLE, INTERVAL, PROBES = 10.0, 2.0, 3


def configure(conn: Connection) -> None:
    conn.keepalive_interval = INTERVAL
    conn.keepalive_probes = PROBES
    conn.set_keepalive(IDLE, conn.stack.now)


class KeepaliveTests(SynchronousTestCase):
    def open(self) -> tuple[Net, Connection, Connection]:
        """Keepalive set on the client before the handshake completes."""
        net = Net.pair()
        net.b.stack.listen(80)
        client = net.a.connect(B4, 80)
        configure(client)
        net.run(lambda: bool(net.b.accepted) and client in net.a.connected)
        return net, client, net.b.accepted[0]

    def probes(self, net: Net, client: Connection, start: int) -> list[float]:
        times = []
        for seg, t in zip(net.a.segments()[start:], net.a.sent_times[start:], strict=True):
            self.assertTrue(seg.is_pure_ack)
            self.assertEqual(seg.seq, (client.snd_una - 1) & MASK)
            times.append(t)
        return times

    def test_answered_probes_keep_the_connection(self) -> None:
        net, client, server = self.open()
        assert client.t_keepalive is not None
        established = client.t_keepalive - IDLE  # when the SYN-ACK arrived
        start = len(net.a.sent)
        net.run_for(35)
        times = self.probes(net, client, start)
        self.assertEqual(len(times), 3)
        self.assertAlmostEqual(times[0] - established, IDLE, places=6)
        # each answer counts as hearing from the peer: the next probe is IDLE later again
        for a, b in itertools.pairwise(times):
            self.assertAlmostEqual(b - a, IDLE + 0.002, places=6)
        self.assertIs(client.state, State.ESTABLISHED)
        self.assertIs(server.state, State.ESTABLISHED)
        self.assertEqual(net.a.closed, {})
        self.assertEqual(net.b.stack.counters["tcp_out_of_window"], 3)  # how probes are answered
        # nothing reached the application
        self.assertEqual(net.b.data_received(), b"")

    def test_traffic_postpones_the_probe(self) -> None:
        net, client, server = self.open()
        net.run_for(6)
        server.send(b"ping")
        net.run_for(0.1)
        heard = client.last_heard
        start = len(net.a.sent)
        net.run_for(IDLE)
        times = self.probes(net, client, start)
        self.assertEqual(len(times), 1)
        self.assertAlmostEqual(times[0] - heard, IDLE, places=6)

    def test_unanswered_probes_close_the_connection(self) -> None:
        net, client, _ = self.open()
        assert client.t_keepalive is not None
        established = client.t_keepalive - IDLE
        net.drop = lambda sender, packet: True
        start = len(net.a.sent)
        net.run(lambda: client in net.a.closed, timeout=100)
        times = self.probes(net, client, start)
        self.assertEqual(
            [round(t - established, 6) for t in times],
            [IDLE, IDLE + INTERVAL, IDLE + 2 * INTERVAL],
        )
        self.assertAlmostEqual(net.now - established, IDLE + PROBES * INTERVAL, places=6)
        self.assertEqual(net.a.closed[client], "keepalive timeout")
        self.assertEqual(net.a.stack.connections, {})

    def test_off_by_default(self) -> None:
        net = Net.pair()
        net.b.stack.listen(80)
        client = net.a.connect(B4, 80)
        net.run(lambda: client in net.a.connected)
        self.assertEqual(client.keepalive_idle, 0.0)
        start = len(net.a.sent)
        net.run_for(3 * 3600)
        self.assertEqual(len(net.a.sent), start)
        self.assertIsNone(net.a.stack.next_deadline())

    def enabled_after_establishment(self, on_kind: int) -> tuple[Net, Connection]:
        net = Net.pair()
        net.b.stack.listen(80)
        conns: list[Connection] = []

        def enable(kind: int, conn: Connection, data: object) -> None:
            if kind == on_kind:
                configure(conn)
                conns.append(conn)

        net.a.on_event = enable
        net.b.on_event = enable
        client = net.a.connect(B4, 80)
        net.run(lambda: bool(conns) and client in net.a.connected and bool(net.b.accepted))
        return net, conns[0]

    def test_enabled_on_an_accepted_connection(self) -> None:
        """The application learns of a passive connection at ACCEPTED, after the handshake,
        and overlay/tcp.py setTcpKeepAlive() switches keepalive on at any time: the timer
        starts then, so on an idle connection a vanished peer is still detected."""
        net, server = self.enabled_after_establishment(tcp.ACCEPTED)
        net.drop = lambda sender, packet: True
        net.run(lambda: server in net.b.closed, timeout=IDLE + PROBES * INTERVAL + 1)
        self.assertEqual(net.b.closed[server], "keepalive timeout")

    def test_enabled_at_connected(self) -> None:
        """The same on the active side when keepalive is turned on at CONNECTED (as
        connectionMade -> transport.setTcpKeepAlive(True) does)."""
        net, client = self.enabled_after_establishment(tcp.CONNECTED)
        net.drop = lambda sender, packet: True
        net.run(lambda: client in net.a.closed, timeout=IDLE + PROBES * INTERVAL + 1)
        self.assertEqual(net.a.closed[client], "keepalive timeout")
