"""HTTPS mounts: the HTTP site that runs behind the node's TLS, routing by SNI and path.

The TLS server name picks the ``host:port`` entry of the Web config (the ingress target gated
the funnel check; a funnel flow is also refused a name without funnel on that port), then
Tailscale's mount lookup picks the handler: ``text:`` answers with text, a path serves files
below it, a URL is reverse-proxied (serve/proxy.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.web import resource
from twisted.web.http import RESPONSES
from twisted.web.server import Request, Site

from ..flow import Flow
from ..web.hostport import format_host_port
from ..web.httplimits import HTTPLimits
from ..web.paths import PathError, request_target
from .files import FileMount
from .guard import server_name
from .http2 import h2_connection
from .lean import lean_channel
from .model import HTTPHandler, ServeConfig, match_mount
from .notes import request_notes
from .streaming import StreamingRequest

log = Logger()


def tls_server_name(request: Request) -> str | None:
    """The SNI of the TLS connection a request arrived on (HTTP/1.1 or HTTP/2)."""
    for holder in (request.channel, h2_connection(request)):
        transport = getattr(holder, "transport", None)
        if getattr(transport, "getHandle", None) is not None:
            return server_name(transport)
    return None


class TextResource(resource.Resource):
    isLeaf = True

    def __init__(self, text: str) -> None:
        super().__init__()
        self.body = text.encode()

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return self.body

    def render_HEAD(self, request: Request) -> bytes:
        return self.render_GET(request)


class MountRouter(resource.Resource):
    """Routes every request of one HTTPS port by SNI host and mount path.

    ``proxy_factory(target, prefix, flow, timeout, underscores)`` builds the resource of a
    proxy mount; the timeout is that of the site's section, ``underscores`` the mount's opt-in
    to header names with "_"."""

    def __init__(
        self,
        serve: ServeConfig,
        port: int,
        flow: Flow,
        proxy_factory: Any,
        count: Callable[[str], None] = lambda what: None,
        access: Any = None,
    ) -> None:
        super().__init__()
        self.access = access  # serve/access/guard.py Access: the policies guarding mounts
        self.serve = serve
        self.port = port
        self.flow = flow
        self.proxy_factory = proxy_factory
        # one proxy resource per mount for the life of this connection (it keeps no request
        # state): keep-alive requests do not parse the target URL again each time
        self._proxies: dict[tuple[str, str | None, float, bool], Any] = {}
        self.count = count

    def getChildWithDefault(self, name: bytes, request: Request) -> Any:
        # without SNI: the ingress target of a funnel flow, the node's first name on the tailnet
        host = tls_server_name(request) or self.flow.host
        served = self._served(host)
        if not isinstance(served, tuple):
            return served
        site, mounts = served
        try:
            path, _ = request_target(request)
        except PathError as e:
            self.count("refused_path")
            request_notes(request)["reason"] = str(e)
            log.info(
                "refused {method} from {client} for {host}: {why}",
                method=request.method.decode("ascii", "replace"),
                client=format_host_port(*self.flow.client),
                host=host,
                why=e,
            )
            return resource.ErrorPage(e.status, RESPONSES[e.status].decode(), str(e))
        own = None if self.access is None else self.access.reserved(path, self.flow, host)
        if own is not None:
            return own  # the OIDC callback and logout paths
        if self.access is not None and self.access.ambiguous(mounts, path):
            self.count("refused_path")
            return resource.ErrorPage(400, "Bad Request", "a path parameter changes the policy")
        found = match_mount(mounts, path)
        if found is None:
            return resource.NoResource()
        prefix, handler = found
        request_notes(request)["mount"] = prefix
        child = self._handler(prefix, handler, request, path, self.serve.timeouts[site])
        if self.access is None:
            return child
        if handler.access is not None:
            # decided on the same normalized path the mount was matched on and is forwarded
            return self.access.guard(handler.access, child, request, self.flow, host, path)
        self.access.forget_own_cookies(request)  # an open mount: no session cookie for it
        return child

    def _served(self, host: str) -> tuple[str, Any] | Any:
        """(site, its mounts) that serve ``host`` on this port, or the resource refusing it."""
        site = self.serve.site(host, self.port)
        mounts = None if site is None else self.serve.web.get(site)
        if site is None or mounts is None:
            return resource.NoResource("no such site")
        if self.flow.funnel and not self.serve.admits_funnel(host, self.port):
            # the relay asked for a name with funnel on this port; the SNI names one without
            return resource.ForbiddenResource("no funnel for this name")
        return site, mounts

    def render(self, request: Request) -> Any:
        child = resource.getChildForRequest(self.getChildWithDefault(b"", request), request)
        return child.render(request)

    def _handler(
        self, prefix: str, handler: HTTPHandler, request: Request, path: str, timeout: float
    ) -> Any:
        if handler.text is not None:
            return TextResource(handler.text)
        if handler.path is not None:
            rest = path[len(prefix) :] if path.startswith(prefix) else ""
            client = format_host_port(*self.flow.client)
            site = format_host_port(tls_server_name(request) or self.flow.host, self.port)
            return FileMount(handler.path, path, rest, client, site, self.count)
        return self._proxy(prefix, handler, timeout)

    def _proxy(self, prefix: str, handler: HTTPHandler, timeout: float) -> Any:
        key = (prefix, handler.proxy, timeout, handler.underscores)
        proxy = self._proxies.get(key)
        if proxy is None:
            proxy = self._proxies[key] = self.proxy_factory(
                handler.proxy, prefix, self.flow, timeout, handler.underscores
            )
        return proxy

    def proxy_route(self, host: str, path: str) -> tuple[str, Any] | None:
        """(mount prefix, proxy resource) of a request for the normalized ``path`` on ``host``
        when an unguarded proxy mount takes it, as :meth:`getChildWithDefault` would decide;
        None for everything else (other handlers, refusals, access policies), which that
        method answers (serve/lean.py's fast path asks this first)."""
        access = self.access
        if access is not None and access.oidc:
            return None  # its own paths, and its session cookies to take out of requests
        served = self._served(host)
        if not isinstance(served, tuple):
            return None
        site, mounts = served
        if access is not None and access.ambiguous(mounts, path):
            return None
        found = match_mount(mounts, path)
        if found is None or found[1].proxy is None:
            return None
        if access is not None and found[1].access is not None:
            return None  # a policy guards it
        prefix, handler = found
        return prefix, self._proxy(prefix, handler, self.serve.timeouts[site])


class ServeSite(Site):
    """The HTTPS site of one flow: streamed request bodies, the limits of web/httplimits.py on
    request heads (HTTP/1.1) and bodies (both HTTP versions), and serve/lean.py's fast path.
    ``on_request(request, flow)`` (set by the dispatcher when the node keeps an access log or
    metrics) hears of every request once: when it finishes, or when its connection is lost
    first."""

    requestFactory = StreamingRequest
    noisy = False
    on_request: Callable[[Request, Flow], None] | None = None
    flow: Flow | None = None
    protocol = lean_channel
    lean = True  # serve/lean.py's fast path for plain proxied GET and HEAD requests

    def __init__(
        self,
        root: resource.Resource,
        reactor: Any,
        timeout: float = 300,
        limits: HTTPLimits | None = None,
        refused: Callable[[str, str, str | None], None] | None = None,
    ) -> None:
        super().__init__(root, timeout=timeout, reactor=reactor)
        self.displayTracebacks = False
        self.http_limits = limits or HTTPLimits()
        self._refused = refused

    def http_refused(self, transport: Any, counter: str, reason: str) -> None:
        """A request refused by a limit: to the dispatcher, with the connection's SNI."""
        if self._refused is not None:
            self._refused(f"http_{counter}", reason, server_name(transport))

    def getResourceFor(self, request: Request) -> Any:
        if self.on_request is not None:
            request_notes(request)["started"] = self.reactor.seconds()
            request.notifyFinish().addErrback(lambda _: self._lost(request))
        return super().getResourceFor(request)

    def _lost(self, request: Request) -> None:
        request_notes(request).setdefault("reason", "connection lost")
        self.log(request)

    def log(self, request: Any) -> None:
        if self.on_request is not None and self.flow is not None:
            self.on_request(request, self.flow)
