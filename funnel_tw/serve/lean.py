"""The fast path for the commonest request of all: an HTTP/1.1 GET or HEAD, without a body, to
an unguarded proxy mount.

twisted.web serves a request through a line-by-line head parser, a ``Request`` object with two
``Headers``, resource traversal, a Deferred for its end and a timer or two; with the proxy
around it that was about a quarter of the node's busy time per small request
(docs/performance.md, lever 18). Here such a request is read from one buffer in one pass,
routed with the mount router's own lookup (:meth:`MountRouter.proxy_route`), sent with the
proxy's own header rules (:func:`~funnel_tw.serve.proxy.forward_pairs`) through the same
backend pools, and its response head is written as twisted.web would write it (the same
headers, names, order and framing: tests/serve/test_lean.py compares the bytes).

Everything else goes to twisted.web, which stays the reference and keeps every limit: a head
that is not complete in the buffer (a slow or fragmented client: the 408 deadline), any limit
reached (414, 431), anything Twisted would answer 400, another method or version, a body
(Content-Length, Transfer-Encoding), ``Expect``, ``Upgrade``, a ``Connection`` header other
than ``close`` or ``keep-alive``, a path the normalizer refuses, any mount that is not an
unguarded proxy (text, files, access policies), a capturing inspector. The hand-over happens
between two requests, with the bytes not yet read: from then on the connection is twisted.web's
(:class:`LeanSwitch`). So the fast path only ever accepts a subset of what the reference
accepts, and answers it the same way.

Timers: one per connection, for the idle timeout and the proxy's response-head timeout both,
re-armed only when it fires (no timer calls per request).
"""

from __future__ import annotations

import re
import time
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, datetimeToString
from twisted.web.http import Request as HTTPRequest
from twisted.web.http_headers import _nameEncoder  # private: Twisted's own name canonicalizer
from twisted.web.server import version as SERVER_VERSION
from zope.interface import implementer

from ..web.httplimits import ChannelSwitch, LimitedHTTPChannel
from ..web.paths import PathError, normalize, split_target
from .guard import server_name
from .notes import request_notes
from .proxy import (
    _BAD_TARGET,
    BODILESS,
    failure_answer,
    forward_pairs,
    passing_response_headers,
    request_head,
)
from .streaming import StreamingRequest

log = Logger()

__all__ = ["LeanChannel", "LeanSwitch", "lean_channel", "parse_request_head"]

ABORT_TIMEOUT = 15.0  # as twisted.web's: a timed-out client that does not close is aborted
_METHODS = frozenset((b"GET", b"HEAD"))
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_TARGET = re.compile(rb"[\x21-\x7e]+\Z")
_VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# request headers that need twisted.web: a body, an interim response, an upgrade
_NOT_LEAN = frozenset((b"Content-Length", b"Transfer-Encoding", b"Expect", b"Upgrade"))


def parse_request_head(
    head: bytes, max_line: int, max_headers: int
) -> tuple[bytes, bytes, dict[bytes, list[bytes]], bool] | None:
    """(method, target, headers by canonical name, close) of a request head (without its
    final CRLF CRLF) that the fast path takes, or None. ``close``: the client sent
    ``Connection: close``. The headers are grouped as twisted.web's ``Headers`` holds them,
    so both paths forward the same head."""
    lines = head.split(b"\r\n")
    first = lines[0]
    if len(first) > max_line or len(lines) - 1 > max_headers:
        return None  # twisted.web answers 414 or 431
    method, _, rest = first.partition(b" ")
    target, _, version = rest.partition(b" ")
    if version != b"HTTP/1.1" or method not in _METHODS or _TARGET.match(target) is None:
        return None
    headers: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or _TOKEN.match(name) is None:
            return None  # also a folded line (it starts with a space) and an empty one
        value = value.strip(b" \t")
        if _VALUE_BAD.search(value) is not None:
            return None
        headers.setdefault(_nameEncoder.encode(name), []).append(value)
    if not headers.keys().isdisjoint(_NOT_LEAN) or len(headers.get(b"Host", ())) != 1:
        return None
    close = False
    connection = headers.get(b"Connection")
    if connection is not None:
        token = connection[0].lower() if len(connection) == 1 else b""
        if token not in (b"close", b"keep-alive"):
            return None
        close = token == b"close"
    return method, target, headers, close


class LeanRecord:
    """What the access log and metrics read of a request (node/observe.py), for one served
    here: the same attributes a twisted.web request offers them."""

    code = 0
    sentLength = 0
    clientproto = b"HTTP/1.1"
    getRequestHostname = HTTPRequest.getRequestHostname

    def __init__(
        self, method: bytes, uri: bytes, headers: dict[bytes, list[bytes]], transport: Any
    ) -> None:
        self.method = method
        self.uri = uri
        self.headers = headers
        self._transport = transport

    def getHeader(self, name: bytes) -> bytes | None:
        values = self.headers.get(_nameEncoder.encode(name))
        return values[-1] if values else None

    def getHost(self) -> Any:
        return self._transport.getHost()


_date = (0, b"")


def http_date() -> bytes:
    """The Date header's value, formatted once a second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, datetimeToString(now))
    return _date[1]


@implementer(IPushProducer)
class LeanChannel:
    """One HTTPS connection's requests while they take the fast path (module docstring):
    the transport's producer, and the backend exchange's response sink. One request at a
    time; bytes that arrive meanwhile (pipelined requests) wait in the buffer, reading paused
    once that holds more than a head may."""

    transport: Any = None
    exchange: Any = None
    record: LeanRecord | None = None
    proxy: Any = None
    method = b""
    head = b""  # the response head, until the body's first bytes go with it
    _timer: IDelayedCall | None = None
    _abort_timer: IDelayedCall | None = None

    def __init__(self, switch: LeanSwitch, site: Any, router: Any, host: str, step: float) -> None:
        self.switch = switch
        self.site = site
        self.router = router
        self.host = host
        self.reactor = site.reactor
        self.limits = site.http_limits
        self.idle_timeout: float | None = switch._saved_timeout
        # the proxy timeout of every mount of this host's site: the timer is never later than
        # now + this, so a request's deadline needs no timer call
        self.step = step
        self.buffer = b""
        self.busy = False  # a request is being answered
        self.closing = False  # no more requests: "Connection: close", or timed out
        self.over = False  # handed over to twisted.web, or the connection is lost
        self.timed_out = False
        self.chunked = self.streaming = False
        self.idle_since = self.reactor.seconds()
        self.response_deadline: float | None = None
        self._pauses: set[str] = set()  # why reading is paused: "write", "buffer"
        self._serving = False

    # --- the connection ------------------------------------------------------------------

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        transport.registerProducer(self, True)
        self._arm(self.reactor.seconds())

    def dataReceived(self, data: bytes) -> None:
        if self.over or self.closing:
            return  # after "Connection: close" whatever the client sends is dropped
        self.buffer += data
        if self.busy:
            if len(self.buffer) > self.limits.max_head_bytes:
                self._pause_reading("buffer")
            return
        self._serve()

    def connectionLost(self, reason: Failure) -> None:
        if self.over:
            return
        self.over = True
        self._cancel_timers()
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.cancel()  # a response half read cannot go back to the pool
        if self.busy and self.record is not None:
            request_notes(self.record).setdefault("reason", "connection lost")
            self._log_request()
        self.switch.lean_lost(reason)

    # --- IPushProducer: the client's side of the response --------------------------------

    def pauseProducing(self) -> None:
        self._pause_reading("write")
        if self.exchange is not None:
            self.exchange.pauseProducing()

    def resumeProducing(self) -> None:
        self._resume_reading("write")
        if self.exchange is not None:
            self.exchange.resumeProducing()

    def stopProducing(self) -> None:
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.cancel()

    def _pause_reading(self, why: str) -> None:
        if not self._pauses:
            self.transport.pauseProducing()
        self._pauses.add(why)

    def _resume_reading(self, why: str) -> None:
        if why in self._pauses:
            self._pauses.discard(why)
            if not self._pauses:
                self.transport.resumeProducing()

    # --- requests ------------------------------------------------------------------------

    def _serve(self) -> None:
        """Answer the complete heads in the buffer one after the other, or hand over."""
        if self._serving:
            return  # a response that ended at once: the loop below goes on
        self._serving = True
        try:
            while self.buffer and not (self.busy or self.over or self.closing):
                if not self._start(self.buffer):
                    self._hand_over()
        finally:
            self._serving = False

    def _start(self, buffer: bytes) -> bool:
        """Send the request at the start of ``buffer`` to its backend; False if it is not
        one for the fast path."""
        limits = self.limits
        end = buffer.find(b"\r\n\r\n")
        if end < 0 or end + 4 > limits.max_head_bytes:
            return False
        parsed = parse_request_head(buffer[:end], limits.max_request_line, limits.max_headers)
        if parsed is None:
            return False
        method, target, headers, close = parsed
        try:
            raw_path, query = split_target(target)
            path = normalize(raw_path)
        except PathError:
            return False
        route = self.router.proxy_route(self.host, path)
        if route is None:
            return False
        prefix, proxy = route
        query_text = (query or b"").decode("utf-8", "surrogateescape")
        out_target = proxy.target.outgoing_path(path, query_text, prefix).encode(
            "utf-8", "surrogateescape"
        )
        if _BAD_TARGET.search(out_target) is not None:
            return False
        self.buffer = buffer[end + 4 :]
        self.router.count("fast_path")
        self.busy = True
        self.closing = close
        self.method = method
        self.proxy = proxy
        self.chunked = self.streaming = self.timed_out = False
        self.head = b""
        self.record = record = LeanRecord(method, target, headers, self.transport)
        if self.site.on_request is not None:
            notes = request_notes(record)
            notes["started"] = self.reactor.seconds()
            notes["mount"] = prefix
        pairs = forward_pairs(
            headers.items(),
            headers.get(b"Connection"),
            proxy.flow,
            False,
            proxy.underscores,
            proxy.target.netloc,
            None,
        )
        head = request_head(method, out_target, pairs)
        pool = proxy.backends.pool_for(proxy.target)
        exchange = pool.request(head, None, self, no_body=method == b"HEAD", retry=True)
        if self.busy and exchange.sink is not None:  # else it failed at once, and was answered
            self.exchange = exchange
            self.response_deadline = deadline = self.reactor.seconds() + proxy.timeout
            if self._timer is not None and self._timer.getTime() > deadline:
                self._timer.reset(proxy.timeout)  # a mount with its own timeout
        return True

    # --- the response (the backend client's ResponseSink) ---------------------------------

    def response_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.response_deadline = None
        out = self._node_headers()
        kept, own = passing_response_headers(status, headers)
        for lower in own:
            out.pop(_nameEncoder.encode(lower), None)  # the backend's own, as proxy.py
        for name, value in kept:
            out.setdefault(_nameEncoder.encode(name), []).append(value)
        bodiless = status in BODILESS
        length = out.get(b"Content-Length")
        if not bodiless and b"Content-Type" not in out and not (length and length[0] == b"0"):
            out[b"Content-Type"] = [b"text/html"]  # twisted.web's defaultContentType
        bodyless = bodiless or self.method == b"HEAD"
        if length is None and not bodyless:
            out[b"Transfer-Encoding"] = [b"chunked"]
            self.chunked = True
        self._write_head(status, reason, out)
        if not bodyless:
            self.streaming = True
            if "write" in self._pauses and self.exchange is not None:
                self.exchange.pauseProducing()

    def _node_headers(self) -> dict[bytes, list[bytes]]:
        """What twisted.web's response head starts with, in its order."""
        out: dict[bytes, list[bytes]] = {b"Connection": [b"close"]} if self.closing else {}
        out[b"Server"] = [SERVER_VERSION]
        out[b"Date"] = [http_date()]
        return out

    def _write_head(self, status: int, reason: bytes, headers: dict[bytes, list[bytes]]) -> None:
        """Build the head; like twisted.web, it is sent with the body's first bytes or at the
        end (a response cut short before either sends nothing)."""
        assert self.record is not None
        self.record.code = status
        reason = reason or RESPONSES.get(status, b"Unknown Status")
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        for name, values in headers.items():
            for value in values:
                parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        self.head = b"".join(parts)

    def response_data(self, data: bytes) -> None:
        out, self.head = self.head, b""
        if self.streaming:  # else (HEAD, 204, 304) only the head goes, as twisted.web does
            assert self.record is not None
            self.record.sentLength += len(data)
            if data:
                out += b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data
        if out:
            self.transport.write(out)

    def response_end(self) -> None:
        end = b"0\r\n\r\n" if self.chunked else b""
        if self.head or end:
            self.transport.write(self.head + end)
        self._finished()

    def response_failed(self, why: str, started: bool) -> None:
        self.exchange = None
        if self.over:
            return
        answer = failure_answer(self.proxy.target.url, why, started, self.timed_out)
        if answer is None:
            self.transport.abortConnection()
            return
        code, message = answer
        headers = self._node_headers()
        headers[b"Content-Type"] = [b"text/plain; charset=utf-8"]
        head = self.method == b"HEAD"
        if not head:
            headers[b"Transfer-Encoding"] = [b"chunked"]
        self._write_head(code, b"", headers)
        self.chunked = self.streaming = not head
        self.response_data(f"{code} {message}\n".encode())
        self.response_end()

    def _finished(self) -> None:
        self.exchange = None
        self.busy = False
        self.response_deadline = None
        self._log_request()
        self.record = None
        if self.closing:
            self._close()
            return
        self.idle_since = self.reactor.seconds()
        self._resume_reading("buffer")
        self._serve()

    def _log_request(self) -> None:
        if self.site.on_request is not None and self.record is not None:
            self.site.log(self.record)

    def _close(self) -> None:
        self.closing = True
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    # --- the hand-over to twisted.web ----------------------------------------------------

    def _hand_over(self) -> None:
        self.router.count("fast_path_handed_over")
        self.over = True
        self._cancel_timers()
        data, self.buffer = self.buffer, b""
        self.transport.unregisterProducer()
        if self._pauses:
            self._pauses.clear()
            self.transport.resumeProducing()
        self.switch.lean_handed_over(data)

    # --- the one timer: the idle timeout and the response-head deadline -------------------

    def _arm(self, now: float) -> None:
        if self.busy:
            wake = self.response_deadline or now + self.step
        elif self.idle_timeout and not self.closing:
            wake = min(self.idle_since + self.idle_timeout, now + self.step)
        else:
            wake = now + self.step
        self._timer = self.reactor.callLater(max(0.0, wake - now), self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self.over:
            return
        now = self.reactor.seconds()
        deadline = self.response_deadline
        if self.busy and deadline is not None and now >= deadline:
            self.timed_out = True
            exchange, self.exchange = self.exchange, None
            if exchange is not None:
                exchange.cancel()
            self.response_failed("no response within the timeout", False)
        elif self._idle_over(now):
            log.info("Timing out client: {peer}", peer=self.transport.getPeer())
            self._close()
            self._abort_timer = self.reactor.callLater(
                ABORT_TIMEOUT, self.transport.abortConnection
            )
        if not self.over and self._timer is None:
            self._arm(now)

    def _idle_over(self, now: float) -> bool:
        if self.busy or self.closing or not self.idle_timeout:
            return False
        return bool(now >= self.idle_since + self.idle_timeout)

    def _cancel_timers(self) -> None:
        for timer in (self._timer, self._abort_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._abort_timer = None


class LeanSwitch(ChannelSwitch):
    """The HTTP/1.1-or-HTTP/2 switch of an HTTPS site, with the fast path in front of
    twisted.web's HTTP/1.1 channel: chosen at the first bytes when the connection did not
    negotiate h2, given back to twisted.web for good at the first request it does not take."""

    _decided = False
    _saved_timeout: Any = None

    def dataReceived(self, data: bytes) -> None:
        if not self._decided:
            self._decided = True
            self._try_lean()
        super().dataReceived(data)

    def _try_lean(self) -> None:
        channel: Any = self._channel
        transport = channel.transport
        site: Any = self._site
        if getattr(transport, "negotiatedProtocol", None) == b"h2" or not getattr(site, "lean", 0):
            return
        router = site.resource
        if site.requestFactory is not StreamingRequest or not hasattr(router, "proxy_route"):
            return  # an inspector capturing requests; a site without mounts
        host = server_name(transport) or router.flow.host
        served = router.serve.site(host, router.port)
        if served is None:
            return
        channel._networkProducer.unregisterProducer()
        self._saved_timeout = channel.setTimeout(None)
        lean = LeanChannel(self, site, router, host, router.serve.timeouts[served])
        self._channel = lean  # type: ignore[assignment]
        lean.makeConnection(transport)

    def lean_handed_over(self, data: bytes) -> None:
        """From here on twisted.web's channel reads the connection, ``data`` first."""
        channel: Any = self._http11
        self._channel = channel
        channel._networkProducer.registerProducer(channel, True)
        channel.setTimeout(self._saved_timeout)
        if data:
            channel.dataReceived(data)

    def lean_lost(self, reason: Failure) -> None:
        self._http11.connectionLost(reason)

    def makeConnection(self, transport: Any) -> None:
        self._http11: Any = self._channel  # twisted.web's, whichever reads the connection
        super().makeConnection(transport)


def lean_channel(factory: Any = None) -> LeanSwitch:
    """An HTTPS site's ``protocol``: :class:`LeanSwitch` around a limited HTTP/1.1 channel."""
    return LeanSwitch(LimitedHTTPChannel())
