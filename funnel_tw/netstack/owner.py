"""What a TCP connection needs from whoever owns it (the :class:`~.stack.Stack`).

A connection is sans-IO: it hands packets, events and counters to its owner and tells it when
it wants to send, opens, closes or lingers in TIME-WAIT. Typing the connection against this
Protocol instead of the Stack keeps ``tcp/`` below ``stack.py``: the stack imports the
connection, never the reverse.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from .events import Event
from .paths import PathMemory

C = TypeVar("C", contravariant=True)  # the connection type the owner handles


class Owner(Protocol[C]):
    paths: PathMemory | None  # what connections learned about each peer's path (paths.py)

    @property
    def now(self) -> float:
        """The time of the call being handled (for a connection that needs it mid-call)."""
        ...

    def count(self, name: str, n: int = 1) -> None:
        """Add to a named counter (``tcp_rto``, ``tcp_out_of_window``...)."""

    def emit(self, kind: Event, conn: C, data: Any) -> None:
        """Queue an event for the application."""

    def emit_packet(self, packet: bytes) -> None:
        """Queue an IP packet for the wire."""

    def emit_packets(self, packets: list[bytes]) -> None:
        """Queue IP packets for the wire, in order (a burst of segments)."""

    def mark_output(self, conn: C) -> None:
        """Ask for ``conn.output(now)`` at the next flush."""

    def grow_window(self, conn: C, extra: int) -> int:
        """How much of ``extra`` bytes of receive window growth the stack-wide budget grants
        ``conn`` (0 when it is spent); given back when the connection closes."""
        ...

    def allow_challenge_ack(self) -> bool:
        """Whether one more RFC 5961 challenge ACK fits the global rate limit."""
        ...

    def connection_established(self, conn: C, passive: bool) -> None:
        """The handshake completed (passive: on a listening port)."""

    def connection_closed(self, conn: C, reason: str | None) -> None:
        """The connection is gone (reason None after a clean close or TIME-WAIT)."""

    def entered_time_wait(self, conn: C) -> None:
        """The connection closed cleanly and now lingers in TIME-WAIT."""
