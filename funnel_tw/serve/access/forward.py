"""forward-auth: ask another service whether a request may pass, with the semantics of
Caddy's forward_auth and nginx's auth_request.

The node sends the service a GET with the client's headers (less the hop-by-hop ones and
every header the node owns) plus X-Forwarded-Method, -Proto, -Host, -Uri (the normalized path
and the query) and -For. A 2xx answer lets the request through, its Remote-User, -Email,
-Name and -Groups becoming the identity the backend gets; any other answer (a redirect to a
login page, a 401, a 403) goes back to the client unchanged: status, headers and body.
A service that cannot be reached, or does not answer within the deadline, refuses (503):
fail closed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, protocol
from twisted.python.failure import Failure
from twisted.web import client
from twisted.web.http_headers import Headers

from ..proxy import HOP_BY_HOP, node_owned
from .policy import Identity, Refusal

__all__ = ["MAX_ANSWER_BODY", "TIMEOUT", "ForwardAuth", "request_headers", "verdict"]

TIMEOUT = 10.0
MAX_ANSWER_BODY = 64 * 1024
"""Bytes of a refusing answer's body passed back to the client; the rest is cut."""
_NOT_PASSED_BACK = HOP_BY_HOP | {b"content-length", b"transfer-encoding"}
_IDENTITY = (b"remote-user", b"remote-email", b"remote-name", b"remote-groups")


def request_headers(
    client_headers: Sequence[tuple[bytes, Sequence[bytes]]],
    method: bytes,
    host: bytes,
    uri: bytes,
    client_ip: str,
) -> Headers:
    """What the service is asked with: the client's headers (none the node owns, nothing
    hop-by-hop, no body framing) and the X-Forwarded-* that describe the request."""
    out = Headers()
    for name, values in client_headers:
        lower = name.lower()
        if node_owned(lower) or lower in _NOT_PASSED_BACK or lower == b"host" or b"_" in lower:
            continue
        out.setRawHeaders(name, list(values))
    out.setRawHeaders(b"X-Forwarded-Method", [method])
    out.setRawHeaders(b"X-Forwarded-Proto", [b"https"])
    out.setRawHeaders(b"X-Forwarded-Host", [host])
    out.setRawHeaders(b"X-Forwarded-Uri", [uri])
    out.setRawHeaders(b"X-Forwarded-For", [client_ip.encode()])
    return out


def verdict(
    status: int, headers: Sequence[tuple[bytes, Sequence[bytes]]], body: bytes
) -> Identity | Refusal | None:
    """A 2xx: the identity it names (None: it names none); else the answer as a refusal."""
    if 200 <= status < 300:
        found = {n.lower(): v[-1].decode("latin-1") for n, v in headers if n.lower() in _IDENTITY}
        user = found.get(b"remote-user")
        if user is None:
            return None
        return Identity(
            user,
            email=found.get(b"remote-email"),
            name=found.get(b"remote-name"),
            groups=found.get(b"remote-groups"),
        )
    passed = tuple(
        (n, v) for n, values in headers if n.lower() not in _NOT_PASSED_BACK for v in values
    )
    return Refusal(status, f"forward_auth_{status}", passed, body)


class _Collect(protocol.Protocol):
    """An answer body, at most MAX_ANSWER_BODY bytes of it."""

    def __init__(self, done: defer.Deferred[bytes]) -> None:
        self.done = done
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        room = MAX_ANSWER_BODY - self.size
        if room > 0:
            self.parts.append(data[:room])
            self.size += min(room, len(data))

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.done.callback(b"".join(self.parts))


class ForwardAuth:
    """The client side: one GET per request checked, with a deadline."""

    def __init__(self, url: str, reactor: Any) -> None:
        self.url = url.encode()
        self.reactor = reactor
        self.agent = client.Agent(reactor, connectTimeout=TIMEOUT)

    async def ask(self, headers: Headers) -> Identity | Refusal | None:
        d = self.agent.request(b"GET", self.url, headers)
        timer = self.reactor.callLater(TIMEOUT, d.cancel)
        try:
            response = await d
            done: defer.Deferred[bytes] = defer.Deferred()
            response.deliverBody(_Collect(done))
            body = await done
        except Exception:
            return Refusal(503, "forward_auth_unavailable")
        finally:
            if timer.active():
                timer.cancel()
        return verdict(response.code, list(response.headers.getAllRawHeaders()), body)
