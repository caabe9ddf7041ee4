"""The userspace interface hands each batch of stack events to the protocols: one
connection's trouble must not cost the others theirs.

A node that stops listening (SIGTERM: the peerAPI port closes first) refuses a connection the
stack just accepted; the same batch may hold that connection's first data, and events of other
connections after it. The data of a refused connection used to raise, and the rest of the batch
was lost: a public request hung until the drain deadline (tests/e2e/test_pool.py, rolling
restart). Real connections of the sans-IO stack, events driven by hand, a fake clock.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from funnel_tw import keys
from funnel_tw.netstack import tcp
from funnel_tw.netstack.events import Event
from funnel_tw.netstack.segment import ACK, SYN, syn_options
from funnel_tw.netstack.stack import Stack
from funnel_tw.netstack.tcp import Connection
from funnel_tw.overlay.userspace import UserspaceOverlayInterface, _coalesced
from tests.netstack.tcp_harness import A4, B4, Net, RawPeer, connected_pair, parse_seg

A_PORT, B_PORT = 80, 81


class Recorder(protocol.Protocol):
    def __init__(self, fail_on: bytes = b"") -> None:
        self.fail_on = fail_on
        self.received = b""
        self.reads = 0
        self.lost: Any = None

    def dataReceived(self, data: bytes) -> None:
        if self.fail_on and self.fail_on in data:
            raise ValueError("a handler bug")
        self.received += data
        self.reads += 1

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = reason


def overlay_on(stack: Stack) -> UserspaceOverlayInterface:
    """An interface (never started: no socket, a fake clock) running ``stack``."""
    overlay = UserspaceOverlayInterface(
        Clock(), private_key=keys.generate_private_key(), addresses=[], peers=[]
    )
    overlay.stack = stack
    return overlay


class Declining(protocol.Factory):
    def buildProtocol(self, addr: Any) -> None:
        return None


class DispatchTests(TestCase):
    def setUp(self) -> None:
        net = Net.pair()
        _, self.a = connected_pair(net, A_PORT)
        _, self.b = connected_pair(net, B_PORT)
        self.net = net
        self.overlay = overlay_on(net.b.stack)
        net.b.stack.events.clear()
        self.protocols: list[Recorder] = []

    def listen(self, port: int, **kwargs: Any) -> None:
        def build() -> Recorder:
            self.protocols.append(Recorder(**kwargs))
            return self.protocols[-1]

        self.overlay.factories[port] = protocol.Factory.forProtocol(build)

    def deliver(self, *events: tuple[Event, Connection, Any]) -> None:
        self.overlay.stack.events.extend(events)
        self.overlay._dispatch()

    def test_data_of_a_refused_connection_costs_nobody_else(self) -> None:
        self.listen(B_PORT)  # port A stopped listening: A is refused
        self.deliver(
            (tcp.ACCEPTED, self.a, None),
            (tcp.DATA, self.a, b"POST /v0/ingress"),
            (tcp.EOF, self.a, None),
            (tcp.ACCEPTED, self.b, None),
            (tcp.DATA, self.b, b"GET / HTTP/1.1"),
        )
        self.assertIs(self.a.state, tcp.State.CLOSED)  # reset, not left open
        self.assertIsNone(self.a.app)
        [proto] = self.protocols
        self.assertEqual(proto.received, b"GET / HTTP/1.1")
        self.assertIs(self.b.app.protocol, proto)
        self.assertEqual(self.overlay.app_errors, 0)

    def test_a_factory_that_declines_is_the_same_case(self) -> None:
        self.overlay.factories[A_PORT] = Declining()
        self.listen(B_PORT)
        self.deliver(
            (tcp.ACCEPTED, self.a, None),
            (tcp.DATA, self.a, b"x" * 1000),
            (tcp.DRAINED, self.a, None),
            (tcp.ACCEPTED, self.b, None),
            (tcp.DATA, self.b, b"y"),
        )
        self.assertIs(self.a.state, tcp.State.CLOSED)
        self.assertEqual(self.protocols[0].received, b"y")

    def test_a_run_of_segments_is_one_read_and_order_is_kept(self) -> None:
        """A batch's segments for one connection reach its protocol as one read, as a kernel
        socket's reader gets them: one call through every layer above, not one a segment."""
        self.listen(A_PORT)
        self.listen(B_PORT)
        self.deliver((tcp.ACCEPTED, self.a, None), (tcp.ACCEPTED, self.b, None))
        self.deliver(
            *[(tcp.DATA, self.a, bytes([65 + i]) * 1240) for i in range(40)],
            (tcp.DATA, self.b, b"b1"),
            (tcp.DATA, self.a, b"after b"),
            (tcp.EOF, self.a, None),
        )
        first, second = self.protocols
        self.assertEqual(
            first.received, b"".join(bytes([65 + i]) * 1240 for i in range(40)) + b"after b"
        )
        self.assertEqual(first.reads, 2)  # the run of 40, then the one after b's
        self.assertEqual((second.received, second.reads), (b"b1", 1))

    def test_a_protocol_that_raises_loses_its_connection_only(self) -> None:
        self.listen(A_PORT, fail_on=b"boom")
        self.listen(B_PORT)
        self.deliver(
            (tcp.ACCEPTED, self.a, None),
            (tcp.ACCEPTED, self.b, None),
            (tcp.DATA, self.a, b"boom"),
            (tcp.DATA, self.b, b"first"),
            (tcp.DATA, self.b, b" second"),
        )
        failing, other = self.protocols
        self.assertEqual(other.received, b"first second")
        self.assertIsNone(other.lost)
        self.assertEqual(self.overlay.app_errors, 1)
        self.assertEqual(self.overlay.stats()["app_errors"], 1)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        # reset and told, as a socket's protocol would be
        self.assertIs(self.a.state, tcp.State.CLOSED)
        self.assertIsNotNone(failing.lost)
        self.assertIn("aborted", str(failing.lost.value))

    def test_a_client_factory_that_raises_fails_its_connect(self) -> None:
        class Raising(protocol.Factory):
            def buildProtocol(self, addr: Any) -> protocol.Protocol:
                raise RuntimeError("cannot build")

        result: defer.Deferred[Any] = defer.Deferred()
        self.overlay._pending[self.a] = (Raising(), result)
        self.listen(B_PORT)
        self.deliver((tcp.CONNECTED, self.a, None), (tcp.ACCEPTED, self.b, None))
        self.failureResultOf(result, RuntimeError)
        self.assertIs(self.a.state, tcp.State.CLOSED)
        self.assertEqual(len(self.protocols), 1)  # the next event was still handed out

    def test_an_error_at_every_event_still_reaches_the_end_of_the_batch(self) -> None:
        self.listen(A_PORT, fail_on=b"!")
        self.listen(B_PORT)
        self.deliver((tcp.ACCEPTED, self.a, None), (tcp.ACCEPTED, self.b, None))
        events = [(tcp.DATA, self.a, b"!")] * 20 + [(tcp.DATA, self.b, b"z")]
        self.deliver(*events)
        self.assertEqual(self.protocols[1].received, b"z")
        self.assertEqual(self.overlay.app_errors, 1)  # aborting, it takes no more
        self.flushLoggedErrors(ValueError)

    def test_a_flood_of_failures_is_counted_whole_and_logged_in_part(self) -> None:
        conns = [connected_pair(self.net, 1000 + i)[1] for i in range(15)]
        for conn in conns:
            self.listen(conn.local[1], fail_on=b"!")
        self.deliver(*((tcp.ACCEPTED, c, None) for c in conns))
        self.deliver(*((tcp.DATA, c, b"!") for c in conns))
        self.assertEqual(self.overlay.app_errors, 15)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 10)
        self.assertTrue(all(c.state is tcp.State.CLOSED for c in conns))


class CoalescedDataTests(TestCase):
    """What ``_coalesced`` makes of any batch: each run of DATA for one connection joined,
    everything else as it was, in order."""

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from([tcp.DATA, tcp.DATA, tcp.EOF, tcp.DRAINED]),
                st.sampled_from(["a", "b", "c"]),
                st.binary(min_size=1, max_size=8),
            ),
            max_size=40,
        )
    )
    def test_coalesced_is_adjacent_data_of_one_connection_joined(
        self, events: list[tuple[Event, str, bytes]]
    ) -> None:
        expected = []
        for (kind, conn), run in itertools.groupby(events, key=lambda e: (e[0], e[1])):
            datas = [d for _, _, d in run]
            if kind == tcp.DATA:
                expected.append((kind, conn, b"".join(datas)))
            else:
                expected.extend((kind, conn, d) for d in datas)
        self.assertEqual(list(_coalesced(events)), expected)


class StackErrorTests(TestCase):
    """A packet the stack raises on (a bug: hostile input it expects is a counted drop) costs
    that packet, not the ones after it in the batch."""

    def test_the_next_packet_is_still_taken(self) -> None:
        net = Net.pair()
        stack = net.b.stack
        overlay = overlay_on(stack)
        stack.listen(80)
        first = RawPeer(stack, A4, B4, 40001, 80)
        second = RawPeer(stack, A4, B4, 40002, 80)
        opts = syn_options(1460, 7, True)
        bad = first.packet(SYN, options=opts)
        real_segment = stack._segment

        def buggy(src: bytes, dst: bytes, sport: int, *rest: Any) -> None:
            if sport == 40001:
                raise KeyError("a bug in the stack")
            real_segment(src, dst, sport, *rest)

        stack._segment = buggy  # type: ignore[method-assign]
        peer: Any = type("P", (), {"name": "relay"})()
        for packet in (bad, second.packet(SYN, options=opts)):  # one batch
            overlay._packet(packet, peer)
        stack.flush(1000.0)
        answers = [parse_seg(p) for p in stack.outgoing]
        self.assertEqual([(a.dport, a.flags) for a in answers if a], [(40002, SYN | ACK)])
        self.assertEqual(overlay.stats()["stack_errors"], 1)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_a_connection_the_stack_reset_is_logged_and_counted(self) -> None:
        net = Net.pair()
        overlay = overlay_on(net.a.stack)
        conn, _ = connected_pair(net)
        net.a.stack.failed(conn, RuntimeError("a bug in a connection"))
        overlay._dispatch()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(overlay.stack.failures, [])
        self.assertEqual(overlay.stats()["stack_errors"], 1)
