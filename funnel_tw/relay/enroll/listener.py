"""The enroll listener: TLS on ``public-address:enroll-port``, one request per connection.

It faces the internet, so it is small and bounded rather than a general web server: one
``POST /v0/enroll`` with a Content-Length body of at most 4 KiB, a head of at most 8 KiB, the
whole exchange (TLS handshake included) within ``timeout`` seconds, at most ``max_open``
connections at once. Anything else is answered (or, for a deadline or the connection cap,
closed) and counted by reason; refusals are logged with the client's ip:port and the reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from ...daemon.enroll import ENROLL_PATH, MAX_REQUEST_BODY, REFUSALS
from ...web.hostport import format_host_port
from .store import Refused

log = Logger()

MAX_HEAD = 8192
DEFAULT_TIMEOUT = 10.0
MAX_OPEN = 64

STATUS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
# a refusal reason and the HTTP status it is answered with (403 for the rest)
_REASON_STATUS = {"bad_request": 400, "no_address_left": 503}

Handler = Callable[[dict[str, Any], str], dict[str, Any]]
"""Enrolls from a parsed request body and the client's ip:port; raises Refused."""


class EnrollProtocol(Protocol):
    def __init__(self, factory: EnrollFactory) -> None:
        self.factory = factory
        self.buffer = bytearray()
        self.timer: IDelayedCall | None = None
        self.done = False
        self.counted = False
        self.peer = "?"

    def connectionMade(self) -> None:
        address = self.transport.getPeer()  # type: ignore[union-attr]
        self.peer = format_host_port(getattr(address, "host", "?"), getattr(address, "port", 0))
        factory = self.factory
        if factory.open >= factory.max_open:
            self.done = True
            factory.refused("too_many", self.peer, f"over {factory.max_open} open connections")
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        factory.open += 1
        self.counted = True
        self.timer = factory.reactor.callLater(factory.timeout, self._deadline)

    def _deadline(self) -> None:
        self.timer = None
        if not self.done:
            self.done = True
            self.factory.refused(
                "timeout", self.peer, f"no request within {self.factory.timeout:g}s"
            )
            self.transport.abortConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self.done:
            return
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                self._refuse(431, "too_large", f"request head over {MAX_HEAD} bytes")
            return
        if end > MAX_HEAD:
            self._refuse(431, "too_large", f"request head over {MAX_HEAD} bytes")
            return
        lines = bytes(self.buffer[:end]).split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self._refuse(400, "bad_request", "not an HTTP/1.1 request line")
            return
        if parts[1] != ENROLL_PATH.encode():
            self._refuse(404, "bad_request", "not /v0/enroll")
            return
        if parts[0] != b"POST":
            self._refuse(405, "bad_request", "not a POST")
            return
        length = self._length(lines[1:])
        if length is None:
            return
        body = self.buffer[end + 4 :]
        if len(body) < length:
            return
        self.done = True
        self._answer_request(bytes(body[:length]))

    def _length(self, headers: list[bytes]) -> int | None:
        """The Content-Length (None: refused already)."""
        values = [
            v.strip()
            for name, _, v in (h.partition(b":") for h in headers)
            if name.strip().lower() == b"content-length"
        ]
        chunked = any(h.partition(b":")[0].strip().lower() == b"transfer-encoding" for h in headers)
        if chunked or len(values) != 1 or not values[0].isdigit():
            self._refuse(411, "bad_request", "needs one Content-Length and no Transfer-Encoding")
            return None
        length = int(values[0][:12])
        if length > MAX_REQUEST_BODY:
            self._refuse(413, "too_large", f"body of {length} bytes (at most {MAX_REQUEST_BODY})")
            return None
        return length

    def _answer_request(self, body: bytes) -> None:
        try:
            request = json.loads(body)
            if not isinstance(request, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError):
            self._refuse(400, "bad_request", "body is not a JSON object")
            return
        try:
            answer = self.factory.handler(request, self.peer)
        except Refused as e:
            status = _REASON_STATUS.get(e.reason, 403)
            self._refuse(status, e.reason, str(e))
            return
        except Exception:  # a bug or a full disk: the client gets an answer, the log the cause
            log.failure("enrollment from {peer} failed", peer=self.peer)
            self._refuse(503, "error", "the relay could not enroll the node (see its log)")
            return
        self.factory.counters["enrolled"] = self.factory.counters.get("enrolled", 0) + 1
        self._send(200, answer)

    def _refuse(self, status: int, reason: str, detail: str) -> None:
        self.done = True
        self.factory.refused(reason, self.peer, detail)
        message = REFUSALS.get(reason, detail)
        self._send(status, {"error": reason, "message": message})

    def _send(self, status: int, answer: dict[str, Any]) -> None:
        body = json.dumps(answer).encode() + b"\n"
        head = (
            f"HTTP/1.1 {status} {STATUS.get(status, 'Error')}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        self.transport.write(head + body)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.counted:
            self.factory.open -= 1
            self.counted = False
            if not self.done:  # a failed TLS handshake, or a client that gave up
                self.done = True
                counters = self.factory.counters
                counters["closed_early"] = counters.get("closed_early", 0) + 1
                log.debug(
                    "enroll connection from {peer} closed before a request: {why}",
                    peer=self.peer,
                    why=reason.getErrorMessage(),
                )


class EnrollFactory(Factory):
    """Counts refusals by reason (``counters``) and the connections open now."""

    noisy = False

    def __init__(
        self,
        reactor: Any,
        handler: Handler,
        timeout: float = DEFAULT_TIMEOUT,
        max_open: int = MAX_OPEN,
    ) -> None:
        self.reactor = reactor
        self.handler = handler
        self.timeout = timeout
        self.max_open = max_open
        self.open = 0
        self.counters: dict[str, int] = {}

    def buildProtocol(self, addr: Any) -> EnrollProtocol:
        return EnrollProtocol(self)

    def refused(self, reason: str, peer: str, detail: str) -> None:
        self.counters[reason] = self.counters.get(reason, 0) + 1
        log.warn(
            "enroll refused from {peer}: {reason} ({detail})",
            peer=peer,
            reason=reason,
            detail=detail,
        )
