"""The overlay endpoints of ``network = tun``: the kernel's TCP, bound to our overlay addresses.

The kernel owns TCP on the TUN interface's addresses, so these are plain Twisted TCP endpoints:
a listener on every overlay address (v4 and v6) on one port, and a client bound to our overlay
address of the destination's family.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Interface, IPv6Interface, ip_address

from twisted.internet import defer, error
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorTCP,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from .interface import source_address


@implementer(IListeningPort)
class TunListeningPort:
    """One TCP listening socket per overlay address, started and stopped together."""

    def __init__(self, ports: Sequence[IListeningPort]) -> None:
        self.ports = list(ports)
        self.listening = True

    def startListening(self) -> None:
        if not self.listening:
            self.listening = True
            for port in self.ports:
                port.startListening()

    def stopListening(self) -> defer.Deferred[None]:
        self.listening = False
        stopping = [defer.maybeDeferred(port.stopListening) for port in self.ports]
        done = defer.gatherResults(stopping, consumeErrors=True)
        return done.addCallback(lambda _: None)

    def getHost(self) -> IAddress:
        host: IAddress = self.ports[0].getHost()
        return host


@implementer(IStreamServerEndpoint)
class TunServerEndpoint:
    """Kernel TCP on every overlay address of the node (v4 and v6), on the same port."""

    def __init__(
        self,
        reactor: IReactorTCP,
        addresses: Sequence[IPv4Interface | IPv6Interface],
        port: int,
    ) -> None:
        self.reactor = reactor
        self.addresses = addresses
        self.port = port

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        reactor = self.reactor
        port = self.port
        opened: list[IListeningPort] = []
        try:
            for address in self.addresses:
                listening: IListeningPort = reactor.listenTCP(
                    port,
                    factory,  # type: ignore[arg-type]  # the stub wants a ServerFactory
                    interface=str(address.ip),
                )
                opened.append(listening)
                if port == 0:  # the first socket picked a free port; the others share it
                    port = int(listening.getHost().port)  # type: ignore[attr-defined]
        except Exception:
            failure = Failure()
            if not opened:
                return defer.fail(failure)
            # fail once the sockets already opened are closed, so the port is free again
            closing = TunListeningPort(opened).stopListening()
            return closing.addBoth(lambda _: failure)
        return defer.succeed(TunListeningPort(opened))


@implementer(IStreamClientEndpoint)
class TunClientEndpoint:
    """Kernel TCP to ``host:port``, from our overlay address of the same family."""

    def __init__(
        self,
        reactor: IReactorTCP,
        addresses: Sequence[IPv4Interface | IPv6Interface],
        host: str,
        port: int,
        timeout: float = 30.0,
    ) -> None:
        self.reactor = reactor
        self.addresses = addresses
        self.host = host
        self.port = port
        self.timeout = timeout

    def connect(self, factory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        try:
            dst = ip_address(self.host)
            src = str(ip_address(source_address(self.addresses, dst)))
        except ValueError as e:
            return defer.fail(error.ConnectError(string=str(e)))
        reactor = self.reactor
        endpoint: TCP4ClientEndpoint | TCP6ClientEndpoint
        if dst.version == 4:
            endpoint = TCP4ClientEndpoint(
                reactor, str(dst), self.port, timeout=self.timeout, bindAddress=(src, 0)
            )
        else:
            endpoint = TCP6ClientEndpoint(  # type: ignore[no-untyped-call]
                reactor, str(dst), self.port, timeout=self.timeout, bindAddress=(src, 0)
            )
        return endpoint.connect(factory)
