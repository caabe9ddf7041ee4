"""A twisted.web Request that can hand its body over while it is still arriving.

twisted.web buffers a whole request body (in memory or a temporary file) before it renders
anything. A reverse proxy must not: a 1 GiB upload would sit on the node's disk first. This
Request asks the site, as soon as the head is complete, whether the resource wants the body
as a stream (:func:`wants_stream`); if so it renders at once and passes each body chunk to a
:class:`BodySource` that the resource reads with backpressure. Other resources get the normal
buffered behaviour, with the body capped.

A body must keep coming (HTTP/1.1 and HTTP/2 alike): in every window of the site's
``HTTPLimits.body_timeout`` seconds in which the node was reading (it did not pause the client
for backpressure), at least ``body_timeout * body_min_rate`` bytes, and one at the least, must
arrive; else the client is answered 408 (if no response has started) and dropped: the whole
connection on HTTP/1.1, the stream on HTTP/2. A fast upload of any size is never affected.
"""

from __future__ import annotations

import io
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IDelayedCall
from twisted.web import http, server
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from ..web.httplimits import STATUS_TEXT, HTTPLimits
from .http2 import abort_stream, h2_connection

MAX_BUFFERED_BODY = 1 << 20  # for resources that do not stream (text, files)
_EARLY_LIMIT = 256 * 1024  # held while the backend connection is being set up


@implementer(IBodyProducer)
class BodySource:
    """The request body as an IBodyProducer (what the backend client, web/client.py, sends)."""

    def __init__(self, request: StreamingRequest, length: int | None) -> None:
        self.request = request
        self.length: int | object = length if length is not None else UNKNOWN_LENGTH
        self.consumer: IConsumer | None = None
        self.early: list[bytes] = []
        self.early_bytes = 0
        self.complete = False
        self.stopped = False
        self.received = 0
        self._done: defer.Deferred[None] | None = None
        self._paused_client = False
        self.received_all: defer.Deferred[None] = defer.Deferred()  # the client sent it all

    # fed by the request
    def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self.stopped:
            return
        if self.consumer is None:
            self.early.append(data)
            self.early_bytes += len(data)
            if self.early_bytes > _EARLY_LIMIT:
                self._pause_client()
            return
        self.consumer.write(data)

    def finish(self) -> None:
        self.complete = True
        if not self.received_all.called:
            self.received_all.callback(None)
        if self.consumer is not None and self._done is not None and not self._done.called:
            self._done.callback(None)

    def _reader(self) -> Any:
        """What stops the client's upload: the connection for HTTP/1.1 (the channel's own
        pause is about the response), the stream's flow control for HTTP/2."""
        channel = self.request.channel
        return getattr(channel, "_networkProducer", channel)

    def _pause_client(self) -> None:
        self.request.reading_paused = True  # this body-rate window does not count
        if not self._paused_client and self.request.channel is not None:
            self._paused_client = True
            self._reader().pauseProducing()

    def _resume_client(self) -> None:
        if self._paused_client and self.request.channel is not None:
            self._paused_client = False
            self._reader().resumeProducing()

    # IBodyProducer, driven by the backend connection
    def startProducing(self, consumer: IConsumer) -> defer.Deferred[None]:
        self.consumer = consumer
        self._done = defer.Deferred()
        early, self.early = self.early, []
        self.early_bytes = 0
        for chunk in early:
            consumer.write(chunk)
        self._resume_client()
        if self.complete:
            self._done.callback(None)
        return self._done

    def pauseProducing(self) -> None:
        self._pause_client()

    def resumeProducing(self) -> None:
        self._resume_client()

    def stopProducing(self) -> None:
        self.stopped = True
        self._resume_client()  # keep reading (and discarding) so the request can complete


def wants_stream(resource: Any) -> bool:
    return bool(getattr(resource, "streams_request_body", False))


class StreamingRequest(server.Request):
    """Decides at the first body chunk (all headers are known by then, for HTTP/1.1 and
    HTTP/2 alike) whether the resource takes the body as a stream."""

    body: BodySource | None = None
    _early = False
    _decided = False
    _buffered = 0
    _length: int | None = None
    _body_complete = False
    _finish_when_complete = False
    _body_timer: IDelayedCall | None = None
    _window_bytes = 0
    reading_paused = False  # set when the node paused the client during this window

    def _request_line(self) -> tuple[bytes, bytes, bytes] | None:
        channel = self.channel
        if hasattr(channel, "_command"):  # HTTP/1.x
            return channel._command, channel._path, channel._version
        command = getattr(channel, "command", None)
        path = getattr(channel, "path", None)
        if command is None or path is None:
            return None
        return command, path, b"HTTP/2"

    def gotLength(self, length: int | None) -> None:
        self._length = length
        super().gotLength(length)
        if length != 0:
            self._watch_body()

    # --- the body's minimum rate ---------------------------------------------------------

    def _watch_body(self, limits: HTTPLimits | None = None) -> None:
        site = getattr(self.channel, "site", None)
        limits = limits or getattr(site, "http_limits", None)
        reactor = getattr(site, "reactor", None)
        if not isinstance(limits, HTTPLimits) or reactor is None:
            return
        self._window_bytes = 0
        self.reading_paused = bool(self.body is not None and self.body._paused_client)
        self._body_timer = reactor.callLater(limits.body_timeout, self._check_body, limits)

    def _check_body(self, limits: HTTPLimits) -> None:
        self._body_timer = None
        if self.channel is None or self._body_complete:
            return
        need = max(1, int(limits.body_timeout * limits.body_min_rate))
        if self.reading_paused or self._window_bytes >= need:
            self._watch_body(limits)
            return
        self._body_too_slow(
            f"request body: {self._window_bytes} bytes in {limits.body_timeout:g} s "
            f"(at least {need})"
        )

    def _stop_body_watch(self) -> None:
        if self._body_timer is not None and self._body_timer.active():
            self._body_timer.cancel()
        self._body_timer = None

    def _body_too_slow(self, reason: str) -> None:
        channel: Any = self.channel
        h2 = h2_connection(self)
        transport = h2.transport if h2 is not None else channel.transport
        report = getattr(channel.site, "http_refused", None)
        if report is not None:
            report(transport, "body_too_slow", reason)
        if h2 is not None:
            abort_stream(self, 408, reason)
            return
        if not self.startedWriting and transport is not None:
            transport.write(
                b"HTTP/1.1 408 %s\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
                % STATUS_TEXT[408]
            )
        channel.loseConnection()

    def connectionLost(self, reason: Any) -> None:
        self._stop_body_watch()
        super().connectionLost(reason)

    def _decide(self) -> None:
        self._decided = True
        line = self._request_line()
        if line is None:
            return
        self._set_line(*line)
        self.site = self.channel.site  # type: ignore[attr-defined]
        try:
            resource = self.site.getResourceFor(self)
        except Exception:
            return
        if not wants_stream(resource):
            return
        self._early = True
        self.content = io.BytesIO()
        self.body = BodySource(self, self._length)
        self._set_line(*line)
        self.process()

    def _set_line(self, command: bytes, path: bytes, version: bytes) -> None:
        self.method, self.uri, self.clientproto = command, path, version
        x = path.split(b"?", 1)
        self.path = x[0]
        self.args = http.parse_qs(x[1], 1) if len(x) > 1 else {}
        self.prepath, self.postpath = [], [unquote_to_bytes(p) for p in self.path[1:].split(b"/")]

    def handleContentChunk(self, data: bytes) -> None:
        self._window_bytes += len(data)
        if not self._decided:
            self._decide()
        if self.body is not None:
            self.body.feed(data)
            return
        self._buffered += len(data)
        if self._buffered > MAX_BUFFERED_BODY:
            self.channel._respondToBadRequestAndDisconnect()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self._stop_body_watch()  # the body is complete
        if self._early:
            assert self.body is not None
            self.body.finish()
            self._body_complete = True
            if self._finish_when_complete:
                super().finish()
            return
        super().requestReceived(command, path, version)

    def finish(self) -> None:
        # the response may end before the upload does (an error from the backend); the
        # request is complete only when its body is, so hold the finish until then
        if self._early and not self._body_complete:
            self._finish_when_complete = True
            if self.body is not None:
                self.body.stopProducing()
            return
        super().finish()
