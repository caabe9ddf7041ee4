"""What the stack tells the application: the kinds of ``Stack.events`` entries.

An entry is ``(kind, connection, data)``; only ECHO_REPLY comes without a connection.
"""

from __future__ import annotations

import enum


class Event(enum.Enum):
    CONNECTED = enum.auto()  # an active open completed
    DATA = enum.auto()  # data: bytes received in order
    EOF = enum.auto()  # the peer sent FIN (delivered after any held data)
    CLOSED = enum.auto()  # data: the reason (None after a clean close)
    DRAINED = enum.auto()  # the send buffer fell below its low-water mark
    ACCEPTED = enum.auto()  # a passive open completed on a listening port
    ECHO_REPLY = enum.auto()  # no connection; data: the icmp.Echo answered


# the names the application code compares kinds against (``kind == tcp.DATA``)
CONNECTED = Event.CONNECTED
DATA = Event.DATA
EOF = Event.EOF
CLOSED = Event.CLOSED
DRAINED = Event.DRAINED
ACCEPTED = Event.ACCEPTED
ECHO_REPLY = Event.ECHO_REPLY
