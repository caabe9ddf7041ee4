"""A connection that raises inside the stack costs itself, not the others.

What peers send is checked and counted as drops; an exception from a connection is a bug. It
used to leave the stack mid-loop: the other connections marked for output in the same flush
were forgotten until touched again, and the timers due in the same tick had been taken off
the heap, so a retransmission could wait forever. Now the connection is reset (RST, CLOSED
to its application), counted (``tcp_internal_errors``), its exception kept for the owner to
log, and the loop goes on. Simulated time, no reactor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.netstack.stack import FAILURES_KEPT
from funnel_tw.netstack.tcp import Connection, State

from .tcp_harness import Net, connected_pair, payload


@contextmanager
def raising_for(method: str, victim: Connection) -> Iterator[list[Exception]]:
    """``Connection.<method>`` raises for ``victim`` only; yields what it raised."""
    real: Callable[..., Any] = getattr(Connection, method)
    raised: list[Exception] = []

    def wrapper(self: Connection, *args: Any) -> Any:
        if self is victim:
            raised.append(RuntimeError(f"a bug in {method}"))
            raise raised[-1]
        return real(self, *args)

    with mock.patch.object(Connection, method, wrapper):
        yield raised


class FailureTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = Net.pair()
        self.a1, self.b1 = connected_pair(self.net, 80)
        self.a2, self.b2 = connected_pair(self.net, 81)
        self.data = payload(20_000, 5)

    def assert_isolated(self, victim: Connection, raised: list[Exception]) -> None:
        """The victim was reset and reported; the other connection's data arrived whole."""
        net = self.net
        stack = victim.stack
        net.run(lambda: net.b.data_received(self.b2) == self.data, timeout=30)
        self.assertIs(victim.state, State.CLOSED)
        self.assertEqual(stack.counters["tcp_internal_errors"], 1)
        self.assertEqual(stack.failures, raised[:1])
        host = net.a if stack is net.a.stack else net.b
        self.assertEqual(host.closed[victim], "aborted")
        # the peer of the victim got a reset, not silence
        peer = self.b1 if victim is self.a1 else self.a1
        net.run(lambda: peer.state is State.CLOSED, timeout=30)
        self.assertEqual(stack.counters["tcp_internal_errors"], 1)  # not again, ever

    def test_output(self) -> None:
        with raising_for("output", self.a1) as raised:
            self.a1.send(self.data)
            self.a2.send(self.data)
            self.net.pump()
        self.assert_isolated(self.a1, raised)

    def test_timer(self) -> None:
        self.a1.send(self.data)
        self.a2.send(self.data)
        self.net.a.stack.flush(self.net.now)
        self.net.a.stack.outgoing.clear()  # lost: both wait for their retransmission timers
        with raising_for("tick", self.a1) as raised:
            self.net.run_for(3)
        self.assert_isolated(self.a1, raised)

    def test_segment(self) -> None:
        with raising_for("segment_arrived", self.b1) as raised:
            self.a1.send(self.data)
            self.a2.send(self.data)
            self.net.run(lambda: self.b1.state is State.CLOSED, timeout=30)
        self.assert_isolated(self.b1, raised)

    def test_kept_exceptions_are_bounded(self) -> None:
        stack = self.net.a.stack
        for i in range(FAILURES_KEPT + 5):
            stack.failed(self.a1, RuntimeError(str(i)))
        self.assertEqual(len(stack.failures), FAILURES_KEPT)
        self.assertEqual(stack.counters["tcp_internal_errors"], FAILURES_KEPT + 5)
