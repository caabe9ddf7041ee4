"""Request-head limits for twisted.web's HTTP/1.1 channel: a total deadline and sizes.

What Twisted 26 does on its own, and why that is not enough (tests/web/test_httplimits.py
shows each):

- its idle timeout restarts with every byte, so a head sent one line every few seconds is
  kept open for ever;
- a line over ``MAX_LENGTH`` (no CRLF yet) makes LineReceiver call ``transport.loseConnection``
  directly, without unregistering the channel as the transport's producer; over TLS that close
  waits for the producer and never happens: the connection hangs, no answer;
- too many headers or too large a head is answered 400, not 431 (RFC 6585 5) or 414.

:class:`LimitedHTTPChannel` answers 408 (head not complete within ``head_timeout`` of its
first byte), 414 (request line), 431 (a header line, the whole head, the header count), then
closes; each refusal is reported to the site (``http_refused``) to be logged and counted. It
overrides only public methods of HTTPChannel and LineReceiver; building the channel needs
Twisted's private ``_GenericHTTPChannelProtocol`` (the HTTP/1.1-or-HTTP/2 switch), and
passing only real pauses and resumes to the connection (:class:`ReadGate`) its private
``_networkProducer``; both are here alone.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http import _GenericHTTPChannelProtocol  # private: see the module docstring
from zope.interface import implementer

from .h2send import BatchedH2Connection

__all__ = ["HTTPLimits", "LimitedHTTPChannel", "RefusalSink", "limited_channel"]

STATUS_TEXT = {
    408: b"Request Timeout",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
}


@attrs.frozen
class HTTPLimits:
    """The limits of one site. Heads: total deadline and sizes. Bodies: in every window of
    ``body_timeout`` seconds in which the node was ready to read, at least
    ``body_timeout * body_min_rate`` bytes (and at least one) must arrive."""

    head_timeout: float = 10.0
    max_request_line: int = 8192
    max_head_bytes: int = 32768  # request line and every header line, CRLFs counted
    max_headers: int = 100
    body_timeout: float = 30.0
    body_min_rate: int = 500  # bytes per second


class RefusalSink(Protocol):
    """What a site offers its channels: the limits, and where refusals are reported."""

    http_limits: HTTPLimits

    def http_refused(self, transport: Any, counter: str, reason: str) -> None: ...


def _refused_default(transport: Any, counter: str, reason: str) -> None:
    pass


@implementer(IPushProducer)
class ReadGate:
    """The connection's reading as the channel pauses and resumes it, passing on only
    changes. Twisted's HTTPChannel resumes its connection after every request whether it had
    paused it or not; on the overlay each resume also flushes the stack's output at once,
    which cost ~6 % of the node's small-request path (docs/performance.md)."""

    paused = False

    def __init__(self, producer: Any) -> None:
        self.producer = producer

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.producer.pauseProducing()

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self.producer.resumeProducing()

    def stopProducing(self) -> None:
        self.producer.stopProducing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.producer, name)  # it is the transport: unregisterProducer...


class LimitedHTTPChannel(http.HTTPChannel):
    """HTTPChannel with a head deadline and 408/414/431 answers (see the module docstring)."""

    limits = HTTPLimits()
    _head_timer: IDelayedCall | None = None
    _head_lines = 0
    _head_bytes = 0
    _refused = False

    def connectionMade(self) -> None:
        limits = getattr(self.site, "http_limits", None)  # type: ignore[attr-defined]
        if isinstance(limits, HTTPLimits):
            self.limits = limits
        # our checks run first; Twisted's own (answered 400) stay as a backstop
        self.MAX_LENGTH = self.limits.max_head_bytes
        self.totalHeadersSize = self.limits.max_head_bytes + 1
        self.maxHeaders = self.limits.max_headers + 1
        super().connectionMade()
        self._networkProducer = ReadGate(self._networkProducer)

    # --- the head ------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return  # closing: nothing more is parsed or kept
        if self.line_mode and data and self._head_timer is None:
            # line mode is "between requests or inside a head": a head starts with this byte
            self._head_timer = self.callLater(self.limits.head_timeout, self._head_timed_out)
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        if self._head_lines == 0 and not line:
            self._stop_head_timer()  # a stray CRLF between requests is not a head
            super().lineReceived(line)
            return
        index = self._head_lines
        self._head_lines += 1
        self._head_bytes += len(line) + 2
        limits = self.limits
        if index == 0 and len(line) > limits.max_request_line:
            self._refuse(414, "request_line_too_long", f"request line of {len(line)} bytes")
        elif line and index > limits.max_headers:
            self._refuse(431, "too_many_headers", f"more than {limits.max_headers} headers")
        elif self._head_bytes > limits.max_head_bytes:
            self._refuse(431, "head_too_large", f"head over {limits.max_head_bytes} bytes")
        else:
            super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._head_lines == 0:
            self._refuse(414, "request_line_too_long", f"request line over {len(line)} bytes")
        else:
            self._refuse(431, "head_too_large", f"header line over {len(line)} bytes")

    def allHeadersReceived(self) -> None:
        self._stop_head_timer()
        self._head_lines = self._head_bytes = 0
        super().allHeadersReceived()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport is None or getattr(self.transport, "disconnecting", False):
            return  # already closing (e.g. a 400 from Twisted's own checks)
        self._refuse(
            408, "head_timeout", f"request head not complete after {self.limits.head_timeout:g} s"
        )

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            if self._head_timer.active():
                self._head_timer.cancel()
            self._head_timer = None

    def _refuse(self, status: int, counter: str, reason: str) -> None:
        """Answer ``status`` and close; report the refusal once."""
        if self._refused or self.transport is None:
            return
        self._refused = True
        self._stop_head_timer()
        self.setTimeout(None)
        report = getattr(self.site, "http_refused", _refused_default)  # type: ignore[attr-defined]
        report(self.transport, counter, reason)
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            % (status, STATUS_TEXT[status])
        )
        self.loseConnection()  # unregisters the producer first, so a TLS close does happen

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_head_timer()
        super().connectionLost(reason)


class ChannelSwitch(_GenericHTTPChannelProtocol):
    """Twisted's HTTP/1.1-or-HTTP/2 switch, which on ``h2`` builds our
    :class:`~funnel_tw.web.h2send.BatchedH2Connection` instead of Twisted's (the same steps
    as Twisted 26's ``dataReceived``; tests/web/test_h2send.py checks the result)."""

    def dataReceived(self, data: bytes) -> None:
        if self._negotiatedProtocol is None:
            channel: Any = self._channel
            if getattr(channel.transport, "negotiatedProtocol", None) == b"h2":
                producer = channel._networkProducer
                producer.unregisterProducer()
                channel.setTimeout(None)
                h2: Any = BatchedH2Connection()
                h2.requestFactory = self._requestFactory
                h2.site = self._site
                h2.factory = self._factory
                h2.timeOut = self._timeOut
                h2.callLater = self._callLater
                self._channel = h2
                h2.makeConnection(channel.transport)
                producer.registerProducer(h2, True)
                self._negotiatedProtocol = b"h2"  # type: ignore[assignment]  # typed as None
        super().dataReceived(data)


def limited_channel(factory: Any = None) -> _GenericHTTPChannelProtocol:
    """A Site's ``protocol``: the HTTP/1.1-or-HTTP/2 switch around a limited HTTP/1.1
    channel (HTTP/2 is bounded by serve/guard.py below it)."""
    return ChannelSwitch(LimitedHTTPChannel())
