"""Twisted endpoints on the userspace overlay: any factory listens on or dials an overlay address.

    OverlayServerEndpoint(overlay, 41642).listen(Site(resource))
    OverlayClientEndpoint(overlay, "100.64.0.2", 41642).connect(factory)

With ``network = tun`` the overlay addresses are on a kernel interface and plain kernel TCP does
the same job (:mod:`funnel_tw.overlay.kernel_tcp`); callers get the right kind from the overlay's
``server_endpoint`` and ``client_endpoint``.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Interface, IPv6Interface
from typing import Protocol

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from zope.interface import implementer

from .transport import to_address


class EndpointOwner(Protocol):
    """What the endpoints need from whoever runs the TCP/IP stack (no back-pointer to it)."""

    @property
    def addresses(self) -> Sequence[IPv4Interface | IPv6Interface]: ...

    def add_listener(self, port: int, factory: IProtocolFactory) -> None:
        """Accept connections to ``port`` with ``factory``; CannotListenError if taken."""
        ...

    def remove_listener(self, port: int) -> None: ...

    def connect_tcp(
        self, host: str, port: int, factory: IProtocolFactory, timeout: float = 30.0
    ) -> defer.Deferred[IProtocol]:
        """Dial ``host:port``; fires with the connected protocol."""
        ...


@implementer(IListeningPort)
class OverlayListeningPort:
    def __init__(self, overlay: EndpointOwner, port: int, factory: IProtocolFactory) -> None:
        self.overlay = overlay
        self.port = port
        self.factory = factory
        self.listening = False

    def startListening(self) -> None:
        if not self.listening:
            self.factory.doStart()
            self.overlay.add_listener(self.port, self.factory)
            self.listening = True

    def stopListening(self) -> defer.Deferred[None]:
        if self.listening:
            self.listening = False
            self.overlay.remove_listener(self.port)
            self.factory.doStop()
        return defer.succeed(None)

    def getHost(self) -> IPv4Address | IPv6Address:
        return to_address((self.overlay.addresses[0].ip.packed, self.port))


@implementer(IStreamServerEndpoint)
class OverlayServerEndpoint:
    def __init__(self, overlay: EndpointOwner, port: int) -> None:
        self.overlay = overlay
        self.port = port

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        try:
            listening = OverlayListeningPort(self.overlay, self.port, factory)
            listening.startListening()
        except Exception:
            return defer.fail()
        return defer.succeed(listening)


@implementer(IStreamClientEndpoint)
class OverlayClientEndpoint:
    def __init__(self, overlay: EndpointOwner, host: str, port: int, timeout: float = 30.0) -> None:
        self.overlay = overlay
        self.host = host
        self.port = port
        self.timeout = timeout

    def connect(self, factory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        return self.overlay.connect_tcp(self.host, self.port, factory, self.timeout)
