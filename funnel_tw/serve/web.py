"""HTTPS mounts: the HTTP site that runs behind the node's TLS, routing by SNI and path.

The TLS server name picks the ``host:port`` entry of the Web config (the ingress target gated
the funnel check; a funnel flow is also refused a name without funnel on that port), then
Tailscale's mount lookup picks the handler: ``text:`` answers with text, a path serves files
below it, a URL is reverse-proxied (serve/proxy.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.python.filepath import FilePath, InsecurePath
from twisted.web import resource, static
from twisted.web.http import RESPONSES
from twisted.web.server import Request, Site

from ..flow import Flow
from ..web.hostport import format_host_port
from ..web.httplimits import HTTPLimits, limited_channel
from ..web.paths import PathError, decoded_segments, request_target
from .guard import server_name
from .http2 import h2_connection
from .model import HTTPHandler, ServeConfig, match_mount
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


class ContainedFile(static.File):
    """static.File that never leaves its root, not even through a symbolic link."""

    def __init__(self, path: str, root: str | None = None, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.root = os.path.realpath(root if root is not None else path)

    def createSimilarFile(self, path: str) -> ContainedFile:
        f = ContainedFile(path, self.root, defaultType=self.defaultType)
        f.processors = self.processors
        f.indexNames = self.indexNames[:]
        f.childNotFound = self.childNotFound
        return f

    def getChild(self, path: bytes, request: Request) -> Any:
        try:
            child = FilePath(self.path).child(path.decode("utf-8", "surrogateescape"))
        except (InsecurePath, UnicodeDecodeError):
            return self.childNotFound
        real = os.path.realpath(child.path)
        if real != self.root and not real.startswith(self.root + os.sep):
            return self.childNotFound
        return super().getChild(path, request)


class MountRouter(resource.Resource):
    """Routes every request of one HTTPS port by SNI host and mount path.

    ``proxy_factory(target, prefix, flow, timeout)`` builds the resource of a proxy mount;
    the timeout is that of the site's section."""

    def __init__(
        self,
        serve: ServeConfig,
        port: int,
        flow: Flow,
        proxy_factory: Any,
        count: Callable[[str], None] = lambda what: None,
    ) -> None:
        super().__init__()
        self.serve = serve
        self.port = port
        self.flow = flow
        self.proxy_factory = proxy_factory
        self.count = count

    def getChildWithDefault(self, name: bytes, request: Request) -> Any:
        # without SNI: the ingress target of a funnel flow, the node's first name on the tailnet
        host = tls_server_name(request) or self.flow.host
        site = self.serve.site(host, self.port)
        mounts = None if site is None else self.serve.web.get(site)
        if site is None or mounts is None:
            return resource.NoResource("no such site")
        if self.flow.funnel and not self.serve.admits_funnel(host, self.port):
            # the relay asked for a name with funnel on this port; the SNI names one without
            return resource.ForbiddenResource("no funnel for this name")
        try:
            path, _ = request_target(request)
        except PathError as e:
            self.count("refused_path")
            log.info(
                "refused {method} from {client} for {host}: {why}",
                method=request.method.decode("ascii", "replace"),
                client=format_host_port(*self.flow.client),
                host=host,
                why=e,
            )
            return resource.ErrorPage(e.status, RESPONSES[e.status].decode(), str(e))
        found = match_mount(mounts, path)
        if found is None:
            return resource.NoResource()
        prefix, handler = found
        return self._handler(prefix, handler, request, path, self.serve.timeouts[site])

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
            segments = [s.encode("utf-8", "surrogateescape") for s in decoded_segments(rest)]
            if path.endswith("/"):
                segments.append(b"")  # a directory: its index (or listing)
            request.postpath = segments
            return resource.getChildForRequest(ContainedFile(handler.path), request)
        return self.proxy_factory(handler.proxy, prefix, self.flow, timeout)


class ServeSite(Site):
    """The HTTPS site of one flow: streamed request bodies, and the limits of
    web/httplimits.py on request heads (HTTP/1.1) and bodies (both HTTP versions)."""

    requestFactory = StreamingRequest
    protocol = limited_channel

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

    def log(self, request: Any) -> None:
        pass
