"""What the proxy needs from Twisted's HTTP/2 and Twisted does not make public.

A request on HTTP/2 has an ``H2Stream`` as its channel; the stream's connection, whether that
connection's transport is full, and a stream reset with an error code of our choosing are all
private (twisted.web._http2). Every such access is here, and tests/serve/test_http2.py fails
if Twisted changes any of it; elsewhere the proxy and the site use only these functions.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.web.server import Request

INTERNAL_ERROR = 2  # RFC 9113 7


def h2_connection(request: Request) -> Any | None:
    """The HTTP/2 connection (``H2Connection``) carrying ``request``; None for HTTP/1.x or
    once the request has let go of its channel."""
    return getattr(request.channel, "_conn", None)


def connection_blocked(request: Request) -> defer.Deferred[None] | None:
    """While the HTTP/2 connection's own transport is full: a Deferred that fires when it
    takes data again (else None). Twisted pauses a stream's producer only when the client's
    flow-control window runs out, not when the connection underneath cannot keep up."""
    blocked: defer.Deferred[None] | None = getattr(h2_connection(request), "_consumerBlocked", None)
    return blocked


def reset_stream(request: Request, error_code: int = INTERNAL_ERROR) -> bool:
    """Reset ``request``'s HTTP/2 stream with ``error_code`` and forget the stream; False
    if it is not on HTTP/2. (Twisted's own ``abortConnection`` resets with NO_ERROR, which a
    client may take for a normal end.)"""
    h2 = h2_connection(request)
    stream_id = getattr(request.channel, "streamID", None)
    if h2 is None or stream_id is None or not hasattr(h2, "conn"):
        return False
    h2.conn.reset_stream(stream_id, error_code=error_code)
    h2._tryToWriteControlData()
    h2._requestDone(stream_id)
    return True
