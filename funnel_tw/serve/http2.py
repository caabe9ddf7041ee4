"""What the proxy needs from Twisted's HTTP/2 and Twisted does not make public.

A request on HTTP/2 has an ``H2Stream`` as its channel; the stream's connection, whether that
connection's transport is full, a stream reset with an error code of our choosing, and ending
the stream of a client too slow to send its body are all private (twisted.web._http2). Every
such access is here, and tests/serve/test_http2.py fails if Twisted changes any of it;
elsewhere the proxy and the site use only these functions.
"""

from __future__ import annotations

import contextlib
from typing import Any

from h2.exceptions import StreamClosedError
from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.web.server import Request

NO_ERROR, INTERNAL_ERROR, CANCEL = 0, 2, 8  # RFC 9113 7


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


def stream_paused(request: Request) -> bool:
    """Whether ``request``'s HTTP/2 stream holds its producer paused (its flow-control window
    or its send queue is full: funnel_tw/web/h2send.py). Whoever else paused that producer
    must not resume it then: Twisted's stream believes it paused, and would never pause it
    again while the queue grew (a 1 GiB download peaked at 812 MiB). False on HTTP/1.1."""
    return getattr(request.channel, "_producerProducing", True) is False


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


def abort_stream(request: Request, status: int | None, reason: str) -> bool:
    """End ``request``'s HTTP/2 stream for a misbehaving client: answer ``status`` if no
    response has started (then RST_STREAM NO_ERROR: stop sending, RFC 9113 8.1), else reset
    it with CANCEL; the request learns it lost its connection. False if not on HTTP/2."""
    h2 = h2_connection(request)
    stream_id = getattr(request.channel, "streamID", None)
    if h2 is None or stream_id is None or stream_id not in getattr(h2, "streams", {}):
        return False
    stream = h2.streams[stream_id]
    with contextlib.suppress(StreamClosedError):  # the client had ended its side
        if status is not None and not request.startedWriting:
            h2.conn.send_headers(stream_id, [(b":status", b"%d" % status)], end_stream=True)
            h2.conn.reset_stream(stream_id, error_code=NO_ERROR)
        else:
            h2.conn.reset_stream(stream_id, error_code=CANCEL)
    h2._tryToWriteControlData()
    stream.connectionLost(Failure(ConnectionLost(reason)))
    if stream_id in h2.streams:
        h2._requestDone(stream_id)
    return True
