"""The states of a TCP connection (RFC 9293 3.3.2) and the sets the code tests them against."""

from __future__ import annotations

import enum


class State(enum.Enum):
    SYN_SENT = "SYN-SENT"
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSING = "CLOSING"
    TIME_WAIT = "TIME-WAIT"
    CLOSE_WAIT = "CLOSE-WAIT"
    LAST_ACK = "LAST-ACK"
    CLOSED = "CLOSED"

    # Members are singletons compared by identity: hash them as objects, in C, not through
    # Enum.__hash__ (a Python call per ``state in SYNCHRONIZED``, several per segment).
    __hash__ = object.__hash__


SYNCHRONIZED = {
    State.ESTABLISHED,
    State.FIN_WAIT_1,
    State.FIN_WAIT_2,
    State.CLOSING,
    State.TIME_WAIT,
    State.CLOSE_WAIT,
    State.LAST_ACK,
}
CAN_SEND = {State.ESTABLISHED, State.CLOSE_WAIT}
CAN_RECEIVE = {State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2}
