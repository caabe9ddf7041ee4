"""funnel_tw/turn.py on a Clock: one timed call per turn, work queued during the drain run in
it, cancelling, the budget, a failing callable, and Twisted's TLS write aggregation on it."""

from __future__ import annotations

from twisted.internet import error
from twisted.internet.task import Clock
from twisted.protocols.tls import _AggregateSmallWrites
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw import turn
from funnel_tw.turn import BUDGET, TurnClock, end_of_turn


class EndOfTurnTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.queue = end_of_turn(self.clock)
        self.ran: list[str] = []

    def note(self, name: str) -> turn.Soon:
        return self.queue.soon(lambda: self.ran.append(name))

    def test_one_timed_call_for_a_turn(self) -> None:
        for name in "abc":
            self.note(name)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(self.ran, [])  # not before the end of the turn
        self.clock.advance(0)
        self.assertEqual(self.ran, ["a", "b", "c"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.note("d")
        self.clock.advance(0)
        self.assertEqual(self.ran, ["a", "b", "c", "d"])
        self.assertEqual(self.queue.drains, 2)

    def test_same_queue_per_reactor(self) -> None:
        self.assertIs(end_of_turn(self.clock), self.queue)
        self.assertIsNot(end_of_turn(Clock()), self.queue)

    def test_work_queued_while_draining_runs_in_the_drain(self) -> None:
        # a chain of three (an HTTP/2 run, its TLS record, the overlay's flush): one turn
        self.queue.soon(lambda: self.queue.soon(lambda: self.note("third") and None))
        self.clock.advance(0)
        self.assertEqual(self.ran, ["third"])
        self.assertEqual(self.queue.drains, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelled_work_does_not_run(self) -> None:
        first, second = self.note("a"), self.note("b")
        self.assertTrue(first.active())
        first.cancel()
        self.assertFalse(first.active())
        self.assertRaises(error.AlreadyCancelled, first.cancel)
        self.clock.advance(0)
        self.assertEqual(self.ran, ["b"])
        self.assertFalse(second.active())
        self.assertRaises(error.AlreadyCalled, second.cancel)

    def test_a_chain_that_keeps_queueing_yields_after_the_budget(self) -> None:
        count = [0]
        turns: list[int] = []

        def again() -> None:
            count[0] += 1
            if count[0] < 3 * BUDGET:
                self.queue.soon(again)

        self.queue.soon(again)
        self.queue.soon(lambda: turns.append(count[0]))  # queued behind the first
        # Clock.advance runs the next turn's timed call too: count the drains
        self.clock.advance(0)
        self.assertEqual(count[0], 3 * BUDGET)
        self.assertEqual(self.queue.drains, 4)  # 3 * BUDGET + 1 callables, BUDGET a drain
        self.assertEqual(turns, [1])  # not starved by the chain

    def test_a_failing_callable_costs_only_itself(self) -> None:
        self.note("a")
        self.queue.soon(lambda: 1 / 0)
        self.note("b")
        self.clock.advance(0)
        self.assertEqual(self.ran, ["a", "b"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.note("c")  # the queue still works
        self.clock.advance(0)
        self.assertEqual(self.ran, ["a", "b", "c"])


class TurnClockTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.turn_clock = TurnClock(self.clock)

    def test_zero_delay_joins_the_drain_others_are_timed_calls(self) -> None:
        got: list[object] = []
        self.turn_clock.callLater(0, got.append, "now")
        later = self.turn_clock.callLater(2, got.append, "later")
        self.assertEqual(self.clock.getDelayedCalls().count(later), 1)
        self.clock.advance(0)
        self.assertEqual(got, ["now"])
        self.clock.advance(2)
        self.assertEqual(got, ["now", "later"])
        self.assertEqual(self.turn_clock.seconds(), self.clock.seconds())

    def test_tls_aggregated_writes_reach_the_wire_in_one_turn(self) -> None:
        # Twisted's aggregation of a connection's small writes, then the layer below that
        # sends at the end of the turn (as the overlay does): both in one turn, where with
        # the reactor's own callLater the second waited for the next turn
        wire: list[bytes] = []
        queue = end_of_turn(self.clock)

        def below(data: bytes) -> None:
            queue.soon(lambda: wire.append(data))

        aggregate = _AggregateSmallWrites(below, self.turn_clock)
        aggregate.write(b"head ")
        aggregate.write(b"body")
        self.clock.advance(0)
        self.assertEqual(wire, [b"head body"])
        self.assertEqual(queue.drains, 1)
