"""The peerAPI HTTP server: Tailscale's general gate in front of its routes.

Every request is refused with 403 ``invalid peerapi request`` when it carries a ``Referer`` or
``Origin`` header (a browser was tricked into sending it) or when its ``Host`` is neither
``peer`` nor one of the node's own ``ip:port`` peerAPI addresses (DNS rebinding).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from ..web.hostport import format_host_port
from ..web.httplimits import HTTPLimits, limited_channel
from .errors import Refusal, plain_error
from .ingress import IngressResource

log = Logger()

# seconds a caller may stay silent before the connection is closed; the relay's request heads
# are small and sent at once: a head has 10 seconds and 16 KiB, 50 headers
IDLE_TIMEOUT = 30
LIMITS = HTTPLimits(head_timeout=10.0, max_request_line=4096, max_head_bytes=16384, max_headers=50)


class PeerAPIRoot(Resource):
    def __init__(self, valid_hosts: Callable[[], set[str]], ingress: IngressResource) -> None:
        super().__init__()
        self.valid_hosts = valid_hosts
        self.ingress = ingress

    def _gate(self, request: Request) -> str | None:
        if request.getHeader(b"referer"):
            return "unexpected Referer"
        if request.getHeader(b"origin"):
            return "unexpected Origin"
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        if host != "peer" and host not in self.valid_hosts():
            return f"unexpected Host {host!r}"
        return None

    def getChildWithDefault(self, path: bytes, request: Request) -> Any:
        problem = self._gate(request)
        if problem is not None:
            log.info(
                "peerAPI: invalid request from {client}: {problem}",
                client=request.getClientAddress(),
                problem=problem,
            )
            return Refusal(403, "invalid peerapi request")
        if request.path == b"/v0/ingress":
            return self.ingress
        return Refusal(404, "404 page not found")

    def render(self, request: Request) -> bytes:
        return plain_error(request, 404, "404 page not found")


class PeerAPISite(Site):
    """A Site with the peerAPI's limits: idle timeout, head deadline and sizes (answered
    408/414/431, logged and counted with the ingress counters), no access log of its own."""

    protocol = limited_channel

    noisy = False

    def __init__(
        self,
        root: PeerAPIRoot,
        reactor: Any = None,
        timeout: float = IDLE_TIMEOUT,
        limits: HTTPLimits = LIMITS,
    ) -> None:
        super().__init__(root, timeout=timeout, reactor=reactor)
        self.displayTracebacks = False
        self.http_limits = limits
        self.root = root

    def http_refused(self, transport: Any, counter: str, reason: str) -> None:
        counters = self.root.ingress.counters
        name = f"peerapi_{counter}"
        counters[name] = counters.get(name, 0) + 1
        peer = transport.getPeer()
        client = format_host_port(str(getattr(peer, "host", peer)), int(getattr(peer, "port", 0)))
        log.info("peerAPI: refused {client}: {why}", client=client, why=reason)

    def log(self, request: http.Request) -> None:
        pass  # ingress decisions are logged where they are made
