"""Splice endings: a reset is passed on as a reset; a close that holds data is bounded."""

from __future__ import annotations

from typing import Any

from twisted.internet import error
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.web import closing, splice


class FakeTCP:
    """A socket transport's face: ``dataBuffer`` holds what the peer has not taken."""

    def __init__(self, unsent: bytes = b"") -> None:
        self.dataBuffer = unsent
        self.closed = self.aborted = False
        self.producer: Any = None

    def write(self, data: bytes) -> None:
        self.dataBuffer += data

    def loseConnection(self) -> None:
        self.closed = True

    def abortConnection(self) -> None:
        self.aborted = True

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


def joined(unsent: bytes = b"") -> tuple[splice.SpliceEnd, splice.SpliceEnd, FakeTCP, Clock]:
    clock = Clock()
    a, b = splice.SpliceEnd("a"), splice.SpliceEnd("b")
    a.clock = b.clock = clock
    a.makeConnection(FakeTCP())  # type: ignore[arg-type]
    tb = FakeTCP(unsent)
    b.makeConnection(tb)  # type: ignore[arg-type]
    splice.join(a, b)
    return a, b, tb, clock


class SpliceEndingTests(SynchronousTestCase):
    def test_a_reset_aborts_the_other_side(self) -> None:
        a, _, tb, _ = joined()
        a.connectionLost(Failure(error.ConnectionLost("connection reset by peer")))
        self.assertTrue(tb.aborted)

    def test_a_clean_close_closes_the_other_side(self) -> None:
        a, _, tb, clock = joined()
        a.connectionLost(Failure(error.ConnectionDone()))
        self.assertTrue(tb.closed)
        self.assertFalse(tb.aborted)
        self.assertEqual(clock.getDelayedCalls(), [])  # nothing held: nothing to bound

    def test_a_close_that_holds_data_is_aborted_after_the_bound(self) -> None:
        a, _, tb, clock = joined(unsent=b"x" * 100_000)  # the far side reads nothing
        a.connectionLost(Failure(error.ConnectionDone()))
        self.assertTrue(tb.closed)
        clock.advance(closing.CLOSE_TIMEOUT - 0.1)
        self.assertFalse(tb.aborted)
        clock.advance(0.2)
        self.assertTrue(tb.aborted)

    def test_the_bound_is_cancelled_when_the_close_completes(self) -> None:
        a, b, _, clock = joined(unsent=b"x")
        a.connectionLost(Failure(error.ConnectionDone()))
        b.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_bounded_transport_gets_no_timer(self) -> None:
        class Bounded(FakeTCP):
            closes_bounded = True

        clock = Clock()
        self.assertIsNone(closing.close_within(Bounded(b"x"), clock))
        self.assertEqual(clock.getDelayedCalls(), [])
