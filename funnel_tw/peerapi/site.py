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

from .errors import Refusal, plain_error
from .ingress import IngressResource

log = Logger()

# seconds a caller may stay silent before the connection is closed; request heads are capped
IDLE_TIMEOUT = 30
MAX_HEAD_BYTES = 16384


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
    """A Site with the peerAPI's limits: idle timeout, no access log of its own."""

    noisy = False

    def __init__(
        self, root: PeerAPIRoot, reactor: Any = None, timeout: float = IDLE_TIMEOUT
    ) -> None:
        super().__init__(root, timeout=timeout, reactor=reactor)
        self.displayTracebacks = False

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        channel = getattr(protocol, "_channel", None)
        if channel is not None:
            channel.totalHeadersSize = MAX_HEAD_BYTES
            channel.maxHeaders = 100
        return protocol

    def log(self, request: http.Request) -> None:
        pass  # ingress decisions are logged where they are made
