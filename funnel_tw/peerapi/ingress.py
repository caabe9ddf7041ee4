"""``POST /v0/ingress``: a relay hands the node a public client's raw TCP stream.

The checks and answers are tailscaled's, in its order:

1. the caller is not a funnel-ingress peer: 403 ``denied; no ingress cap``
2. not POST: 405 ``only POST allowed``
3. ``Tailscale-Ingress-Src`` missing or not ``ip:port``: 400
4. ``Tailscale-Ingress-Target`` missing or not ``host:port``: 400
5. the serve configuration does not admit funnel for exactly that ``host:port``: 403 ``denied``
6. accept: exactly ``HTTP/1.1 101 Switching Protocols\\r\\n\\r\\n``, then the connection is the
   public client's byte stream, handed to the serve dispatcher.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import ip_address
from typing import Any

from twisted.internet.interfaces import IProtocol
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ..flow import Flow
from ..web.hijack import HijackError, hijack

log = Logger()

SWITCHING_PROTOCOLS = b"HTTP/1.1 101 Switching Protocols\r\n\r\n"


def parse_ip_port(text: str) -> tuple[str, int] | None:
    """``1.2.3.4:5`` or ``[2001:db8::1]:5`` (netip.ParseAddrPort's forms)."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep or ":" not in host:
            return None
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            return None
    try:
        address = ip_address(host)
        number = int(port, 10)
    except ValueError:
        return None
    if not port.isdigit() or not 0 <= number <= 65535:
        return None
    return str(address), number


def parse_host_port(text: str) -> tuple[str, int] | None:
    """Go's net.SplitHostPort, with a numeric port (what the funnel lookup needs)."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            return None
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            return None
    if not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        return None
    return host, int(port)


class IngressResource(Resource):
    isLeaf = True

    def __init__(
        self,
        *,
        reactor: Any,
        caller_name: Callable[[str], tuple[str, bool] | None],
        admits_funnel: Callable[[str, int], bool],
        accept: Callable[[Flow], IProtocol | None],
    ) -> None:
        """``caller_name(overlay ip)`` -> (peer name, has ingress capability) or None;
        ``accept(flow)`` -> the protocol that takes the stream (None: refuse)."""
        super().__init__()
        self.reactor = reactor
        self.caller_name = caller_name
        self.admits_funnel = admits_funnel
        self.accept = accept
        self.counters: dict[str, int] = {}

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    def _error(self, request: Request, code: int, message: str) -> bytes:
        from .site import plain_error

        self._count(f"ingress_{code}")
        log.info(
            "ingress from {client} refused: {code} {message}",
            client=request.getClientAddress(),
            code=code,
            message=message,
        )
        return plain_error(request, code, message)

    def render(self, request: Request) -> bytes | int:
        client = request.getClientAddress()
        caller = self.caller_name(getattr(client, "host", ""))
        if caller is None or not caller[1]:
            return self._error(request, 403, "denied; no ingress cap")
        if request.method != b"POST":
            return self._error(request, 405, "only POST allowed")
        src_header = request.getHeader(b"tailscale-ingress-src")
        if not src_header:
            return self._error(request, 400, "Tailscale-Ingress-Src header not set")
        src = parse_ip_port(src_header.decode("latin-1"))
        if src is None:
            return self._error(request, 400, "Tailscale-Ingress-Src header invalid; want ip:port")
        target_header = request.getHeader(b"tailscale-ingress-target")
        if not target_header:
            return self._error(request, 400, "Tailscale-Ingress-Target header not set")
        target = parse_host_port(target_header.decode("latin-1"))
        if target is None:
            return self._error(
                request, 400, "Tailscale-Ingress-Target header invalid; want host:port"
            )
        host, port = target
        if not self.admits_funnel(host, port):
            return self._error(request, 403, "denied")
        flow = Flow(client=src, host=host, port=port, funnel=True, peer=caller[0])
        protocol = self.accept(flow)
        if protocol is None:
            return self._error(request, 403, "denied")
        try:
            hijack(request, protocol, self.reactor, preamble=SWITCHING_PROTOCOLS)
        except HijackError as e:
            return self._error(request, 400, f"cannot take over the connection: {e}")
        self._count("ingress_accepted")
        log.info(
            "ingress {src} -> {host}:{port} via {peer}",
            src=f"{src[0]}:{src[1]}",
            host=host,
            port=port,
            peer=caller[0],
        )
        return NOT_DONE_YET
