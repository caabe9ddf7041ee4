"""Closes that end: a flow whose far side is gone must not wait forever to send what it holds.

``loseConnection`` on a TCP transport waits until everything written has been sent, and a TLS
transport then also waits for the peer's ``close_notify``; a peer that reads nothing, or is
gone, makes both wait without end. A transport whose close is already bounded (the overlay
transport resets a close that makes no progress) says so with ``closes_bounded = True``; any
other that still holds unsent data is aborted when its close has not finished within
``CLOSE_TIMEOUT`` seconds.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure

CLOSE_TIMEOUT = 30.0  # a close of an unbounded transport: abort after this long
CLOSE_NOTIFY_WAIT = 5.0  # TLS: wait this long for the peer's close_notify, then close TCP


def _default_clock() -> Any:
    from twisted.internet import reactor

    return reactor


def closes_bounded(transport: Any) -> bool:
    return bool(getattr(type(transport), "closes_bounded", False))


def _holds_unsent(transport: Any) -> bool:
    """Whether a close may wait on data: a Twisted socket transport with nothing buffered
    closes at once (the kernel bounds the rest); any other transport is presumed to wait."""
    if not hasattr(transport, "dataBuffer"):
        return True
    return bool(transport.dataBuffer) or bool(getattr(transport, "_tempDataLen", 0))


def close_within(
    transport: Any, clock: Any = None, seconds: float = CLOSE_TIMEOUT
) -> IDelayedCall | None:
    """``loseConnection`` and, unless the transport bounds its own close, abort it after
    ``seconds``; returns the pending abort (cancel it when the connection is lost)."""
    transport.loseConnection()
    if closes_bounded(transport) or not _holds_unsent(transport):
        return None
    clock = clock or _default_clock()
    return clock.callLater(seconds, transport.abortConnection)  # type: ignore[no-any-return]


class BoundedCloseTLS(TLSMemoryBIOProtocol):
    """TLS whose ``loseConnection`` does not wait forever: after ``CLOSE_NOTIFY_WAIT`` seconds
    without the peer's ``close_notify`` (or while a producer or unsent data holds the close
    back), the TCP connection underneath is closed (bounded in turn) or aborted."""

    closes_bounded = True
    _close_call: IDelayedCall | None = None

    def loseConnection(self) -> None:
        was = self.disconnecting
        super().loseConnection()  # type: ignore[no-untyped-call]
        if was or not self.disconnecting or self._close_call is not None:
            return
        clock = getattr(self.factory, "clock", None) or _default_clock()
        self._close_call = clock.callLater(CLOSE_NOTIFY_WAIT, self._close_underneath)

    def _close_underneath(self) -> None:
        self._close_call = None
        if self.transport is None:
            return
        if closes_bounded(self.transport):
            self.transport.loseConnection()
        else:
            self.abortConnection()  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self._close_call is not None and self._close_call.active():
            self._close_call.cancel()
        self._close_call = None
        super().connectionLost(reason)  # type: ignore[no-untyped-call]


class BoundedCloseTLSFactory(TLSMemoryBIOFactory):
    """A TLSMemoryBIOFactory whose connections are :class:`BoundedCloseTLS`."""

    protocol = BoundedCloseTLS

    def __init__(self, *args: Any, clock: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock
