"""A small write to an idle kernel TCP socket, sent at once.

Twisted's ``write`` queues every chunk, asks epoll for the socket's writability
(``epoll_ctl``), sends in the next turn of the reactor and unregisters (``epoll_ctl`` again):
for the one response of a small request that is three system calls and a dispatched event
more than a ``send``. On the relay that was about a tenth of its CPU per request
(docs/performance.md, lever 19). So a chunk of at most :data:`SMALL` bytes, to a socket with
nothing queued, goes out in the caller's turn; what the kernel does not take, and every chunk
while anything is queued, is Twisted's as before (order kept). Large chunks stay queued: a
bulk transfer keeps its one send per turn. A TCP connection Twisted encrypts after ``startTLS``
is never written to underneath its TLS.

It reads Twisted's private ``_tempDataLen`` (the bytes written since the last send); it is
read here alone.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp

SMALL = 16 * 1024


def write_now(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, sent at once when it is small and nothing waits before it."""
    if (
        len(data) <= SMALL
        and isinstance(transport, tcp.Connection)
        and not transport.TLS  # encrypted by Twisted in write() after startTLS
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport._tempDataLen  # private: see the module docstring
        and transport.offset >= len(transport.dataBuffer)
    ):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int):  # else the connection is lost: write() and the reactor see it
            if sent >= len(data):
                return
            data = data[sent:]
    transport.write(data)
