"""Take a connection away from twisted.web after a request has been answered in raw bytes.

twisted.web has no public API for this (twisted#3204, #8301), so it lives here alone. The
steps, in order:

1. pause the transport, so nothing new arrives while we switch;
2. stop the HTTP channel's idle timeout and unregister it as the transport's producer;
3. point the transport at the new protocol;
4. on the next reactor turn (when twisted.web's parser has finished with the current input),
   collect whatever it had buffered after the request head, give it to the new protocol,
   then resume the transport.

The request itself is never finished, so twisted.web writes nothing more. The channel lets go
of it: the channel and the request refer to each other, and left so, the pair (with the
request's headers, ~2 KiB) waits for Python's cyclic collector, which runs rarely once many
long-lived objects exist: each hijacked connection of the node kept one such pair.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IProtocol
from twisted.web.server import Request


class HijackError(Exception):
    """The request's connection cannot be taken over."""


def _channel(request: Request) -> Any:
    channel = request.channel
    if channel is None or getattr(channel, "transport", None) is None:
        raise HijackError("the request has no connection")
    if not hasattr(channel, "_dataBuffer"):
        raise HijackError("not an HTTP/1.x channel")  # e.g. an HTTP/2 stream
    return channel


def hijack(request: Request, protocol: IProtocol, reactor: Any, preamble: bytes = b"") -> None:
    """Write ``preamble`` (e.g. a 101 status line) then hand the raw stream to ``protocol``."""
    channel = _channel(request)
    transport = channel.transport
    transport.pauseProducing()
    channel.setTimeout(None)
    channel._savedTimeOut = None
    transport.unregisterProducer()
    if preamble:
        transport.write(preamble)
    if hasattr(transport, "wrappedProtocol"):
        transport.wrappedProtocol = protocol  # e.g. TLS: the wrapper delivers to it
    else:
        transport.protocol = protocol

    def complete() -> None:
        leftover = bytes(getattr(channel, "_buffer", b""))
        leftover += b"".join(channel._dataBuffer)
        channel._dataBuffer = []
        channel._buffer = b""
        channel.transport = None  # the channel must not touch the connection again
        channel.requests = []  # no cycle: request and channel are freed now, not at a gc run
        set_nodelay = getattr(transport, "setTcpNoDelay", None)
        if set_nodelay is not None:
            set_nodelay(True)  # a byte stream now: no Nagle delay on small writes
        protocol.makeConnection(transport)
        if leftover and transport.connected:
            protocol.dataReceived(leftover)
        transport.resumeProducing()

    reactor.callLater(0, complete)
