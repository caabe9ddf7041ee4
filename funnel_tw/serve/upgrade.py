"""HTTP/1.1 ``Upgrade`` through the reverse proxy: splice only after the backend's real 101.

The request goes to the backend on a connection of its own, spoken with h11. While the backend
has not answered, the client's connection stays with twisted.web, which reads nothing more
(it holds a connection while a request is in flight). Then:

- ``101`` whose ``Upgrade`` names a protocol the client asked for: the client's connection is
  taken from twisted.web (web/hijack.py), the 101 head is written, and the two connections are
  spliced; from here on the bytes are the upgraded protocol's.
- any other final response: it is relayed as an ordinary response, and the client's connection
  goes on being parsed as HTTP. Bytes the client sent after the head are never given to the
  backend raw: they are the next request, and pass through every rule of the proxy as such.
- a 101 for a protocol nobody asked for, a broken head, a backend that closes or does not answer
  in time: 502 or 504.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import h11
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES
from twisted.web.server import Request

from ..web import splice
from ..web.factories import OneProtocolFactory
from ..web.hijack import HijackError, hijack

log = Logger()

MAX_HEAD = 64 * 1024  # bytes of the backend's response head


def requested_protocols(request: Request) -> set[bytes]:
    """The protocol names of the client's ``Upgrade`` header, lower-cased."""
    values = b",".join(request.requestHeaders.getRawHeaders(b"upgrade", []))
    return {p.strip().lower() for p in values.split(b",") if p.strip()}


class _ClientEnd(splice.SpliceEnd):
    """The client's side once hijacked; joins the splice as soon as it has its transport."""

    def __init__(self, backend: UpgradeBackend) -> None:
        super().__init__("client")
        self.backend = backend

    def connectionMade(self) -> None:
        if self.backend.lost:  # the backend left between its 101 and now
            self.transport.loseConnection()
            return
        splice.join(self, self.backend)


class UpgradeBackend(splice.SpliceEnd):
    """The backend's side: HTTP/1.1 until the answer, a splice end after a matching 101."""

    def __init__(
        self,
        request: Request,
        head: h11.Request,
        protocols: set[bytes],
        reactor: Any,
        filter_headers: Callable[[Sequence[tuple[bytes, bytes]]], list[tuple[bytes, bytes]]],
        on_failure: Callable[[int, str], None],
    ) -> None:
        super().__init__("backend")
        self.request = request
        self.head = head
        self.protocols = protocols
        self.reactor = reactor
        self.filter_headers = filter_headers
        self.on_failure = on_failure
        self.http: h11.Connection | None = h11.Connection(
            h11.CLIENT, max_incomplete_event_size=MAX_HEAD
        )
        self.answered = False  # a final response (or the 101) has been seen
        self.on_answered: Callable[[], None] = lambda: None

    # --- before the answer: HTTP --------------------------------------------------------------

    def connectionMade(self) -> None:
        assert self.http is not None
        try:
            data = self.http.send(self.head) or b""
            data += self.http.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError as e:
            self._fail(400, f"cannot forward the upgrade request: {e}")
            return
        self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        if self.http is None:
            super().dataReceived(data)  # spliced, or relaying a response body
            return
        self.http.receive_data(data)
        self._events()

    def _events(self) -> None:
        while self.http is not None:
            try:
                event = self.http.next_event()
            except h11.RemoteProtocolError as e:
                self._fail(502, f"the backend's answer is not HTTP/1.1: {e}")
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                if self.http.our_state is h11.SWITCHED_PROTOCOL:
                    self._switch()
                return
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    self._check_101(event)
                continue  # 100, 103: nothing for the client
            if isinstance(event, h11.Response):
                self._relay_head(event)
            elif isinstance(event, h11.Data):
                if not self._client_gone():
                    self.request.write(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._relay_end()
                return
            elif isinstance(event, h11.ConnectionClosed):
                self._fail(502, "the backend closed the connection without answering")
                return

    def _check_101(self, event: h11.InformationalResponse) -> None:
        offered = {
            p.strip().lower()
            for name, value in event.headers
            if name == b"upgrade"
            for p in bytes(value).split(b",")
            if p.strip()
        }
        if not offered or not offered <= self.protocols:
            self._fail(502, "the backend switched to a protocol the client did not ask for")
            return
        self._answered()
        self.switch_head = event

    def _answered(self) -> None:
        self.answered = True
        self.on_answered()

    def _switch(self) -> None:
        """The 101 was accepted: hand the client's connection over and splice."""
        assert self.http is not None
        trailing, closed = self.http.trailing_data
        event = self.switch_head
        self.http = None
        if self._client_gone():
            self.transport.loseConnection()
            return
        lines = [b"HTTP/1.1 101 Switching Protocols"]
        lines += [
            name + b": " + value
            for name, value in self.filter_headers(event.headers)
            if name.lower() not in (b"connection", b"upgrade")
        ]
        lines += [b"Upgrade: " + bytes(v) for name, v in event.headers if name == b"upgrade"]
        lines += [b"Connection: Upgrade"]
        preamble = b"\r\n".join(lines) + b"\r\n\r\n"
        try:
            hijack(self.request, _ClientEnd(self), self.reactor, preamble)
        except HijackError as e:
            self.transport.loseConnection()
            log.info("upgrade abandoned: {error}", error=e)
            return
        if trailing:
            super().dataReceived(bytes(trailing))  # held until the client end joins
        if closed:
            self.readConnectionLost()

    # --- an ordinary answer -------------------------------------------------------------------

    def _relay_head(self, event: h11.Response) -> None:
        self._answered()
        if self._client_gone():
            self.transport.loseConnection()
            return
        self.request.setResponseCode(event.status_code, bytes(event.reason) or None)
        for name, value in self.filter_headers(event.headers):
            self.request.responseHeaders.addRawHeader(name, value)
        self.request.registerProducer(self.transport, True)

    def _relay_end(self) -> None:
        self.http = None
        if not self._client_gone():
            self.request.unregisterProducer()
            self.request.finish()
        self.transport.loseConnection()  # one request per connection: never pooled

    # --- endings ------------------------------------------------------------------------------

    def _client_gone(self) -> bool:
        return bool(self.request.finished or getattr(self.request, "_disconnected", False))

    def _fail(self, code: int, why: str) -> None:
        self.http = None
        if self.transport is not None:
            self.transport.loseConnection()
        self.on_failure(code, why)

    def readConnectionLost(self) -> None:
        if self.http is None:
            super().readConnectionLost()
            return
        self.http.receive_data(b"")  # the end of a read-until-close body, or a broken answer
        self._events()
        if self.http is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.http is not None:
            http, self.http = self.http, None
            if http.their_state is h11.SEND_BODY:  # a body cut short: the client must know
                transport = getattr(self.request, "transport", None)
                if transport is not None and not self._client_gone():
                    transport.abortConnection()
            elif not self.answered:
                self.on_failure(502, "the backend closed the connection without answering")
        super().connectionLost(reason or Failure(ConnectionError("lost")))


def start(
    request: Request,
    head: h11.Request,
    endpoint: Any,
    reactor: Any,
    timeout: float,
    filter_headers: Callable[[Sequence[tuple[bytes, bytes]]], list[tuple[bytes, bytes]]],
    target: str,
) -> None:
    """Send ``head`` to the backend at ``endpoint`` and answer ``request`` as described above."""
    done = False

    def failed(code: int, why: str) -> None:
        nonlocal done
        if done:
            return
        done = True
        if call.active():
            call.cancel()
        log.info("upgrade to {target} failed: {code} {why}", target=target, code=code, why=why)
        if request.finished or getattr(request, "_disconnected", False):
            return
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.write(f"{code} {RESPONSES.get(code, b'').decode()}\n".encode())
        request.finish()

    backend = UpgradeBackend(
        request, head, requested_protocols(request), reactor, filter_headers, failed
    )

    def expire() -> None:
        if not backend.answered:
            connecting.cancel()
            if backend.transport is not None:
                backend.transport.abortConnection()
            failed(504, f"no answer within {timeout:g} s")

    call = reactor.callLater(timeout, expire)
    backend.on_answered = lambda: call.cancel() if call.active() else None
    connecting: defer.Deferred[Any] = endpoint.connect(OneProtocolFactory(backend))

    def not_connected(failure: Failure) -> None:
        if not failure.check(defer.CancelledError):
            failed(502, failure.getErrorMessage())

    connecting.addErrback(not_connected)

    def answered_or_gone(_: object) -> None:
        if call.active():
            call.cancel()

    def client_gone(_: object) -> None:
        if call.active():
            call.cancel()
        if backend.transport is not None and backend.http is not None:
            backend.transport.abortConnection()  # a response still coming: nobody to read it

    request.notifyFinish().addCallbacks(answered_or_gone, client_gone)
