"""Flow and IIngressHandler: what the peerAPI hands to serve, and what a handler plugin implements.

Shared by peerapi/ (which builds a Flow for each accepted ingress) and serve/ (which picks the
handler); plugin authors import both from ``funnel_tw.serve.interfaces`` or from here.
"""

from __future__ import annotations

import secrets

import attrs
from twisted.internet.interfaces import IProtocol
from zope.interface import Attribute, Interface


@attrs.frozen
class Flow:
    """One incoming stream: who it is from and where it was addressed.

    ``client`` is the public client's (ip, port) for funnel flows (from
    Tailscale-Ingress-Src), else the overlay peer's address. ``peer`` is the name of the
    WireGuard peer the stream came through (the relay for funnel flows).
    ``server_name`` and ``alpn`` are set for handlers that have the node terminate TLS (their
    ``build_protocol`` is called once the handshake is done); ``id`` is 8 hex digits.
    """

    client: tuple[str, int]
    host: str
    port: int
    funnel: bool
    peer: str
    # TLS, when the node terminates it (else None): the client's SNI and the negotiated ALPN
    server_name: str | None = attrs.field(default=None, kw_only=True)
    alpn: str | None = attrs.field(default=None, kw_only=True)
    # a short random id for log correlation: access log lines and plugin logs carry it
    id: str = attrs.field(factory=lambda: secrets.token_hex(4), eq=False, kw_only=True)


class IIngressHandler(Interface):
    """A handler for ``[serve PORT] handler = NAME``, found with ``twisted.plugin``.

    Plugins provide ``IIngressHandlerFactory``; the factory validates the section's options
    when the configuration is loaded and returns an ``IIngressHandler``.
    """

    terminate_tls = Attribute(
        "True: the node terminates TLS and the protocol sees plaintext; "
        "False: the protocol sees the raw (still encrypted) stream."
    )

    def build_protocol(flow: Flow) -> IProtocol | None:
        """The Protocol for this flow; raise ``funnel_tw.plugin.Refused(reason)`` (or return
        None, counted without a reason) to refuse it: the connection is closed."""
