"""Twisted endpoints on the overlay: any factory listens on or dials an overlay address.

    OverlayServerEndpoint(overlay, 41642).listen(Site(resource))
    OverlayClientEndpoint(overlay, "100.64.0.2", 41642).connect(factory)

With ``network = tun`` the overlay addresses are on a kernel interface and plain
``TCP4ServerEndpoint``/``TCP4ClientEndpoint`` do the same job; callers get the right kind from
:meth:`OverlayInterface.server_endpoint` and :meth:`OverlayInterface.client_endpoint`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from zope.interface import implementer

from .tcp import to_address

if TYPE_CHECKING:
    from .interface import OverlayInterface


@implementer(IListeningPort)
class OverlayListeningPort:
    def __init__(self, overlay: OverlayInterface, port: int, factory: IProtocolFactory) -> None:
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

    def getHost(self) -> Any:
        return to_address((self.overlay.addresses[0].ip.packed, self.port))


@implementer(IStreamServerEndpoint)
class OverlayServerEndpoint:
    def __init__(self, overlay: OverlayInterface, port: int) -> None:
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
    def __init__(
        self, overlay: OverlayInterface, host: str, port: int, timeout: float = 30.0
    ) -> None:
        self.overlay = overlay
        self.host = host
        self.port = port
        self.timeout = timeout

    def connect(self, factory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        return self.overlay.connect_tcp(self.host, self.port, factory, self.timeout)
