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

CLOSE_TIMEOUT = 30.0  # a close of an unbounded transport: abort after this long


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
