"""The streaming reverse proxy behind HTTPS mounts.

- Bodies stream both ways with backpressure: the upload through :mod:`.streaming` into an
  HTTP/1.1 keep-alive pool to the backend (:mod:`funnel_tw.web.client`), the response back
  through the client's HTTP/1.1 or HTTP/2 connection, pausing the backend while the client is
  slow.
- Hop-by-hop headers (RFC 9110 7.6.1) are not forwarded either way, nor those a ``Connection``
  header names.
- Headers as tailscaled sets them: client-sent ``Forwarded`` and ``X-Forwarded-*`` are
  dropped; ``X-Forwarded-Host`` (the original Host), ``X-Forwarded-Proto: https`` and
  ``X-Forwarded-For: <client ip>`` are set; the Tailscale identity headers a client might forge
  are dropped, and ``Tailscale-Funnel-Request: ?1`` marks funnel requests. Host is passed
  through unchanged.
- Paths: the mount prefix is stripped and the target URL's own path prepended.
- Backends: ``http://``, ``https://``, ``https+insecure://`` (no verification), ``unix:/path``.
- A refused or dead backend, or one whose response cannot be read one way only (see
  :mod:`funnel_tw.web.client`), gives 502 at once; one that does not answer within the timeout,
  504. A backend that fails mid-body aborts the client's stream (the status is already sent).
- One request passes through :class:`ProxiedRequest`: ``start`` (the head the backend gets)
  and ``response_head`` (the head the client gets) are the two places to hook it.
- ``Upgrade`` requests (WebSocket and others, HTTP/1.1): see :mod:`.upgrade`; the connections
  are spliced only after the backend's own 101 for a protocol the client asked for.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from ipaddress import ip_address
from typing import Any
from urllib.parse import urlsplit

import h11
from OpenSSL import SSL
from twisted.internet import defer, endpoints, error
from twisted.internet.interfaces import IDelayedCall, IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from ..flow import Flow
from ..web.client import IDLE_TIMEOUT, MAX_IDLE, BackendPool, Exchange
from ..web.paths import PathError, request_target
from . import upgrade
from .http2 import INTERNAL_ERROR, connection_blocked, reset_stream, stream_paused
from .streaming import BodySource, StreamingRequest

log = Logger()

DEFAULT_TIMEOUT = 60.0

HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
}
DROPPED = {
    # our own front already answered any "100-continue"; the backend client cannot do it
    b"expect",
    b"forwarded",
}
# what twisted.web puts in every response, kept only where the backend sent none
NODE_DEFAULTS = (b"date", b"server")
BODILESS = (204, 304)  # statuses whose responses have no body, whatever their headers say
# Tailscale-* (identity, Funnel-Request), X-Forwarded-*, Remote-* (identity from a gate)
OWNED_PREFIXES = (b"tailscale-", b"x-forwarded-", b"remote-")
# the client address as other proxies pass it: a backend may trust any of them
CLIENT_ADDRESS = {
    b"x-real-ip",
    b"true-client-ip",
    b"cf-connecting-ip",
    b"x-client-ip",
    b"x-cluster-client-ip",
    b"client-ip",
    b"fastly-client-ip",
    b"x-originating-ip",
}


def join_path(base: str, rest: str) -> str:
    """Go's singleJoiningSlash."""
    if base.endswith("/") and rest.startswith("/"):
        return base + rest[1:]
    if not base.endswith("/") and not rest.startswith("/"):
        return base + "/" + rest
    return base + rest


class Target:
    """A parsed backend: scheme, network location, base path, and how to reach it."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("unix:"):
            self.scheme = "unix"
            self.socket_path = url[5:]
            self.netloc = "localhost"
            self.base_path = ""
            self.base_query = ""
            return
        insecure = url.startswith("https+insecure://")
        parts = urlsplit("https://" + url[len("https+insecure://") :] if insecure else url)
        self.scheme = "https+insecure" if insecure else parts.scheme
        self.netloc = parts.netloc
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path
        self.base_query = parts.query
        self.socket_path = ""

    def outgoing_path(self, request_path: str, query: str, prefix: str) -> str:
        stripped = request_path[len(prefix) :] if prefix != "/" else request_path
        if prefix != "/" and request_path == prefix:
            path = self.base_path or "/"
        else:
            path = join_path(self.base_path, stripped) if self.base_path else (stripped or "/")
        if not path.startswith("/"):
            path = "/" + path
        queries = [q for q in (self.base_query, query) if q]
        return path + ("?" + "&".join(queries) if queries else "")


@implementer(IOpenSSLClientConnectionCreator)
class _InsecureCreator:
    """TLS to a backend without verifying it (``https+insecure://``); SNI is still sent."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        self.ctx.set_verify(SSL.VERIFY_NONE, lambda *a: True)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        conn = SSL.Connection(self.ctx, None)
        if self.hostname and not self.hostname.replace(".", "").isdigit():
            conn.set_tlsext_host_name(self.hostname.encode("idna"))
        conn.set_connect_state()
        return conn


class Backends:
    """The keep-alive pools of the backends, shared by every proxy mount of a node."""

    def __init__(
        self, reactor: Any, max_idle: int = MAX_IDLE, idle_timeout: float = IDLE_TIMEOUT
    ) -> None:
        self.reactor = reactor
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._pools: dict[str, BackendPool] = {}

    def pool_for(self, target: Target) -> BackendPool:
        """One pool per backend, on an endpoint built once (no per-request name checks or
        resolver round trip for a literal address)."""
        pool = self._pools.get(target.url)
        if pool is None:
            pool = self._pools[target.url] = BackendPool(
                self.reactor, self.endpoint_for(target), self.max_idle, self.idle_timeout
            )
        return pool

    def endpoint_for(self, target: Target) -> Any:
        """A connection to the backend: for the pool, and raw for Upgrade requests."""
        if target.scheme == "unix":
            return endpoints.UNIXClientEndpoint(self.reactor, target.socket_path)
        try:
            address = ip_address(target.host)
            cls = (
                endpoints.TCP4ClientEndpoint
                if address.version == 4
                else (endpoints.TCP6ClientEndpoint)
            )
            plain: Any = cls(self.reactor, target.host, target.port, timeout=10)
        except ValueError:
            plain = endpoints.HostnameEndpoint(self.reactor, target.host, target.port, timeout=10)
        if target.scheme == "http":
            return plain
        if target.scheme == "https+insecure":
            creator: Any = _InsecureCreator(target.host)
        else:
            from twisted.internet.ssl import optionsForClientTLS

            creator = optionsForClientTLS(target.host)
        return endpoints.wrapClientTLS(creator, plain)

    def close(self) -> defer.Deferred[Any]:
        return defer.gatherResults([pool.close() for pool in self._pools.values()])


def connection_tokens(values: Sequence[bytes]) -> set[bytes]:
    """Header names the values of a Connection header declare hop-by-hop."""
    tokens: set[bytes] = set()
    for value in values:
        tokens.update(t.strip().lower() for t in value.split(b","))
    return tokens


def node_owned(name: bytes) -> bool:
    """Headers only the node may set, whatever their case or ``_``/``-`` spelling: many
    backends (CGI, WSGI, PHP) fold ``_`` into ``-``, so ``X_Forwarded_For`` is an alias."""
    canon = name.lower().replace(b"_", b"-")
    return canon in DROPPED or canon in CLIENT_ADDRESS or canon.startswith(OWNED_PREFIXES)


# names whose "_" spelling is never passed, even to a mount that takes "_" in names: a backend
# that folds "_" into "-" would read it as the real one (body framing the node never sent: a
# request smuggled on a pooled connection)
_NEVER_ALIASED = HOP_BY_HOP | {b"content-length"}
# (name as received, keep_upgrade, underscores) -> forwarded; names repeat from request to
# request, so each is judged once (bounded: a client can send endless distinct names)
_PASSES: dict[tuple[bytes, bool, bool], bool] = {}
_PASSES_MAX = 4096


def _passes(name: bytes, keep_upgrade: bool, underscores: bool) -> bool:
    key = (name, keep_upgrade, underscores)
    verdict = _PASSES.get(key)
    if verdict is None:
        lower = name.lower()
        if node_owned(lower) or (
            b"_" in lower and (not underscores or lower.replace(b"_", b"-") in _NEVER_ALIASED)
        ):
            verdict = False
        elif lower == b"content-length":
            verdict = keep_upgrade  # else the backend client frames the body itself
        elif lower in HOP_BY_HOP:
            verdict = keep_upgrade and lower in (b"upgrade", b"connection")
        else:
            verdict = True
        if len(_PASSES) < _PASSES_MAX:
            _PASSES[key] = verdict
    return verdict


def forwarded_pairs(
    request: Request,
    flow: Flow,
    keep_upgrade: bool = False,
    underscores: bool = False,
    netloc: str = "",
) -> list[tuple[bytes, bytes]]:
    """The request headers a backend gets, in order. ``underscores``: pass names containing
    ``_`` (an opt-in per mount; by default they are dropped, as nginx does). ``netloc``: the
    Host to send if the client sent none (HTTP/1.0)."""
    headers = request.requestHeaders
    return forward_pairs(
        headers.getAllRawHeaders(),
        headers.getRawHeaders(b"connection"),
        flow,
        keep_upgrade,
        underscores,
        netloc,
        getattr(request, "remote_identity", None),
    )


def forward_pairs(
    headers: Iterable[tuple[bytes, Sequence[bytes]]],
    connection: Sequence[bytes] | None,
    flow: Flow,
    keep_upgrade: bool,
    underscores: bool,
    netloc: str,
    identity: dict[bytes, bytes] | None,
) -> list[tuple[bytes, bytes]]:
    """:func:`forwarded_pairs` from a request's headers as twisted.web's ``Headers`` holds
    them (canonical names, the values of a name together; ``connection``: the Connection
    header's values), for twisted.web's requests and serve/lean.py's alike. ``identity``:
    who an access policy let through (serve/access/guard.py REMOTE_IDENTITY: Remote-User...)."""
    out: list[tuple[bytes, bytes]] = []
    listed = connection_tokens(connection) if connection else ()
    host = b""
    for name, values in headers:
        if not _passes(name, keep_upgrade, underscores):
            continue
        lower = name.lower() if listed else b""
        if lower in listed and not (keep_upgrade and lower in (b"upgrade", b"connection")):
            continue
        if name == b"Host":
            host = values[0]
        for value in values:
            out.append((name, value))
    if host:
        out.append((b"X-Forwarded-Host", host))
    elif netloc:
        out.append((b"Host", netloc.encode("idna")))
    out.append((b"X-Forwarded-Proto", b"https"))
    out.append((b"X-Forwarded-For", flow.client[0].encode()))
    if flow.funnel:
        out.append((b"Tailscale-Funnel-Request", b"?1"))
    if identity:
        out.extend(identity.items())
    return out


def forwarded_headers(
    request: Request, flow: Flow, keep_upgrade: bool = False, underscores: bool = False
) -> Headers:
    """:func:`forwarded_pairs` as a Headers object."""
    out = Headers()
    for name, value in forwarded_pairs(request, flow, keep_upgrade, underscores):
        out.addRawHeader(name, value)
    return out


_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f]")
_RETRYABLE = frozenset((b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"TRACE"))


def request_head(method: bytes, target: bytes, pairs: list[tuple[bytes, bytes]]) -> bytes:
    """The request line and header lines, each with its CRLF (the client adds the framing)."""
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in pairs:
        parts += (name, b": ", value, b"\r\n")
    return b"".join(parts)


def _answering(request: Request) -> bool:
    """The response is still wanted: not finished, and the client has not gone (twisted.web
    drops a request's ``channel`` when its connection is lost)."""
    return not request.finished and request.channel is not None


def _abort(request: Request) -> None:
    """End a response that cannot be completed so the client knows it is cut short: close
    the HTTP/1.1 connection, or reset the HTTP/2 stream with INTERNAL_ERROR."""
    channel = request.channel
    try:
        if reset_stream(request, INTERNAL_ERROR):
            return
    except Exception:
        log.failure("resetting the HTTP/2 stream failed; aborting it")
    transport = getattr(request, "transport", None) or channel
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()


def _request_body(request: Request) -> Any:
    """What the backend client sends: the streaming body, the buffered one, or nothing."""
    if isinstance(request, StreamingRequest) and request.body is not None:
        return request.body
    content = request.content.read() if request.content is not None else b""
    if content or request.method in (b"POST", b"PUT", b"PATCH"):
        return content
    return None


class ProxiedRequest:
    """One request on its way to the backend, and its response on the way back (the
    backend client's ResponseSink).

    Holds what the steps share: the exchange with the backend, the response-header timer (as
    Go's ResponseHeaderTimeout, it starts once the request body is all sent), whether it
    fired, and whether the response body flows. For HTTP/1.1 the client connection pauses the
    backend (the exchange is the response's producer) when its buffer fills. Twisted's HTTP/2
    pauses a stream's producer only when the client's flow-control window runs out, so a
    client advertising a huge window and not reading would make the node buffer without bound;
    the body is therefore also paused while the HTTP/2 connection itself is blocked.
    """

    exchange: Exchange | None = None
    timer: IDelayedCall | None = None
    timed_out = False
    streaming = False  # the response body flows, the exchange registered as its producer
    _waiting = False  # paused while the HTTP/2 connection is blocked

    def __init__(self, proxy: ProxyResource, request: Request) -> None:
        self.proxy = proxy
        self.request = request

    def start(self, outgoing: str) -> None:
        request, proxy = self.request, self.proxy
        target = outgoing.encode("utf-8", "surrogateescape")
        if _BAD_TARGET.search(target) is not None:
            request.setResponseCode(400)
            request.write(b"a control character or space in the request target\n")
            request.finish()
            return
        pairs = forwarded_pairs(request, proxy.flow, False, proxy.underscores, proxy.target.netloc)
        head = request_head(request.method, target, pairs)
        body = _request_body(request)
        pool = proxy.backends.pool_for(proxy.target)
        request.notifyFinish().addErrback(self._client_gone)
        streamed = isinstance(body, BodySource) and not body.complete
        self.exchange = pool.request(
            head,
            body,
            self,
            no_body=request.method == b"HEAD",
            retry=body is None and request.method in _RETRYABLE,
        )
        if streamed:
            body.received_all.addCallback(self._body_sent)
        elif self.exchange.sink is not None:
            self._start_timer()

    def _start_timer(self) -> None:
        self.timer = self.proxy.reactor.callLater(self.proxy.timeout, self._expire)

    def _stop_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()

    def _body_sent(self, _: object) -> None:
        if self.exchange is not None and self.exchange.sink is not None and not self.streaming:
            self._start_timer()

    def _expire(self) -> None:
        self.timed_out = True
        if self.exchange is not None:
            self.exchange.cancel()
        self.response_failed("no response within the timeout", False)

    def _client_gone(self, _: object) -> None:
        self._stop_timer()
        if self.exchange is not None:
            self.exchange.cancel()  # a response half read cannot go back to the pool

    # --- ResponseSink ------------------------------------------------------------------

    def response_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self._stop_timer()
        request = self.request
        if not _answering(request):
            return
        request.setResponseCode(status, reason or None)
        out = request.responseHeaders
        kept, own = passing_response_headers(status, headers)
        for lower in own:
            out.removeHeader(lower)  # the backend's own, not a second one (RFC 9110 6.6.1)
        for name, value in kept:
            out.addRawHeader(name, value)
        if request.method != b"HEAD" and status not in BODILESS and self.exchange is not None:
            self.streaming = True
            request.registerProducer(self.exchange, True)

    def response_data(self, data: bytes) -> None:
        request = self.request
        if not _answering(request):
            return
        request.write(data)
        if self._waiting or self.exchange is None:
            return
        blocked = connection_blocked(request)
        if blocked is not None:
            self._waiting = True
            self.exchange.pauseProducing()
            blocked.addBoth(self._pass_through_unblocked)

    def _pass_through_unblocked(self, result: object) -> object:
        """Ours is a side branch of Twisted's own chain: never pass a failure back into it."""
        self._waiting = False
        if (
            _answering(self.request)
            and self.exchange is not None
            and not stream_paused(self.request)  # the stream resumes what it paused
        ):
            self.exchange.resumeProducing()
        return result

    def response_end(self) -> None:
        request = self.request
        if self.streaming and request.channel is not None:
            request.unregisterProducer()
        if _answering(request):
            request.finish()

    def response_failed(self, why: str, started: bool) -> None:
        request = self.request
        self._stop_timer()
        if self.streaming and request.channel is not None:
            request.unregisterProducer()
        if not _answering(request):
            return
        answer = failure_answer(self.proxy.target.url, why, started, self.timed_out)
        if answer is None:
            _abort(request)
            return
        code, message = answer
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.write(f"{code} {message}\n".encode())
        request.finish()


def passing_response_headers(
    status: int, headers: list[tuple[bytes, bytes]]
) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
    """What the client gets of a backend's response head (twisted.web's path and
    serve/lean.py's): the headers in order, less the hop-by-hop ones, those the Connection
    headers name (every one of them: the lines of a field combine, RFC 9110 5.3) and a 204's
    or 304's Content-Length; and which of :data:`NODE_DEFAULTS` the backend sent itself (lower
    case)."""
    connection: list[bytes] = []
    own: list[bytes] = []
    for name, value in headers:
        lower = name.lower()
        if lower == b"connection":
            connection.append(value)
        elif lower in NODE_DEFAULTS:
            own.append(lower)
    listed = connection_tokens(connection)
    bodiless = status in BODILESS
    kept = []
    for name, value in headers:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in listed or (bodiless and lower == b"content-length"):
            continue
        kept.append((name, value))
    return kept, own


def failure_answer(target: str, why: str, started: bool, timed_out: bool) -> tuple[int, str] | None:
    """Log a backend's failure; (status, text) to answer, or None when the response had
    begun (its stream must be cut short)."""
    if started:
        log.info("backend failed mid-body: {error}", error=why)
        return None
    code, message = (504, "Gateway Timeout") if timed_out else (502, "Bad Gateway")
    log.info("proxy to {target} failed: {code} {error}", target=target, code=code, error=why)
    return code, message


class ProxyResource(Resource):
    isLeaf = True
    streams_request_body = True

    def __init__(
        self,
        target: str,
        prefix: str,
        flow: Flow,
        reactor: Any,
        backends: Backends | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        underscores: bool = False,
    ) -> None:
        super().__init__()
        self.underscores = underscores
        self.target = Target(target)
        self.prefix = prefix
        self.flow = flow
        self.reactor = reactor
        self.backends = backends or Backends(reactor)
        self.timeout = timeout

    def render(self, request: Request) -> int | bytes:
        try:
            path, query = request_target(request)  # as routing saw it: one normalization
        except PathError as e:
            request.setResponseCode(e.status)
            return f"{e}\n".encode()
        outgoing = self.target.outgoing_path(path, query, self.prefix)
        if self._is_upgrade(request):
            return self._upgrade(request, outgoing)
        ProxiedRequest(self, request).start(outgoing)
        return NOT_DONE_YET

    @staticmethod
    def _is_upgrade(request: Request) -> bool:
        """An HTTP/1.1 Upgrade without a body (one with a body is proxied as a plain request,
        its Upgrade headers dropped as hop-by-hop)."""
        if request.clientproto == b"HTTP/2" or not request.getHeader(b"upgrade"):
            return False
        if request.getHeader(b"transfer-encoding") or request.getHeader(b"content-length") not in (
            None,
            b"0",
        ):
            return False
        tokens = b",".join(request.requestHeaders.getRawHeaders(b"connection", []))
        return b"upgrade" in [t.strip().lower() for t in tokens.split(b",")]

    def _upgrade(self, request: Request, outgoing: str) -> int:
        head = h11.Request(
            method=request.method,
            target=outgoing.encode("utf-8", "surrogateescape"),
            headers=forwarded_pairs(request, self.flow, True, self.underscores, self.target.netloc),
        )
        upgrade.start(
            request,
            head,
            self.backends.endpoint_for(self.target),
            self.reactor,
            self.timeout,
            response_headers,
            self.target.url,
        )
        return NOT_DONE_YET


def response_headers(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A backend's response headers less the hop-by-hop ones and those its Connection names."""
    listed = connection_tokens([v for n, v in headers if n.lower() == b"connection"])
    return [(n, v) for n, v in headers if n.lower() not in HOP_BY_HOP and n.lower() not in listed]


__all__ = ["Backends", "BodySource", "ProxyResource", "Target", "error"]
