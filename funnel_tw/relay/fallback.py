"""The relay's end of the TCP fallback: WireGuard datagrams over TLS on the public port.

A node whose UDP is blocked connects to a public port with ALPN ``funnel-wg/1`` in its
ClientHello (overlay/stream.py says why and how the datagrams are framed). The public listener
hands such a connection here instead of routing it by SNI: TLS is terminated with a
certificate made at start (nothing verifies it: WireGuard authenticates both ends inside, so
TLS is only what a middlebox expects on port 443), and the datagrams go to the relay's
WireGuard device as if they came from a UDP endpoint of their own. The device's roaming does
the rest: a node that completes a handshake through the link is answered through it, and one
that returns to UDP is answered over UDP again.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL.crypto import X509, PKey
from twisted.internet.interfaces import IProtocol, ITransport
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from ..overlay.stream import ALPN, StreamLink, link_label
from ..overlay.tunnel import Tunnel
from ..overlay.udp import Address
from ..tls.signing import sign_certificate
from ..web.factories import OneProtocolFactory
from ..web.hostport import format_host_port

log = Logger()

IDLE = 180.0  # no datagram for this long closes a link (keepalives come every 25 s or so)


def _server_options() -> CertificateOptions:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = sign_certificate(
        "funnel-tw relay",
        key.public_key(),
        key,
        not_before=now - datetime.timedelta(days=1),
        not_after=now + datetime.timedelta(days=3650),
    )
    return CertificateOptions(
        privateKey=PKey.from_cryptography_key(key),
        certificate=X509.from_cryptography(cert),
        acceptableProtocols=[ALPN],
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )


class FallbackAcceptor:
    """Terminates fallback streams and joins them to the relay's WireGuard tunnel."""

    def __init__(self, reactor: Any, tunnel: Callable[[], Tunnel | None]) -> None:
        self.reactor = reactor
        self.tunnel = tunnel
        self.options = _server_options()
        self.links: set[StreamLink] = set()
        self.counters: dict[str, int] = {"opened": 0, "closed": 0}

    def take(self, transport: ITransport, buffered: bytes, source: Address) -> IProtocol:
        """The protocol that now owns ``transport``; ``buffered``: what was read so far."""
        link = StreamLink(
            self.reactor,
            format_host_port(*source),
            self._deliver,
            self._opened,
            self._closed,
            idle=IDLE,
        )
        factory = TLSMemoryBIOFactory(self.options, False, OneProtocolFactory(link))
        tls: IProtocol = factory.buildProtocol(transport.getPeer())
        tls.makeConnection(transport)
        tls.dataReceived(buffered)
        return tls

    def _deliver(self, datagrams: list[bytes], address: Address) -> None:
        tunnel = self.tunnel()
        if tunnel is not None:
            tunnel.receive_stream(datagrams, address)

    def _opened(self, link: StreamLink) -> None:
        tunnel = self.tunnel()
        if tunnel is None:
            link.close("the relay's WireGuard is not running")
            return
        self.links.add(link)
        self.counters["opened"] += 1
        tunnel.attach_stream(link.address, link)
        log.info("TCP fallback link from {source} open", source=link_label(link.address))

    def _closed(self, link: StreamLink, why: str) -> None:
        self.links.discard(link)
        self.counters["closed"] += 1
        tunnel = self.tunnel()
        if tunnel is not None:
            tunnel.detach_stream(link.address)
        log.info(
            "TCP fallback link from {source} closed: {why} ({rx} datagrams in, {tx} out, "
            "{dropped} dropped)",
            source=link_label(link.address),
            why=why,
            rx=link.rx_datagrams,
            tx=link.tx_datagrams,
            dropped=link.dropped,
        )

    def status(self) -> dict[str, Any]:
        return {
            "links": sorted(link_label(link.address) for link in self.links),
            **self.counters,
        }
