"""``POST /v0/ingress``: a relay hands the node a public client's raw TCP stream.

The checks and answers are tailscaled's, in its order:

1. the caller is not a funnel-ingress peer: 403 ``denied; no ingress cap``
2. not POST: 405 ``only POST allowed``
3. ``Tailscale-Ingress-Src`` missing or not ``ip:port``: 400
4. ``Tailscale-Ingress-Target`` missing or not ``host:port``: 400
5. the serve configuration does not admit funnel for exactly that ``host:port``: 403 ``denied``
5b. (funnel-tw) the relay says the client offers ALPN ``acme-tls/1`` (``Funnel-Ingress-ALPN``)
   and no tls-alpn-01 challenge is pending here for that host: 421, so a pool's relay tries the
   node that ordered the certificate
6. accept: exactly ``HTTP/1.1 101 Switching Protocols\\r\\n\\r\\n``, then the connection is the
   public client's byte stream, handed to the serve dispatcher.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from ipaddress import ip_address
from typing import Any

from twisted.internet.interfaces import IProtocol
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ..flow import Flow
from ..web.hijack import HijackError, hijack
from ..web.hostport import format_host_port, parse_host_port
from .errors import plain_error

log = Logger()

SWITCHING_PROTOCOLS = b"HTTP/1.1 101 Switching Protocols\r\n\r\n"


class FunnelPolicy(typing.Protocol):
    """Who may funnel to which ``host:port`` (the serve configuration)."""

    def admits_funnel(self, host: str, port: int) -> bool: ...


class FlowDispatcher(typing.Protocol):
    """Who takes an accepted stream (the serve dispatcher)."""

    def protocol_for(self, flow: Flow) -> IProtocol | None: ...


def parse_ip_port(text: str) -> tuple[str, int] | None:
    """``1.2.3.4:5`` or ``[2001:db8::1]:5`` (netip.ParseAddrPort's forms: brackets for IPv6
    and only for IPv6)."""
    parsed = parse_host_port(text)
    if parsed is None or text.startswith("[") != (":" in parsed[0]):
        return None
    try:
        address = ip_address(parsed[0])
    except ValueError:
        return None
    return str(address), parsed[1]


def _header_text(request: Request, name: bytes) -> str:
    """A header's value for a log line: printable, bounded, ``-`` when absent."""
    value = request.getHeader(name)
    if not value:
        return "-"
    text = value[:200].decode("latin-1")
    return "".join(c if c.isprintable() and c != " " else "?" for c in text)


class IngressResource(Resource):
    isLeaf = True

    def __init__(
        self,
        *,
        reactor: Any,
        caller_name: Callable[[str], tuple[str, bool] | None],
        policy: FunnelPolicy,
        dispatcher: FlowDispatcher,
        challenge_pending: Callable[[str], bool] | None = None,
    ) -> None:
        """``caller_name(overlay ip)`` -> (peer name, has ingress capability) or None;
        ``dispatcher.protocol_for(flow)`` -> the protocol that takes the stream (None: refuse)."""
        super().__init__()
        self.reactor = reactor
        self.caller_name = caller_name
        self.policy = policy
        self.dispatcher = dispatcher
        self.challenge_pending = challenge_pending
        self.accepting = True  # False while the node stops: new ingress is refused with 503
        self.counters: dict[str, int] = {}

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    def _error(self, request: Request, code: int, message: str) -> bytes:
        """Refuse, count, and log one line: the caller's ip:port, the client and the
        host:port it names (as sent, made printable), and the reason."""
        self._count(f"ingress_{code}")
        caller = request.getClientAddress()
        host, port = getattr(caller, "host", "?"), getattr(caller, "port", 0)
        log.info(
            "ingress refused: {code} {reason}: caller {caller}, client {src}, target {target}",
            code=code,
            reason=message,
            caller=format_host_port(str(host), int(port)),
            src=_header_text(request, b"tailscale-ingress-src"),
            target=_header_text(request, b"tailscale-ingress-target"),
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
        if not self.policy.admits_funnel(host, port):
            return self._error(request, 403, "denied")
        if (
            self.challenge_pending is not None
            and request.getHeader(b"funnel-ingress-alpn") == b"acme-tls/1"
            and not self.challenge_pending(host)
        ):
            return self._error(request, 421, "no pending tls-alpn-01 challenge for this name")
        if not self.accepting:
            return self._error(request, 503, "shutting down")
        flow = Flow(client=src, host=host, port=port, funnel=True, peer=caller[0])
        protocol = self.dispatcher.protocol_for(flow)
        if protocol is None:
            return self._error(request, 403, "denied")
        try:
            hijack(request, protocol, self.reactor, preamble=SWITCHING_PROTOCOLS)
        except HijackError as e:
            return self._error(request, 400, f"cannot take over the connection: {e}")
        self._count("ingress_accepted")
        log.info(
            "ingress {src} -> {host}:{port} via {peer}",
            src=format_host_port(*src),
            host=host,
            port=port,
            peer=caller[0],
        )
        return NOT_DONE_YET
