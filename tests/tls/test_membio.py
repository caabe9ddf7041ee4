"""Giving back a TLS connection's memory BIOs (funnel_tw/tls/membio.py) and when the node's
TLS layer does it (serve/guard.py: GuardedTLS): over memory BIOs and in-memory transports on
a task.Clock, no reactor."""

from __future__ import annotations

import contextlib
import itertools
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet import protocol, task
from twisted.internet.address import IPv4Address
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.serve import guard
from funnel_tw.serve.guard import LARGE_CHUNK, FlowGuard, guarded_tls
from funnel_tw.tls import membio
from funnel_tw.tls.pem import load_combined
from funnel_tw.tls.selfsigned import ensure_certificate
from funnel_tw.tls.store import Certificate, CertificateStore

NAME = "node.example.com"


def _read_all(read: Callable[[int], bytes]) -> bytes:
    out = b""
    while True:
        try:
            out += read(65536)
        except SSL.WantReadError:
            return out


def _drain(one: SSL.Connection) -> bytes:
    """What ``one`` has for the network."""
    return _read_all(one.bio_read)


def _recv_all(one: SSL.Connection) -> bytes:
    """What ``one`` has for its application."""
    return _read_all(one.recv)


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class Pair:
    """A server connection from the node's certificate store and a client, over memory BIOs."""

    def __init__(self, store: CertificateStore) -> None:
        self.server = store.creator().serverConnectionForTLS(None)
        self.server.set_accept_state()
        self.client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
        self.client.set_tlsext_host_name(NAME.encode())
        self.client.set_connect_state()
        for _ in range(10):
            for one, other in ((self.client, self.server), (self.server, self.client)):
                with contextlib.suppress(SSL.WantReadError):
                    one.do_handshake()
                data = _drain(one)
                if data:
                    other.bio_write(data)
        assert self.server.get_protocol_version_name() == "TLSv1.3"

    def to_server(self, data: bytes) -> bytes:
        self.client.sendall(data)
        self.server.bio_write(_drain(self.client))
        return _recv_all(self.server)

    def to_client(self, data: bytes) -> bytes:
        self.server.sendall(data)
        self.client.bio_write(_drain(self.server))
        return _recv_all(self.client)


class ReleaseTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = CertificateStore([NAME])
        key, chain = load_combined(ensure_certificate(Path(self.mktemp()), (NAME,)))
        self.store.install(Certificate(key, chain, source="test"))

    def test_supported_here(self) -> None:
        # the CI's pyOpenSSL: if this fails, its internals moved and the release is a no-op
        self.assertTrue(membio.SUPPORTED)

    def test_connection_works_on_after_a_release(self) -> None:
        pair = Pair(self.store)
        self.assertEqual(pair.to_client(b"x" * 60000), b"x" * 60000)
        self.assertTrue(membio.release_buffers(pair.server))
        self.assertEqual(membio.pending(pair.server), (0, 0))
        self.assertEqual(pair.to_server(b"request"), b"request")
        self.assertEqual(pair.to_client(b"answer" * 5000), b"answer" * 5000)
        self.assertTrue(membio.release_buffers(pair.server))
        self.assertEqual(pair.to_server(b"again"), b"again")

    def test_no_release_while_a_byte_waits(self) -> None:
        pair = Pair(self.store)
        pair.server.sendall(b"not yet sent to the network")
        self.assertNotEqual(membio.pending(pair.server), (0, 0))
        self.assertFalse(membio.release_buffers(pair.server))
        pair.client.bio_write(_drain(pair.server))
        self.assertEqual(_recv_all(pair.client), b"not yet sent to the network")
        # half a record from the network: waiting in the BIO until OpenSSL reads it
        pair.client.sendall(b"half")
        record = _drain(pair.client)
        pair.server.bio_write(record[:3])
        self.assertFalse(membio.release_buffers(pair.server))
        pair.server.bio_write(record[3:])
        self.assertEqual(_recv_all(pair.server), b"half")

    def test_not_for_a_socket_connection(self) -> None:
        import socket

        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        conn = SSL.Connection(SSL.Context(SSL.TLS_SERVER_METHOD), a)
        self.assertIsNone(membio.pending(conn))
        self.assertFalse(membio.release_buffers(conn))

    def test_memory_given_back(self) -> None:
        """A connection that sent one 60 KB answer: its BIO kept ~60 KiB; released, the next
        connections reuse it. Resident memory over 150 connections each way, measured in a
        fresh interpreter (in this one, earlier tests left free heap that hides growth)."""
        out = subprocess.run(
            [sys.executable, "-c", RSS_SCRIPT, str(Path(self.mktemp()).resolve())],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=Path(__file__).parents[2],
        )
        self.assertEqual(out.returncode, 0, out.stderr)
        released, kept = map(float, out.stdout.split())
        self.assertLess(released + 30, kept, (released, kept))


RSS_SCRIPT = """
import gc, sys
from pathlib import Path
from tests.tls.test_membio import Pair, _rss_kib, NAME
from funnel_tw.tls import membio
from funnel_tw.tls.pem import load_combined
from funnel_tw.tls.selfsigned import ensure_certificate
from funnel_tw.tls.store import Certificate, CertificateStore
store = CertificateStore([NAME])
key, chain = load_combined(ensure_certificate(Path(sys.argv[1]), (NAME,)))
store.install(Certificate(key, chain, source="test"))

def grow(release, n=150):
    kept = []
    gc.collect()
    before = _rss_kib()
    for _ in range(n):
        pair = Pair(store)
        pair.to_server(b"GET / HTTP/1.1\\r\\n\\r\\n")
        pair.to_client(b"x" * 60000)
        if release:
            assert membio.release_buffers(pair.server)
        kept.append(pair.server)  # the client goes
    gc.collect()
    return (_rss_kib() - before) / n

grow(False, 20)  # warm: what the first connections of a process allocate once
print(grow(True), grow(False))
"""


class Sink(protocol.Protocol):
    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


class GuardedTLSHarness(SynchronousTestCase):
    """A GuardedTLS on an in-memory transport and a Clock, with a client driven by hand."""

    def setUp(self) -> None:
        self.store = CertificateStore([NAME])
        key, chain = load_combined(ensure_certificate(Path(self.mktemp()), (NAME,)))
        self.store.install(Certificate(key, chain, source="test"))
        self.clock = task.Clock()
        self.inner = Sink()
        guard = FlowGuard(self.inner, self.clock, lambda *a: None)
        self.server: Any = guarded_tls(self.store.creator(), guard, self.clock, 10.0)
        self.client_conn = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
        self.client_conn.set_tlsext_host_name(NAME.encode())
        self.client_conn.set_connect_state()
        self.wire = iosim.FakeTransport(self.server, True, IPv4Address("TCP", "127.0.0.1", 1))
        self.server.makeConnection(self.wire)
        for _ in range(10):  # the handshake, with a client driven by hand
            with contextlib.suppress(SSL.WantReadError):
                self.client_conn.do_handshake()
            self.to_server(_drain(self.client_conn))
            self.to_client()
        self.assertTrue(self.server._handshakeDone)

    def to_server(self, data: bytes) -> None:
        if data:
            self.server.dataReceived(data)

    def to_client(self) -> bytes:
        stream = self.wire.stream
        self.wire.stream = []
        if stream:
            self.client_conn.bio_write(b"".join(stream))
        return _recv_all(self.client_conn)

    def send(self, data: bytes) -> None:
        self.client_conn.sendall(data)
        self.to_server(_drain(self.client_conn))


class GuardedTLSTests(GuardedTLSHarness):
    """When the node's TLS layer gives its BIOs back: ``release_after`` seconds after a large
    chunk, once; never for small traffic alone; not after the connection is gone."""

    def test_released_a_while_after_the_handshake(self) -> None:
        # the server's certificate flight is a large chunk
        self.assertEqual(
            [c.func.__name__ for c in self.clock.getDelayedCalls()], ["_release_buffers"]
        )
        self.clock.advance(0.9)
        self.assertEqual(self.server.buffers_released, 0)
        self.clock.advance(0.2)
        self.assertEqual(self.server.buffers_released, 1)
        self.send(b"hello")
        self.assertEqual(self.inner.data, b"hello")

    def test_small_traffic_arms_no_timer(self) -> None:
        self.clock.advance(2)
        released = self.server.buffers_released
        for _ in range(20):
            self.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            self.server.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            self.clock.advance(0)  # the small-write aggregator flushes
            self.assertEqual(self.to_client(), b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.server.buffers_released, released)

    def test_large_answer_and_large_upload(self) -> None:
        self.clock.advance(2)
        self.server.write(b"y" * 100_000)
        self.clock.advance(0)
        self.assertEqual(self.to_client(), b"y" * 100_000)
        self.clock.advance(1.1)
        self.assertEqual(self.server.buffers_released, 2)
        self.send(b"u" * LARGE_CHUNK * 4)
        self.assertEqual(self.inner.data, b"u" * LARGE_CHUNK * 4)
        self.clock.advance(1.1)
        self.assertEqual(self.server.buffers_released, 3)
        self.send(b"still works")
        self.assertTrue(self.inner.data.endswith(b"still works"))

    def test_timer_gone_with_the_connection(self) -> None:
        self.server.write(b"z" * 50_000)
        self.clock.advance(0)
        self.server.connectionLost(None)
        self.assertEqual(
            [c for c in self.clock.getDelayedCalls() if c.active() and "release" in repr(c)], []
        )
        self.clock.advance(5)
        self.assertEqual(self.server.buffers_released, 0)


class Counting:
    """An SSL.Connection that counts its ``recv`` and ``bio_read`` calls and the WantReadErrors
    they raise (GuardedTLS's receive loop should not make those calls)."""

    def __init__(self, conn: SSL.Connection) -> None:
        self.conn = conn
        self.calls = {"recv": 0, "bio_read": 0, "want_read": 0}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)

    def _count(self, name: str, size: int) -> bytes:
        self.calls[name] += 1
        try:
            data: bytes = getattr(self.conn, name)(size)
        except SSL.WantReadError:
            self.calls["want_read"] += 1
            raise
        return data

    def recv(self, size: int) -> bytes:
        return self._count("recv", size)

    def bio_read(self, size: int) -> bytes:
        return self._count("bio_read", size)


class ReceiveLoopTests(GuardedTLSHarness):
    """GuardedTLS's receive loop: every record's bytes delivered, a close_notify handled, without
    the ``recv`` and ``bio_read`` that Twisted's loop makes only to learn nothing is left."""

    def setUp(self) -> None:
        super().setUp()
        self.counting = Counting(self.server._tlsConnection)
        self.server._tlsConnection = self.counting

    def records(self, *parts: bytes) -> bytes:
        """The client's records for ``parts``, one record each, as one chunk of the wire."""
        for part in parts:
            self.client_conn.sendall(part)
        return _drain(self.client_conn)

    def test_records_in_one_chunk_without_the_calls_that_find_nothing(self) -> None:
        self.to_server(self.records(b"GET / HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"))
        self.assertEqual(self.inner.data, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        # Twisted's loop: a fourth recv and a bio_read, both WantReadError
        self.assertEqual(self.counting.calls, {"recv": 3, "bio_read": 0, "want_read": 0})

    def test_a_record_cut_in_two(self) -> None:
        chunk = self.records(b"hello")
        self.to_server(chunk[:7])
        self.assertEqual(self.inner.data, b"")
        self.to_server(chunk[7:])
        self.assertEqual(self.inner.data, b"hello")
        self.assertEqual(self.counting.calls["recv"], 2)  # the first half: WantReadError

    def test_close_notify_behind_data_in_one_chunk(self) -> None:
        self.client_conn.sendall(b"last words")
        with contextlib.suppress(SSL.Error):
            self.client_conn.shutdown()
        self.to_server(_drain(self.client_conn))
        self.assertEqual(self.inner.data, b"last words")
        self.assertTrue(self.server._lostTLSConnection)  # ZeroReturnError handled, as Twisted
        with contextlib.suppress(SSL.ZeroReturnError):
            self.to_client()  # the node's own close_notify went out
        self.assertTrue(self.client_conn.get_shutdown() & SSL.RECEIVED_SHUTDOWN)
        self.assertTrue(self.wire.disconnecting)

    def test_twisteds_calls_where_the_bios_cannot_be_read(self) -> None:
        self.patch(guard, "input_waiting", lambda conn: None)
        self.patch(guard, "output_waiting", lambda conn: None)
        self.to_server(self.records(b"a", b"b"))
        self.assertEqual(self.inner.data, b"ab")
        self.assertEqual(self.counting.calls, {"recv": 3, "bio_read": 1, "want_read": 2})

    @settings(max_examples=40, deadline=None)
    @given(
        st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=6),
        st.lists(st.integers(min_value=0, max_value=20000), max_size=5),
    )
    def test_any_cutting_of_the_records_delivers_their_bytes(
        self, parts: list[bytes], cuts: list[int]
    ) -> None:
        before = self.inner.data
        wire = self.records(*parts)
        points = sorted({0, len(wire), *(c % (len(wire) + 1) for c in cuts)})
        for start, end in itertools.pairwise(points):
            self.to_server(wire[start:end])
        self.assertEqual(self.inner.data, before + b"".join(parts))


class WaitingTests(SynchronousTestCase):
    def test_what_each_bio_holds(self) -> None:
        store = CertificateStore([NAME])
        key, chain = load_combined(ensure_certificate(Path(self.mktemp()), (NAME,)))
        store.install(Certificate(key, chain, source="test"))
        pair = Pair(store)
        self.assertEqual(
            (membio.input_waiting(pair.server), membio.output_waiting(pair.server)), (0, 0)
        )
        pair.client.sendall(b"x" * 100)
        record = _drain(pair.client)
        pair.server.bio_write(record)
        self.assertEqual(membio.input_waiting(pair.server), len(record))
        pair.server.sendall(b"y")
        self.assertGreater(membio.output_waiting(pair.server), 0)
        self.assertEqual(
            membio.pending(pair.server), (len(record), membio.output_waiting(pair.server))
        )

    def test_unknown_for_a_socket_connection(self) -> None:
        conn = SSL.Connection(SSL.Context(SSL.TLS_METHOD), socket.socket())
        self.addCleanup(conn.close)
        self.assertIsNone(membio.input_waiting(conn))
        self.assertIsNone(membio.output_waiting(conn))
