"""web/sendnow.py: a small write to an idle kernel TCP socket goes out at once, and nothing
ever overtakes what is queued. Real loopback sockets; the far end is a plain socket."""

from __future__ import annotations

import socket
import ssl as stdlib_ssl
from pathlib import Path
from typing import Any

from twisted.internet import protocol, reactor, ssl
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

import twisted
from funnel_tw.web.sendnow import SMALL, write_now
from tests._support import eventually


class Held(protocol.Protocol):
    def connectionMade(self) -> None:
        self.factory.made.append(self)  # type: ignore[attr-defined]


class SendNowTests(TestCase):
    async def connected(self, sndbuf: int = 0) -> tuple[Any, socket.socket]:
        factory = protocol.Factory.forProtocol(Held)
        factory.made = []  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        far = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(far.close)
        self.assertTrue(await eventually(lambda: bool(factory.made), 5))  # type: ignore[attr-defined]
        transport = factory.made[0].transport  # type: ignore[attr-defined]
        self.addCleanup(transport.abortConnection)
        if sndbuf:
            transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        return transport, far

    @staticmethod
    def read(far: socket.socket, size: int) -> bytes:
        far.settimeout(5)
        out = b""
        while len(out) < size:
            chunk = far.recv(size - len(out))
            if not chunk:
                break
            out += chunk
        return out

    async def test_small_write_to_an_idle_socket_is_sent_in_the_callers_turn(self) -> None:
        transport, far = await self.connected()
        write_now(transport, b"hello")
        self.assertNotIn(transport, reactor.getWriters())  # no epoll registration, no turn
        self.assertEqual(self.read(far, 5), b"hello")  # without the reactor running
        transport.write(b"queued")  # Twisted's own: waits for the reactor
        self.assertIn(transport, reactor.getWriters())

    async def test_nothing_overtakes_what_is_queued(self) -> None:
        transport, far = await self.connected(sndbuf=4096)
        big = bytes(range(256)) * 4096  # 1 MiB: more than the socket takes at once
        write_now(transport, big)  # large: queued
        write_now(transport, b"small-after")  # small, but something waits before it
        write_now(transport, b"x" * SMALL)
        expected = big + b"small-after" + b"x" * SMALL
        got = bytearray()

        def drained() -> bool:
            far.setblocking(False)
            try:
                while True:
                    chunk = far.recv(65536)
                    if not chunk:
                        return True
                    got.extend(chunk)
            except BlockingIOError:
                pass
            return len(got) >= len(expected)

        self.assertTrue(await eventually(drained, 10))
        self.assertEqual(bytes(got), expected)

    async def test_what_the_kernel_does_not_take_is_queued_in_order(self) -> None:
        transport, far = await self.connected(sndbuf=16384)
        far.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        data = bytes(range(256)) * (SMALL // 256)
        for _ in range(16):  # the far end does not read yet: the kernel soon takes only part
            write_now(transport, data)
        self.assertIn(transport, reactor.getWriters())  # the rest waits for the reactor
        got = bytearray()

        def drained() -> bool:
            far.setblocking(False)
            try:
                while len(got) < 16 * len(data):
                    got.extend(far.recv(65536))
            except BlockingIOError:
                pass
            return len(got) >= 16 * len(data)

        await eventually(drained, 10)
        self.assertEqual(len(got), 16 * len(data))
        self.assertEqual(bytes(got), data * 16)

    async def test_never_underneath_twisteds_own_tls(self) -> None:
        """After startTLS a TCP connection encrypts in write(): writing to its socket directly
        would put plaintext on the wire."""
        pem = (Path(twisted.__file__).parent / "test" / "server.pem").read_bytes()
        transport, plain = await self.connected()
        transport.startTLS(ssl.PrivateCertificate.loadPEM(pem).options())
        self.assertTrue(transport.TLS)
        context = stdlib_ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = stdlib_ssl.CERT_NONE
        plain.setblocking(False)
        far = context.wrap_socket(plain, do_handshake_on_connect=False)

        def handshake() -> bool:
            try:
                far.do_handshake()
            except (stdlib_ssl.SSLWantReadError, stdlib_ssl.SSLWantWriteError):
                return False
            return True

        self.assertTrue(await eventually(handshake, 5))
        write_now(transport, b"secret")
        got: list[bytes] = []

        def read() -> bool:
            try:
                got.append(far.recv(100))
            except (stdlib_ssl.SSLWantReadError, BlockingIOError):
                return False
            return True

        self.assertTrue(await eventually(read, 5))
        self.assertEqual(b"".join(got), b"secret")

    def test_other_transports_write_as_usual(self) -> None:
        transport = StringTransport()
        write_now(transport, b"abc")
        self.assertEqual(transport.value(), b"abc")

    async def test_a_closing_connection_is_left_to_twisted(self) -> None:
        """As its own write: bytes written after loseConnection still go before the close."""
        transport, far = await self.connected()
        transport.loseConnection()
        write_now(transport, b"late")
        far.setblocking(False)
        got: list[bytes] = []

        def closed() -> bool:
            try:
                got.append(far.recv(100))
            except BlockingIOError:
                return False
            return got[-1] == b""

        self.assertTrue(await eventually(closed, 5))
        self.assertEqual(b"".join(got), b"late")
