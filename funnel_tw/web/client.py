"""A lean HTTP/1.1 client for the reverse proxy's backends: pooled keep-alive connections,
one exchange at a time per connection, bodies streamed both ways with backpressure.

Why not twisted.web.client.Agent: for every request it re-parsed a URL, built two Headers
objects, chained several Deferreds and parsed the response a line at a time through a state
machine of method calls; that was 40-45 % of the node's small-request path
(docs/performance.md). Here an exchange is one write of a prebuilt head, a response head found
with one ``find`` and split once, and plain method calls on the caller's :class:`ResponseSink`.

Strict where a lenient reading would let a backend desynchronise a pooled connection (the
response is refused with a reason, 502 to the client, and the connection dropped, never
reused): Content-Length together with Transfer-Encoding, differing or non-numeric
Content-Length values, bare CR or LF in the head, a header name with whitespace or a folded
(obs-fold) line, a chunk size that is not plain hex, a head or chunk line over its bound, bytes
after a complete response. A ``101`` to a request that did not ask to upgrade is refused too.
Interim ``1xx`` responses are read and dropped. A body delimited by the connection's close is
read to the close, and that connection is not reused.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from twisted.internet import defer, protocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from ..turn import end_of_turn
from .factories import OneProtocolFactory
from .sendnow import SMALL, write_now

MAX_HEAD = 64 * 1024  # bytes of a response head (status line and headers)
MAX_CHUNK_LINE = 4096  # a chunk-size line with its extensions, or one trailer line
MAX_TRAILERS = 64 * 1024
# A socket transport reads 64 KiB a reactor turn (Twisted's bufferSize). Once a read fills it,
# a large body is streaming: the connection reads this much a turn from then on, so a download
# is not held to 64 KiB per turn of a node that also sends and takes ACKs in that turn (issue
# 12: at 50 ms the node read its backend in full 64 KiB reads, one a turn, ~127 MB/s while it
# read; at 0 ms a quarter of the turns saved 15-20 % of the node's CPU per MB). A connection
# that only carries small answers keeps the 64 KiB read and its allocation.
STREAM_READ = 256 * 1024
IDLE_TIMEOUT = 60.0  # an idle pooled connection is closed after this long
# idle connections kept per backend: above the requests a few busy clients keep in flight (one
# HTTP/2 client alone may have 100 streams open); at 64, 320 in flight closed and reopened a
# backend connection for most requests
MAX_IDLE = 256

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}\Z")
_DIGITS = re.compile(rb"[0-9]{1,18}\Z")

# body framing of the response being read
_HEAD, _LENGTH, _CHUNKED, _CLOSE = range(4)
# the chunked decoder's position
_SIZE, _DATA, _DATA_END, _TRAILER = range(4)


class BadResponse(Exception):
    """The backend's response cannot be read one way only; the message says why."""


class ResponseSink(Protocol):
    """What hears about one exchange (the proxy's request). Exactly one of ``response_end``
    and ``response_failed`` ends it; ``response_failed`` with ``started`` False means no
    head was delivered (answer 502), True that the body was cut short."""

    def response_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """The final (non-1xx) response head; framing headers are still in ``headers``."""

    def response_data(self, data: bytes) -> None:
        """A piece of the body (decoded from chunks)."""

    def response_end(self) -> None:
        """The body is complete."""

    def response_failed(self, why: str, started: bool) -> None:
        """No (complete) response; ``why`` is for the log."""


_NAMES: set[bytes] = set()  # header names already found to be tokens (bounded)


def parse_head(head: bytes) -> tuple[int, int, bytes, list[tuple[bytes, bytes]]]:
    """(minor version, status, reason, headers) of a response head without its final CRLF CRLF.
    Raises BadResponse."""
    lines = head.split(b"\r\n")
    breaks = len(lines) - 1
    if head.count(b"\n") != breaks or head.count(b"\r") != breaks:
        raise BadResponse("a bare CR or LF in the response head")
    first = lines[0]
    if first[:9] in (b"HTTP/1.1 ", b"HTTP/1.0 ") and first[9:12].isdigit() and first[9] != 48:
        if len(first) == 12 or first[12] == 32:  # "HTTP/1.1 200" or "HTTP/1.1 200 OK"
            minor, status, reason = first[7] - 48, int(first[9:12]), first[13:]
        else:
            raise BadResponse(f"not an HTTP/1.x status line: {first[:80]!r}")
    else:
        raise BadResponse(f"not an HTTP/1.x status line: {first[:80]!r}")
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if name not in _NAMES:
            if not colon or _TOKEN.match(name) is None:
                raise BadResponse(f"a malformed header line: {line[:80]!r}")
            if len(_NAMES) < 1024:
                _NAMES.add(name)
        elif not colon:
            raise BadResponse(f"a malformed header line: {line[:80]!r}")
        headers.append((name, value.strip(b" \t")))
    return minor, status, reason, headers


def body_framing(headers: list[tuple[bytes, bytes]]) -> tuple[int, int | None, bool]:
    """(framing, length, close) from a response's headers: ``_LENGTH`` with its length,
    ``_CHUNKED``, or ``_CLOSE`` (to the connection's end); ``close``: the backend said
    ``Connection: close``. Raises BadResponse for a head that frames the body two ways."""
    lengths: list[bytes] = []
    codings: list[bytes] = []
    close = False
    for name, value in headers:
        lower = name.lower()
        if lower == b"content-length":
            lengths.extend(v.strip(b" \t") for v in value.split(b","))
        elif lower == b"transfer-encoding":
            codings.extend(c.strip(b" \t").lower() for c in value.split(b","))
        elif lower == b"connection":
            close = close or b"close" in [t.strip(b" \t").lower() for t in value.split(b",")]
    if codings:
        if lengths:
            raise BadResponse("both Content-Length and Transfer-Encoding")
        if codings[-1] == b"chunked":
            if codings.count(b"chunked") != 1:
                raise BadResponse("chunked applied twice")
            return _CHUNKED, None, close
        return _CLOSE, None, True
    if lengths:
        if len(set(lengths)) != 1 or _DIGITS.match(lengths[0]) is None:
            raise BadResponse(f"an invalid Content-Length: {b', '.join(lengths)[:80]!r}")
        return _LENGTH, int(lengths[0]), close
    return _CLOSE, None, True


@implementer(IPushProducer)
class Exchange:
    """One request and its response, on whichever pooled connection carries it. The caller
    registers it as the producer of the response's consumer: pausing it pauses the backend's
    reads while this exchange holds the connection, and only then."""

    def __init__(
        self,
        pool: BackendPool,
        head: bytes,
        body: bytes | Any | None,
        sink: ResponseSink,
        *,
        no_body: bool,
        retry: bool,
        upgrade: bool = False,
    ) -> None:
        self.pool = pool
        self.head = head  # request line and headers, each line ending in CRLF, no framing
        self.body = body  # bytes, an IBodyProducer (our streaming BodySource), or None
        self.sink: ResponseSink | None = sink
        self.no_body = no_body  # a HEAD request: the response has no body whatever it says
        self.retry = retry  # may be sent again on a fresh connection if a reused one was stale
        self.upgrade = upgrade
        self.connection: BackendConnection | None = None
        self.connecting: defer.Deferred[Any] | None = None
        self.started = False  # a response head was delivered

    # IPushProducer, from the response's consumer
    def pauseProducing(self) -> None:
        if self.connection is not None:
            self.connection.pause()

    def resumeProducing(self) -> None:
        if self.connection is not None:
            self.connection.resume()

    def stopProducing(self) -> None:
        self.cancel()

    def cancel(self) -> None:
        """Give up (timeout, or the client left): the connection is dropped, the sink hears
        nothing more."""
        self.sink = None
        if self.connecting is not None:
            connecting, self.connecting = self.connecting, None
            connecting.cancel()
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.exchange = None
            connection.abort()

    def fail(self, why: str) -> None:
        sink, self.sink = self.sink, None
        self.connection = None
        if sink is not None:
            sink.response_failed(why, self.started)


class BackendConnection(protocol.Protocol):
    """One keep-alive connection to a backend, carrying one exchange at a time."""

    def __init__(self, pool: BackendPool) -> None:
        self.pool = pool
        self.exchange: Exchange | None = None
        self.served = 0  # exchanges completed: a stale reused connection may be retried
        self.idle_since = 0.0
        self.connected_ = False
        self._paused = False
        self._waiting: list[defer.Deferred[None]] = []
        self._pending = b""  # a request to send at the end of this reactor turn
        self._reset()

    def _reset(self) -> None:
        self._buf = b""
        self._framing = _HEAD
        self._left = 0  # body bytes still expected (_LENGTH), or of this chunk (_CHUNKED)
        self._chunk = _SIZE
        self._trailers = 0
        self._close = False  # not reusable after this exchange
        self._got_bytes = False
        self._body_done = True  # the request body is all written
        self._body_length: int | None = None
        self._body_sent = 0
        self._chunked_body = False

    # --- the connection ----------------------------------------------------------------

    def connectionMade(self) -> None:
        self.connected_ = True
        set_nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if set_nodelay is not None:
            set_nodelay(True)

    def when_lost(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(d)
        return d

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.connected_ = False
        self._pending = b""
        self.pool.lost(self)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)
        exchange, self.exchange = self.exchange, None
        if exchange is None:
            return
        if self._framing == _CLOSE and not self._close_failed(reason):
            self._end(exchange)
            return
        if not self._got_bytes and self.served and exchange.retry and not exchange.started:
            self.pool.send(exchange, fresh=True)  # the backend had closed it while idle
            return
        why = reason.getErrorMessage() if self._got_bytes else f"no response: {reason.value}"
        exchange.fail(f"connection lost ({why})" if self._got_bytes else why)

    @staticmethod
    def _close_failed(reason: Failure) -> bool:
        return not reason.check(ConnectionDone)

    def abort(self) -> None:
        self._close = True
        self._pending = b""
        transport: Any = self.transport
        if transport is not None and self.connected_:
            transport.abortConnection()

    def pause(self) -> None:
        if not self._paused and self.connected_:
            self._paused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def resume(self) -> None:
        if self._paused and self.connected_:
            self._paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]

    # --- sending -----------------------------------------------------------------------

    def send(self, exchange: Exchange) -> None:
        self.exchange = exchange
        exchange.connection = self
        self._reset()
        body = exchange.body
        transport: Any = self.transport
        if body is None:
            self._send_soon(exchange.head + b"\r\n")
        elif isinstance(body, bytes):
            self._send_soon(b"%sContent-Length: %d\r\n\r\n%s" % (exchange.head, len(body), body))
        else:
            length = body.length if isinstance(body.length, int) else None
            self._body_length = length
            self._chunked_body = length is None
            framing = (
                b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length
            )
            transport.write(b"%s%s\r\n\r\n" % (exchange.head, framing))
            self._body_done = False
            transport.registerProducer(body, True)
            body.startProducing(self).addCallbacks(self._body_finished, self._body_failed)

    def _send_soon(self, data: bytes) -> None:
        """A whole small request goes out at the end of this reactor turn with the pool's
        others (BackendPool._flush); anything else at once through Twisted's queue."""
        if len(data) > SMALL:
            self.transport.write(data)  # type: ignore[union-attr]
            return
        self._pending = data
        self.pool.send_soon(self)

    def flush(self) -> None:
        """Send the pending request, if any (the pool calls it at the end of the turn)."""
        data, self._pending = self._pending, b""
        if data and self.connected_ and self.transport is not None:
            write_now(self.transport, data)

    def write(self, data: bytes) -> None:
        """IConsumer, for the request body's producer."""
        if self._body_done or not data or self.transport is None:
            return
        self._body_sent += len(data)
        if self._chunked_body:
            self.transport.writeSequence([b"%x\r\n" % len(data), data, b"\r\n"])
            return
        if self._body_length is not None and self._body_sent > self._body_length:
            self._body_over("more request body than its Content-Length")
            return
        self.transport.write(data)

    def _body_finished(self, _: object) -> None:
        if self._body_done:
            return
        self._body_done = True
        transport: Any = self.transport
        if transport is not None:
            transport.unregisterProducer()
        if self._chunked_body:
            self.transport.write(b"0\r\n\r\n")  # type: ignore[union-attr]
        elif self._body_length is not None and self._body_sent != self._body_length:
            self._body_over("less request body than its Content-Length")

    def _body_failed(self, failure: Failure) -> None:
        if not self._body_done:
            self._body_done = True
            self._body_over(f"request body failed: {failure.getErrorMessage()}")

    def _body_over(self, why: str) -> None:
        self._body_done = True
        exchange, self.exchange = self.exchange, None
        self.abort()
        if exchange is not None:
            exchange.fail(why)

    # --- receiving ---------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            self.abort()  # bytes while idle: the next exchange could not tell whose they are
            return
        self._got_bytes = True
        read_size = getattr(self.transport, "bufferSize", STREAM_READ)
        if read_size < STREAM_READ and len(data) >= read_size:
            self.transport.bufferSize = STREAM_READ  # type: ignore[union-attr]
        try:
            if self._framing == _HEAD:
                data = self._read_head(exchange, self._buf + data if self._buf else data)
                if self.exchange is not exchange or self._framing == _HEAD:
                    return
            if self._framing == _LENGTH:
                self._read_length(exchange, data)
            elif self._framing == _CHUNKED:
                self._read_chunked(exchange, self._buf + data if self._buf else data)
            elif data and exchange.sink is not None:
                exchange.sink.response_data(data)
        except BadResponse as e:
            self._bad(exchange, str(e))

    def _bad(self, exchange: Exchange, why: str) -> None:
        self.exchange = None
        self.abort()
        exchange.fail(f"bad response: {why}")

    def _read_head(self, exchange: Exchange, buf: bytes) -> bytes:
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    raise BadResponse("response head too large")
                self._buf = buf
                return b""
            if end > MAX_HEAD:
                raise BadResponse("response head too large")
            minor, status, reason, headers = parse_head(buf[:end])
            buf = buf[end + 4 :]
            if status == 101 and not exchange.upgrade:
                raise BadResponse("101 Switching Protocols to a request that did not ask")
            if 100 <= status < 200 and status != 101:
                continue  # interim: 100 Continue, 103 Early Hints
            break
        self._buf = b""
        framing, length, close = body_framing(headers)
        self._close = close or minor == 0 or status == 101
        if exchange.no_body or status in (204, 304) or status < 200:
            framing, length = _LENGTH, 0
        exchange.started = True
        sink = exchange.sink
        if sink is not None:
            sink.response_head(status, reason, headers)
        if self.exchange is not exchange:
            return b""  # the sink gave up on it
        self._framing = framing
        if framing == _LENGTH:
            self._left = length or 0
            if not self._left:
                self._end(exchange, buf)
                return b""
        elif framing == _CLOSE:
            self._close = True
        return buf

    def _read_length(self, exchange: Exchange, data: bytes) -> None:
        left = self._left
        if len(data) < left:
            self._left = left - len(data)
            if data and exchange.sink is not None:
                exchange.sink.response_data(data)
            return
        if exchange.sink is not None:
            exchange.sink.response_data(data[:left])
        self._left = 0
        if self.exchange is exchange:
            self._end(exchange, data[left:])

    def _read_chunked(self, exchange: Exchange, buf: bytes) -> None:
        pos, size = 0, len(buf)
        while pos < size:
            state = self._chunk
            if state == _DATA:
                take = min(self._left, size - pos)
                if exchange.sink is not None:
                    exchange.sink.response_data(buf[pos : pos + take])
                if self.exchange is not exchange:
                    return
                pos += take
                self._left -= take
                if self._left == 0:
                    self._chunk = _DATA_END
                continue
            if state == _DATA_END:
                if size - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise BadResponse("a chunk not followed by CRLF")
                pos += 2
                self._chunk = _SIZE
                continue
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                if size - pos > MAX_CHUNK_LINE:
                    raise BadResponse("a chunk-size or trailer line too long")
                break
            line = buf[pos:nl]
            pos = nl + 2
            if state == _SIZE:
                text = line.split(b";", 1)[0].rstrip(b" \t")
                if _HEX.match(text) is None:
                    raise BadResponse(f"an invalid chunk size: {line[:40]!r}")
                self._left = int(text, 16)
                self._chunk = _DATA if self._left else _TRAILER
                continue
            if line:  # a trailer line: dropped (bounded)
                self._trailers += len(line)
                if self._trailers > MAX_TRAILERS:
                    raise BadResponse("trailers too large")
                continue
            self._end(exchange, buf[pos:])
            return
        self._buf = buf[pos:]

    def _end(self, exchange: Exchange, extra: bytes = b"") -> None:
        """The response is complete: the connection goes back to the pool (or is closed),
        then the sink hears of the end."""
        if extra:
            self._close = True  # more than one response's worth: never reuse it
        self.exchange = None
        exchange.connection = None
        sink, exchange.sink = exchange.sink, None
        reusable = not self._close and self._body_done and self.connected_
        if not self._body_done:  # answered before the request body was all sent
            self._body_done = True
            body: Any = exchange.body
            transport: Any = self.transport
            if transport is not None:
                transport.unregisterProducer()
            body.stopProducing()
        self.served += 1
        self.resume()
        if reusable:
            self.pool.release(self)
        elif self.connected_:
            self.transport.loseConnection()  # type: ignore[union-attr]
        if sink is not None:
            sink.response_end()


class BackendPool:
    """Keep-alive connections to one backend (an endpoint): idle ones are reused last in,
    first out; at most ``max_idle`` are kept, none idle longer than ``idle_timeout``."""

    def __init__(
        self,
        reactor: Any,
        endpoint: Any,
        max_idle: int = MAX_IDLE,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.reactor = reactor
        self.endpoint = endpoint
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.idle: list[BackendConnection] = []
        self.busy: set[BackendConnection] = set()
        self._sweep: Any = None
        self._soon: list[BackendConnection] = []  # requests to send at the turn's end
        self._flush_call: Any = None
        self.connections_made = 0  # for tests and the bench: reuse works

    def request(
        self,
        head: bytes,
        body: bytes | Any | None,
        sink: ResponseSink,
        *,
        no_body: bool = False,
        retry: bool = False,
    ) -> Exchange:
        """Send ``head`` (request line and headers with their CRLFs, no body framing: added
        here) and ``body``; the response goes to ``sink``."""
        exchange = Exchange(self, head, body, sink, no_body=no_body, retry=retry)
        self.send(exchange)
        return exchange

    def send(self, exchange: Exchange, fresh: bool = False) -> None:
        if not fresh:
            now = self.reactor.seconds()
            idle = self.idle
            while idle:
                connection = idle.pop()
                if connection.connected_ and now - connection.idle_since < self.idle_timeout:
                    self.busy.add(connection)
                    connection.send(exchange)
                    return
                connection.abort()
        exchange.retry = exchange.retry and not fresh  # one retry at most
        connection = BackendConnection(self)
        self.connections_made += 1
        connecting = self.endpoint.connect(OneProtocolFactory(connection))
        exchange.connecting = connecting

        def connected(_: object) -> None:
            exchange.connecting = None
            if exchange.sink is None:  # cancelled meanwhile
                connection.abort()
                return
            self.busy.add(connection)
            connection.send(exchange)

        def failed(failure: Failure) -> None:
            exchange.connecting = None
            exchange.fail(f"connect: {failure.getErrorMessage()}")

        connecting.addCallbacks(connected, failed)

    def send_soon(self, connection: BackendConnection) -> None:
        """Send ``connection``'s request at the end of this reactor turn, with every other
        one made in it: one timed call per turn instead of, per request, registering the
        socket for writing, a turn to learn it is writable and unregistering it (two
        ``epoll_ctl`` and a dispatched event), while the backend still gets a turn's requests
        together (sending each at once woke it per request: docs/performance.md, lever 22)."""
        self._soon.append(connection)
        if self._flush_call is None:
            self._flush_call = end_of_turn(self.reactor).soon(self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        soon, self._soon = self._soon, []
        for connection in soon:
            connection.flush()

    def release(self, connection: BackendConnection) -> None:
        self.busy.discard(connection)
        if len(self.idle) >= self.max_idle:
            connection.transport.loseConnection()  # type: ignore[union-attr]
            return
        connection.idle_since = self.reactor.seconds()
        self.idle.append(connection)
        if self._sweep is None:
            self._sweep = self.reactor.callLater(self.idle_timeout, self._expire)

    def lost(self, connection: BackendConnection) -> None:
        self.busy.discard(connection)
        if connection in self.idle:
            self.idle.remove(connection)

    def _expire(self) -> None:
        self._sweep = None
        now = self.reactor.seconds()
        keep = []
        for connection in self.idle:
            if now - connection.idle_since >= self.idle_timeout:
                connection.transport.loseConnection()  # type: ignore[union-attr]
            else:
                keep.append(connection)
        self.idle = keep
        if keep:
            wait = self.idle_timeout - (now - keep[0].idle_since)
            self._sweep = self.reactor.callLater(max(wait, 1.0), self._expire)

    def close(self) -> defer.Deferred[Any]:
        """Close every connection (the node is stopping); fires once all are closed."""
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        closing = [c.when_lost() for c in [*self.idle, *self.busy] if c.connected_]
        for connection in [*self.idle, *self.busy]:
            connection.abort()
        self.idle = []
        return defer.gatherResults(closing)
