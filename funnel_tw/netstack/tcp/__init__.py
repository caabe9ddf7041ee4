"""TCP connections (RFC 9293), sans-IO.

``connection`` holds the state machine and the per-segment path; ``send``, ``receive`` and
``timers`` the parts of one connection's control block; ``state`` and ``sequence`` what they
all share. The names the layers above use are exported here.
"""

from __future__ import annotations

from ..events import ACCEPTED, CLOSED, CONNECTED, DATA, DRAINED, EOF, Event
from .connection import Connection
from .receive import (
    ACK_EVERY_SEGMENTS,
    MAX_OOO_SEGMENTS,
    OUT_OF_WINDOW_ACK_INTERVAL,
    RECEIVE_BUFFER,
    RECEIVE_BUFFER_MAX,
    RECEIVE_WSCALE,
)
from .send import DUP_THRESH, SEND_BUFFER, SEND_BUFFER_LOW, SEND_BUFFER_MAX
from .sequence import HALF, MASK, unwrap
from .state import State
from .timers import (
    DELAYED_ACK,
    INITIAL_RTO,
    MAX_RETRANSMITS,
    MAX_RTO,
    MAX_SYN_RETRANSMITS,
    MIN_RTO,
    ORPHAN_TIMEOUT,
    TIME_WAIT_SECONDS,
    USER_TIMEOUT,
)

__all__ = [
    "ACCEPTED",
    "ACK_EVERY_SEGMENTS",
    "CLOSED",
    "CONNECTED",
    "DATA",
    "DELAYED_ACK",
    "DRAINED",
    "DUP_THRESH",
    "EOF",
    "HALF",
    "INITIAL_RTO",
    "MASK",
    "MAX_OOO_SEGMENTS",
    "MAX_RETRANSMITS",
    "MAX_RTO",
    "MAX_SYN_RETRANSMITS",
    "MIN_RTO",
    "ORPHAN_TIMEOUT",
    "OUT_OF_WINDOW_ACK_INTERVAL",
    "RECEIVE_BUFFER",
    "RECEIVE_BUFFER_MAX",
    "RECEIVE_WSCALE",
    "SEND_BUFFER",
    "SEND_BUFFER_LOW",
    "SEND_BUFFER_MAX",
    "TIME_WAIT_SECONDS",
    "USER_TIMEOUT",
    "Connection",
    "Event",
    "State",
    "unwrap",
]
