"""The ClientHello parser, without a reactor: real hellos split every way, hostile bytes."""

from __future__ import annotations

import contextlib
import ssl
import struct

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.relay.clienthello import (
    MAX_HELLO,
    ClientHello,
    ClientHelloError,
    ClientHelloParser,
    parse_client_hello,
)


def real_hello(
    server_name: str | None = "node.example.com", alpn: list[str] | None = None
) -> bytes:
    """A ClientHello as Python's (OpenSSL's) TLS client writes it."""
    context = ssl.create_default_context()
    context.check_hostname = server_name is not None
    if server_name is None:
        context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def records(hello: bytes, sizes: list[int]) -> bytes:
    """Re-frame one hello's handshake bytes into several TLS records of the given sizes."""
    body = hello[5:]
    out = b""
    i = 0
    for size in sizes:
        if i >= len(body):
            break
        chunk = body[i : i + size]
        out += bytes((22, 3, 1)) + struct.pack("!H", len(chunk)) + chunk
        i += size
    if i < len(body):
        out += bytes((22, 3, 1)) + struct.pack("!H", len(body) - i) + body[i:]
    return out


HELLO = real_hello(alpn=["h2", "http/1.1"])


class ParserTests(SynchronousTestCase):
    def test_real_hello(self) -> None:
        parser = ClientHelloParser()
        self.assertEqual(parser.feed(HELLO), ClientHello("node.example.com", (b"h2", b"http/1.1")))
        self.assertEqual(parser.raw, HELLO)  # kept byte for byte, for the replay

    def test_byte_by_byte(self) -> None:
        parser = ClientHelloParser()
        results = [parser.feed(HELLO[i : i + 1]) for i in range(len(HELLO))]
        self.assertEqual(results[:-1], [None] * (len(HELLO) - 1))
        self.assertEqual(results[-1], ClientHello("node.example.com", (b"h2", b"http/1.1")))

    def test_over_several_records(self) -> None:
        data = records(HELLO, [7, 1, 100, 3])
        self.assertEqual(ClientHelloParser().feed(data).server_name, "node.example.com")

    def test_bytes_after_the_hello_are_kept(self) -> None:
        parser = ClientHelloParser()
        parser.feed(HELLO + b"early")
        self.assertEqual(parser.raw, HELLO + b"early")

    def test_no_sni(self) -> None:
        self.assertIsNone(ClientHelloParser().feed(real_hello(None)).server_name)

    def test_name_is_lowercased(self) -> None:
        hello = real_hello("Node.EXAMPLE.com")
        self.assertEqual(ClientHelloParser().feed(hello).server_name, "node.example.com")

    def test_garbage_first_byte(self) -> None:
        with self.assertRaises(ClientHelloError):
            ClientHelloParser().feed(b"GET / HTTP/1.1\r\n")

    def test_not_a_client_hello(self) -> None:
        data = bytes((22, 3, 1, 0, 4, 2, 0, 0, 0))  # a ServerHello header
        with self.assertRaises(ClientHelloError):
            ClientHelloParser().feed(data)

    def test_oversized(self) -> None:
        size = MAX_HELLO + 1
        data = bytes((22, 3, 1)) + struct.pack("!H", 8) + bytes((1,)) + size.to_bytes(3, "big")
        with self.assertRaises(ClientHelloError):
            ClientHelloParser().feed(data + bytes(4))

    def test_oversized_over_many_records_is_refused_early(self) -> None:
        parser = ClientHelloParser(max_hello=1000)
        header = bytes((1,)) + (900).to_bytes(3, "big")
        with self.assertRaises(ClientHelloError):
            parser.feed(bytes((22, 3, 1)) + struct.pack("!H", 4000) + header + bytes(1500))

    def test_bad_server_name(self) -> None:
        body = HELLO[9:]
        index = body.find(b"node.example.com")
        bad = body[:index] + b"node/example.com" + body[index + 16 :]
        with self.assertRaises(ClientHelloError):
            parse_client_hello(bad)

    @given(st.binary(max_size=4000))
    def test_arbitrary_bytes_only_raise_clienthelloerror(self, data: bytes) -> None:
        parser = ClientHelloParser()
        with contextlib.suppress(ClientHelloError):
            parser.feed(data)
        self.assertLessEqual(len(parser._handshake), MAX_HELLO + 16384 + 256)

    @given(st.binary(max_size=600))
    def test_arbitrary_handshake_bodies(self, body: bytes) -> None:
        data = bytes((22, 3, 1)) + struct.pack("!H", len(body) + 4) + bytes((1,))
        data += len(body).to_bytes(3, "big") + body
        with contextlib.suppress(ClientHelloError):
            ClientHelloParser().feed(data)

    @given(
        st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=20),
        st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=30),
    )
    def test_any_framing_and_segmentation(self, record_sizes: list[int], cuts: list[int]) -> None:
        data = records(HELLO, record_sizes)
        parser = ClientHelloParser()
        result = None
        i = 0
        for cut in cuts * 50:
            if i >= len(data):
                break
            result = parser.feed(data[i : i + cut])
            i += cut
        if i < len(data):
            result = parser.feed(data[i:])
        self.assertEqual(result, ClientHello("node.example.com", (b"h2", b"http/1.1")))
        self.assertEqual(parser.raw, data)

    @given(st.integers(min_value=0, max_value=len(HELLO) - 1), st.integers(0, 255))
    def test_corrupted_hello_never_crashes(self, index: int, value: int) -> None:
        data = bytearray(HELLO)
        data[index] = value
        with contextlib.suppress(ClientHelloError):
            ClientHelloParser().feed(bytes(data))


class RoutesTests(SynchronousTestCase):
    def test_exact_then_wildcard(self) -> None:
        from ipaddress import ip_address

        from funnel_tw.config import RelayNode
        from funnel_tw.relay.routes import Routes

        def node(name: str, *hostnames: str) -> RelayNode:
            return RelayNode(
                name=name,
                public_key=bytes(32),
                allowed_ips=(),
                hostnames=hostnames,
                peerapi=(ip_address("100.64.0.2"), 41642),
                endpoint=None,
                persistent_keepalive=0,
                preshared_key=None,
            )

        a = node("a", "node.example.com", "*.apps.example.com")
        b = node("b", "special.apps.example.com")
        routes = Routes([a, b])
        self.assertIs(routes.lookup("node.example.com"), a)
        self.assertIs(routes.lookup("NODE.example.com."), a)
        self.assertIs(routes.lookup("x.apps.example.com"), a)
        self.assertIs(routes.lookup("special.apps.example.com"), b)
        self.assertIsNone(routes.lookup("a.b.apps.example.com"))  # one label only
        self.assertIsNone(routes.lookup("apps.example.com"))
        self.assertIsNone(routes.lookup("example.com"))
