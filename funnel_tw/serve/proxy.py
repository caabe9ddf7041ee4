"""The streaming reverse proxy behind HTTPS mounts.

- Bodies stream both ways with backpressure: the upload through :mod:`.streaming` into an
  HTTP/1.1 keep-alive pool to the backend (twisted.web.client.Agent), the response back through
  the client's HTTP/1.1 or HTTP/2 connection, pausing the backend while the client is slow.
- Hop-by-hop headers (RFC 9110 7.6.1) are not forwarded either way. On responses, headers a
  backend names in its own ``Connection`` header cannot be recognised (Twisted's client keeps
  that header to itself) and pass through.
- Headers as tailscaled sets them: client-sent ``Forwarded`` and ``X-Forwarded-*`` are
  dropped; ``X-Forwarded-Host`` (the original Host), ``X-Forwarded-Proto: https`` and
  ``X-Forwarded-For: <client ip>`` are set; the Tailscale identity headers a client might forge
  are dropped, and ``Tailscale-Funnel-Request: ?1`` marks funnel requests. Host is passed
  through unchanged.
- Paths: the mount prefix is stripped and the target URL's own path prepended.
- Backends: ``http://``, ``https://``, ``https+insecure://`` (no verification), ``unix:/path``.
- A refused or dead backend gives 502 at once; one that does not answer within the timeout,
  504. A backend that fails mid-body aborts the client's stream (the status is already sent).
- ``Upgrade`` requests (WebSocket and others, HTTP/1.1): see :mod:`.upgrade`; the connections
  are spliced only after the backend's own 101 for a protocol the client asked for.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from ipaddress import ip_address
from typing import Any
from urllib.parse import urlsplit

import h11
from OpenSSL import SSL
from twisted.internet import defer, endpoints, error, protocol
from twisted.internet.interfaces import IDelayedCall, IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import client, http
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from ..flow import Flow
from ..web.paths import PathError, request_target
from . import upgrade
from .http2 import INTERNAL_ERROR, connection_blocked, reset_stream
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

    def agent_url(self, path: str) -> bytes:
        scheme = "http" if self.scheme in ("http", "unix") else "https"
        return f"{scheme}://{self.netloc}{path}".encode()


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


class _InsecurePolicy:
    def creatorForNetloc(self, hostname: bytes, port: int) -> _InsecureCreator:
        return _InsecureCreator(hostname.decode())


class Backends:
    """Agents and their keep-alive pool, shared by every proxy mount of a node."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.pool = client.HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 64
        self.pool.cachedConnectionTimeout = 60
        self._agents: dict[str, client.Agent] = {}

    def agent_for(self, target: Target) -> Any:
        """One Agent per backend, on a cached endpoint (Agent would otherwise build a new
        HostnameEndpoint, with name checks and a resolver round trip, for every request)."""
        agent = self._agents.get(target.url)
        if agent is None:
            endpoint = _NoDelay(self.endpoint_for(target))

            class _Fixed:
                def endpointForURI(self, uri: Any) -> Any:
                    return endpoint

            agent = client.Agent.usingEndpointFactory(self.reactor, _Fixed(), pool=self.pool)
            self._agents[target.url] = agent
        return agent

    def endpoint_for(self, target: Target) -> Any:
        """A connection to the backend: for the Agent, and raw for Upgrade requests."""
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

    def close(self) -> defer.Deferred[None]:
        return self.pool.closeCachedConnections()  # type: ignore[no-any-return]


def _connection_tokens(headers: Headers) -> set[bytes]:
    """Header names a Connection header declares hop-by-hop."""
    tokens: set[bytes] = set()
    for value in headers.getRawHeaders(b"connection", []):
        tokens.update(t.strip().lower() for t in value.split(b","))
    return tokens


def node_owned(name: bytes) -> bool:
    """Headers only the node may set, whatever their case or ``_``/``-`` spelling: many
    backends (CGI, WSGI, PHP) fold ``_`` into ``-``, so ``X_Forwarded_For`` is an alias."""
    canon = name.lower().replace(b"_", b"-")
    return canon in DROPPED or canon in CLIENT_ADDRESS or canon.startswith(OWNED_PREFIXES)


def forwarded_headers(
    request: Request, flow: Flow, keep_upgrade: bool = False, underscores: bool = False
) -> Headers:
    """The request headers a backend gets. ``underscores``: pass names containing ``_`` (an
    opt-in per mount; by default they are dropped, as nginx does)."""
    out = Headers()
    connection_tokens = _connection_tokens(request.requestHeaders)
    for name, values in request.requestHeaders.getAllRawHeaders():
        lower = name.lower()
        if node_owned(lower) or (b"_" in lower and not underscores):
            continue
        if lower == b"content-length" and not keep_upgrade:
            continue  # the backend client frames the body itself (never twice: smuggling)
        upgrade_kept = keep_upgrade and lower in (b"upgrade", b"connection")
        if (lower in HOP_BY_HOP or lower in connection_tokens) and not upgrade_kept:
            continue
        out.setRawHeaders(name, values)
    host = request.getHeader(b"host") or b""
    if host:
        out.setRawHeaders(b"X-Forwarded-Host", [host])
    out.setRawHeaders(b"X-Forwarded-Proto", [b"https"])
    out.setRawHeaders(b"X-Forwarded-For", [flow.client[0].encode()])
    if flow.funnel:
        out.setRawHeaders(b"Tailscale-Funnel-Request", [b"?1"])
    # who an access policy let through (serve/access/guard.py REMOTE_IDENTITY): Remote-User...
    for name, value in getattr(request, "remote_identity", {}).items():
        out.setRawHeaders(name, [value])
    return out


class _NoDelay:
    """An endpoint whose connections send small writes at once (no Nagle delay)."""

    def __init__(self, endpoint: Any) -> None:
        self.endpoint = endpoint

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        def connected(proto: Any) -> Any:
            set_nodelay = getattr(proto.transport, "setTcpNoDelay", None)
            if set_nodelay is not None:
                set_nodelay(True)
            return proto

        d: defer.Deferred[Any] = self.endpoint.connect(factory)
        return d.addCallback(connected)


def _answering(request: Request) -> bool:
    """The response is still wanted: not finished, and the client has not gone (twisted.web
    drops a request's ``channel`` when its connection is lost)."""
    return not request.finished and request.channel is not None


class _ResponseRelay(protocol.Protocol):
    """The backend's response body into the client's response, with backpressure.

    For HTTP/1.1 the client connection pauses the backend when its buffer fills. Twisted's
    HTTP/2 pauses a stream's producer only when the client's flow-control window runs out, so
    a client advertising a huge window and not reading would make the node buffer without
    bound; the relay therefore also pauses while the HTTP/2 connection itself is blocked.
    """

    def __init__(self, request: Request, done: defer.Deferred[None]) -> None:
        self.request = request
        self.done = done
        self._waiting = False

    def connectionMade(self) -> None:
        self.request.registerProducer(self.transport, True)

    def client_gone(self) -> None:
        """The client left mid-response: close the backend connection rather than leave it
        paused (it could not go back to the pool with half a body in it)."""
        backend: Any = self.transport
        if backend is not None:
            backend.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if not _answering(self.request):
            return
        self.request.write(data)
        blocked = connection_blocked(self.request)
        if blocked is not None and not self._waiting:
            self._waiting = True
            backend: Any = self.transport
            backend.pauseProducing()
            blocked.addBoth(self._pass_through_unblocked)

    def _pass_through_unblocked(self, result: object) -> object:
        self._unblocked(None)
        return result

    def _unblocked(self, result: object) -> None:
        """Ours is a side branch of Twisted's own chain: never pass a failure back into it."""
        self._waiting = False
        if _answering(self.request):
            backend: Any = self.transport
            backend.resumeProducing()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self.request.channel is not None:  # None: the client is already gone
            self.request.unregisterProducer()
        if reason.check(client.ResponseDone, http.PotentialDataLoss):
            if _answering(self.request):
                self.request.finish()
        else:
            log.info("backend failed mid-body: {error}", error=reason.getErrorMessage())
            _abort(self.request)
        self.done.callback(None)


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
        return client.FileBodyProducer(io.BytesIO(content))
    return None


class ProxiedRequest:
    """One request on its way to the backend, and its response on the way back.

    Holds what the steps share: the backend's pending answer, the response-header timer (as
    Go's ResponseHeaderTimeout, it starts once the request body is all sent), whether it
    fired, and the relay once the response body flows.
    """

    def __init__(self, proxy: ProxyResource, request: Request) -> None:
        self.proxy = proxy
        self.request = request
        self.answer: defer.Deferred[Any] = defer.Deferred()  # the backend's, from start()
        self.timer: IDelayedCall | None = None
        self.timed_out = False
        self.relay: _ResponseRelay | None = None

    def start(self, outgoing: str) -> None:
        request, target = self.request, self.proxy.target
        headers = forwarded_headers(request, self.proxy.flow, underscores=self.proxy.underscores)
        body = _request_body(request)
        agent = self.proxy.backends.agent_for(target)
        self.answer = agent.request(request.method, target.agent_url(outgoing), headers, body)
        if isinstance(body, BodySource) and not body.complete:
            body.received_all.addCallback(self._body_sent)
        else:
            self._start_timer()
        request.notifyFinish().addErrback(self._client_gone)
        self.answer.addCallbacks(self._got_response, self._failed)
        self.answer.addErrback(lambda f: log.failure("proxy response relay failed", f))

    def _start_timer(self) -> None:
        self.timer = self.proxy.reactor.callLater(self.proxy.timeout, self._expire)

    def _stop_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()

    def _body_sent(self, _: object) -> None:
        if not self.answer.called:
            self._start_timer()

    def _expire(self) -> None:
        self.timed_out = True
        self.answer.cancel()

    def _client_gone(self, _: object) -> None:
        if self.relay is not None:
            self.relay.client_gone()  # the response had started: drop the backend
        else:
            self.answer.cancel()  # still waiting for the backend: give up on it

    def _got_response(self, response: Any) -> defer.Deferred[None] | None:
        self._stop_timer()
        request = self.request
        request.setResponseCode(response.code, response.phrase)
        listed = _connection_tokens(response.headers)
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in HOP_BY_HOP and name.lower() not in listed:
                request.responseHeaders.setRawHeaders(name, values)
        if isinstance(response.length, int) and response.code not in (204, 304):
            # Twisted's client keeps Content-Length to itself; pass it on, so the client
            # can tell a complete body from a cut one (and HTTP/1.1 needs no chunking)
            request.setHeader(b"content-length", str(response.length).encode())
        if request.method == b"HEAD" or response.code in (204, 304):
            response.deliverBody(protocol.Protocol())
            request.finish()
            return None
        done: defer.Deferred[None] = defer.Deferred()
        self.relay = _ResponseRelay(request, done)
        response.deliverBody(self.relay)
        return done

    def _failed(self, failure: Failure) -> None:
        request = self.request
        if not _answering(request):
            return
        code, message = (504, "Gateway Timeout") if self.timed_out else (502, "Bad Gateway")
        self._stop_timer()
        log.info(
            "proxy to {target} failed: {code} {error}",
            target=self.proxy.target.url,
            code=code,
            error=failure.getErrorMessage(),
        )
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.write(f"{code} {message}\n".encode())
        request.finish()


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
        headers = forwarded_headers(
            request, self.flow, keep_upgrade=True, underscores=self.underscores
        )
        head = h11.Request(
            method=request.method,
            target=outgoing.encode("utf-8", "surrogateescape"),
            headers=[(name, v) for name, values in headers.getAllRawHeaders() for v in values],
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
    listed: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            listed.update(t.strip().lower() for t in value.split(b","))
    return [(n, v) for n, v in headers if n.lower() not in HOP_BY_HOP and n.lower() not in listed]


__all__ = ["Backends", "BodySource", "ProxyResource", "Target", "error"]
