"""Overlay TCP between two UserspaceOverlayInterfaces over loopback UDP, with a real reactor."""

from __future__ import annotations

import hashlib
import os
from ipaddress import ip_interface, ip_network

from twisted.internet import defer, protocol, reactor
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, TimeoutError
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from funnel_tw import keys
from funnel_tw.overlay.interface import StaticPeer
from funnel_tw.overlay.userspace import UserspaceOverlayInterface


def overlay_pair(
    restricted: dict[str, frozenset[int]] | None = None,
) -> tuple[UserspaceOverlayInterface, UserspaceOverlayInterface]:
    """A 'relay' (100.64.0.1) and a 'node' (100.64.0.2) joined over loopback."""
    rk, nk = keys.generate_private_key(), keys.generate_private_key()
    r_addr = [ip_interface("100.64.0.1/32"), ip_interface("fd7a:115c:a1e0::1/128")]
    n_addr = [ip_interface("100.64.0.2/32"), ip_interface("fd7a:115c:a1e0::2/128")]
    relay = UserspaceOverlayInterface(
        reactor,
        private_key=rk,
        addresses=r_addr,
        listen_port=0,
        peers=[
            StaticPeer("node", keys.public_key(nk), tuple(ip_network(str(a)) for a in n_addr), None)
        ],
    )
    relay.start()
    node = UserspaceOverlayInterface(
        reactor,
        private_key=nk,
        addresses=n_addr,
        listen_port=0,
        restricted=restricted,
        peers=[
            StaticPeer(
                "relay",
                keys.public_key(rk),
                tuple(ip_network(str(a)) for a in r_addr),
                ("127.0.0.1", relay.port),
                persistent_keepalive=25,
            )
        ],
    )
    node.start()
    return relay, node


@implementer(IHalfCloseableProtocol)
class HashEcho(protocol.Protocol):
    """Server: hashes what it reads; at EOF writes the hex digest and closes."""

    def connectionMade(self) -> None:
        self.hash = hashlib.sha256()
        self.count = 0

    def dataReceived(self, data: bytes) -> None:
        self.hash.update(data)
        self.count += len(data)

    def readConnectionLost(self) -> None:
        self.transport.write(f"{self.count} {self.hash.hexdigest()}".encode())
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


class Client(protocol.Protocol):
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.payload)
        self.transport.loseWriteConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        self.done.callback(self.received)


class OverlayTCPTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.relay, self.node = overlay_pair()
        self.addCleanup(self.relay.stop)
        self.addCleanup(self.node.stop)

    async def _transfer(self, host: str, size: int) -> None:
        factory = protocol.Factory.forProtocol(HashEcho)
        await self.node.server_endpoint(5000).listen(factory)
        payload = os.urandom(size)
        client = Client(payload)
        await self.relay.client_endpoint(host, 5000).connect(
            protocol.Factory.forProtocol(lambda: client)
        )
        answer = await client.done
        self.assertEqual(answer, f"{size} {hashlib.sha256(payload).hexdigest()}".encode())

    async def test_transfer_ipv4(self) -> None:
        await self._transfer("100.64.0.2", 4 << 20)

    async def test_transfer_ipv6(self) -> None:
        await self._transfer("fd7a:115c:a1e0::2", 1 << 20)

    async def test_refused(self) -> None:
        client = Client(b"x")
        with self.assertRaises(ConnectionRefusedError):
            await self.relay.client_endpoint("100.64.0.2", 5999).connect(
                protocol.Factory.forProtocol(lambda: client)
            )


class PacketFilterTests(TestCase):
    timeout = 30

    async def test_restricted_peer_reaches_only_allowed_port(self) -> None:
        relay, node = overlay_pair(restricted={"relay": frozenset({5000})})
        self.addCleanup(relay.stop)
        self.addCleanup(node.stop)
        factory = protocol.Factory.forProtocol(HashEcho)
        await node.server_endpoint(5000).listen(factory)
        await node.server_endpoint(5001).listen(factory)
        client = Client(b"hello")
        await relay.client_endpoint("100.64.0.2", 5000).connect(
            protocol.Factory.forProtocol(lambda: client)
        )
        self.assertEqual(await client.done, b"5 " + hashlib.sha256(b"hello").hexdigest().encode())
        before = node.stats()["drop_filtered"]
        with self.assertRaises(TimeoutError):
            await relay.client_endpoint("100.64.0.2", 5001, timeout=1.5).connect(
                protocol.Factory.forProtocol(lambda: Client(b"x"))
            )
        self.assertGreater(node.stats()["drop_filtered"], before)
