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


class Stalling(protocol.Protocol):
    """Server: reads nothing (pauses its transport at once) and records how it ended."""

    def __init__(self) -> None:
        self.lost: defer.Deferred[Exception] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.pauseProducing()

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost.callback(reason.value)


class Flooder(protocol.Protocol):
    def __init__(self) -> None:
        self.lost: defer.Deferred[Exception] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(os.urandom(3 << 20))  # more than the paused reader's window

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost.callback(reason.value)


async def sleep(seconds: float) -> None:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    await d


class AbandonedFlowTests(TestCase):
    """The far end goes away while our side is paused or holds unsent data."""

    timeout = 30

    def setUp(self) -> None:
        self.relay, self.node = overlay_pair()
        self.addCleanup(self.relay.stop)
        self.addCleanup(self.node.stop)

    async def _stalled(self) -> tuple[Stalling, Flooder]:
        server = Stalling()
        await self.node.server_endpoint(5000).listen(protocol.Factory.forProtocol(lambda: server))
        client = Flooder()
        await self.relay.client_endpoint("100.64.0.2", 5000).connect(
            protocol.Factory.forProtocol(lambda: client)
        )
        for _ in range(100):  # until the node's window is shut and the relay holds the rest
            await sleep(0.05)
            conn = client.transport.conn
            if conn.snd_wnd == 0 and conn.send_buffered > 0:
                break
        self.assertEqual(client.transport.conn.snd_wnd, 0)
        self.assertEqual(len(self.node.tcp_connections()), 1)
        return server, client

    async def test_reset_reaches_a_paused_protocol(self) -> None:
        server, client = await self._stalled()
        started = reactor.seconds()
        client.transport.abortConnection()
        reason = await server.lost
        self.assertLess(reactor.seconds() - started, 1.0)
        self.assertIn("reset", str(reason))
        self.assertEqual(self.node.tcp_connections(), [])

    async def test_close_behind_a_shut_window_ends_in_a_reset(self) -> None:
        server, client = await self._stalled()
        client.transport.conn.orphan_timeout = 1.0
        started = reactor.seconds()
        client.transport.loseConnection()  # its data can never be sent: the peer reads nothing
        await client.lost
        reason = await server.lost
        self.assertLess(reactor.seconds() - started, 3.0)
        self.assertIn("reset", str(reason))
        self.assertEqual(self.node.tcp_connections(), [])
        self.assertEqual(self.relay.tcp_connections(), [])
        self.assertEqual(self.relay.stats()["tcp_user_timeouts"], 1)

    async def test_paused_side_letting_go_releases_the_sender(self) -> None:
        server, client = await self._stalled()
        server.transport.loseConnection()  # paused, and held what it read: it lets go
        await client.lost
        await server.lost
        self.assertEqual(self.node.tcp_connections(), [])
