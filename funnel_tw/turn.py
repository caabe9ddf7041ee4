"""Work that waits for the end of the reactor's turn, run in one timed call per turn.

Several layers hold their output until the end of a reactor turn so that a turn's work leaves
together: Twisted's TLS aggregates a connection's small writes into one record, the overlay
stack sends a turn's segments in one flush, the backend client a turn's requests, the HTTP/2
sender a turn's frames. Each did it with its own ``callLater(0)``, which costs a timed call per
connection and turn (a heap push and pop, ~2.6 µs), and chains badly: a ``callLater(0)`` made
while the reactor runs its timed calls waits for the next turn, after another poll and
whatever that poll returns. A response passed through three of them (HTTP/2 sender, then TLS,
then the overlay flush), so it left two turns after it was ready.

:func:`end_of_turn` gives a reactor's one queue. :meth:`EndOfTurn.soon` puts a callable in it;
the queue is drained by one ``callLater(0)``, in order, and what is queued while it drains runs
in the same drain: the TLS record made by the HTTP/2 sender's run is flushed to the overlay,
and the overlay's segments are sent, before the reactor polls again. A drain runs at most
:data:`BUDGET` callables; the rest wait for the next turn, so a chain that keeps queueing
cannot hold the reactor. Work that must yield to other connections (a sender's next batch)
uses ``callLater(0)`` itself. A callable that raises is logged; the rest still run.

:class:`TurnClock` is a reactor's clock whose ``callLater(0, ...)`` goes to the queue: given to
Twisted's TLS, its write aggregation joins the same drain.
"""

from __future__ import annotations

import functools
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import error
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

__all__ = ["BUDGET", "EndOfTurn", "Soon", "TurnClock", "end_of_turn"]

BUDGET = 4096  # callables one drain runs at most

log = Logger()

_PENDING, _RAN, _CANCELLED = 0, 1, 2


class Soon:
    """A queued callable: ``active()`` until it has run or was cancelled (as a DelayedCall)."""

    __slots__ = ("fn", "state")

    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn = fn
        self.state = _PENDING

    def active(self) -> bool:
        return self.state == _PENDING

    def cancel(self) -> None:
        if self.state == _CANCELLED:
            raise error.AlreadyCancelled()
        if self.state == _RAN:
            raise error.AlreadyCalled()
        self.state = _CANCELLED


class EndOfTurn:
    """One reactor's queue of work for the end of the turn (module docstring)."""

    def __init__(self, reactor: IReactorTime) -> None:
        self.reactor = reactor
        self._queue: deque[Soon] = deque()
        self._call: IDelayedCall | None = None
        self._draining = False
        self.drains = 0  # timed calls made, for tests and curiosity

    def soon(self, fn: Callable[[], object]) -> Soon:
        """Run ``fn`` at the end of this turn (in this drain, if one is running)."""
        item = Soon(fn)
        self._queue.append(item)
        if self._call is None and not self._draining:
            self._call = self.reactor.callLater(0, self._drain)
        return item

    def _drain(self) -> None:
        self._call = None
        self.drains += 1
        self._draining = True
        queue = self._queue
        try:
            for _ in range(BUDGET):
                if not queue:
                    return
                item = queue.popleft()
                if item.state != _PENDING:
                    continue
                item.state = _RAN
                try:
                    item.fn()
                except Exception:
                    log.failure("end-of-turn work {fn!r} failed", fn=item.fn)
        finally:
            self._draining = False
            if queue and self._call is None:  # over budget: the rest next turn
                self._call = self.reactor.callLater(0, self._drain)


_queues: weakref.WeakKeyDictionary[Any, EndOfTurn] = weakref.WeakKeyDictionary()


def end_of_turn(reactor: IReactorTime) -> EndOfTurn:
    """``reactor``'s queue (made on first use, gone with the reactor)."""
    queue = _queues.get(reactor)
    if queue is None:
        queue = _queues[reactor] = EndOfTurn(reactor)
    return queue


@implementer(IReactorTime)
class TurnClock:
    """``reactor``'s clock, but ``callLater(0, ...)`` runs at the end of the turn's drain."""

    def __init__(self, reactor: IReactorTime) -> None:
        self.reactor = reactor
        self.queue = end_of_turn(reactor)

    def seconds(self) -> float:
        return self.reactor.seconds()

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: object, **kw: object
    ) -> Any:
        if delay == 0:
            return self.queue.soon(
                functools.partial(callable, *args, **kw) if args or kw else callable
            )
        return self.reactor.callLater(delay, callable, *args, **kw)

    def getDelayedCalls(self) -> Sequence[IDelayedCall]:
        return self.reactor.getDelayedCalls()
