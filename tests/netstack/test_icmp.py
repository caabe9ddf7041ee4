"""ICMP and ICMPv6 echo (funnel_tw.netstack.icmp), checked against a naive checksum."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.netstack.icmp import (
    ECHO_REPLY_V4,
    ECHO_REPLY_V6,
    ECHO_REQUEST_V4,
    ECHO_REQUEST_V6,
    Echo,
    echo_reply,
    echo_request,
    parse_echo_reply,
    parse_echo_request,
)
from funnel_tw.netstack.ip import PROTO_ICMP, PROTO_ICMPV6, PROTO_UDP, build, parse

from .reference import naive_checksum

SRC4, DST4 = IPv4Address("10.0.0.1").packed, IPv4Address("10.0.0.2").packed
SRC6, DST6 = IPv6Address("fd00::1").packed, IPv6Address("fd00::2").packed


def icmp_checksum_ok(src: bytes, dst: bytes, body: bytes) -> bool:
    """Recompute the checksum naively (ICMPv6 over the RFC 8200 pseudo-header)."""
    zeroed = body[:2] + b"\x00\x00" + body[4:]
    if len(src) == 4:
        expected = naive_checksum(zeroed)
    else:
        pseudo = src + dst + struct.pack("!I", len(body)) + b"\x00\x00\x00" + bytes([58])
        expected = naive_checksum(pseudo + zeroed)
    return body[2:4] == expected.to_bytes(2, "big")


def rebuild(packet: bytes, body: bytes) -> bytes:
    """The same IP packet with another ICMP body (IP header checksum made right again)."""
    p = parse(packet)
    return build(p.src, p.dst, p.protocol, body, p.ttl)


class EchoV4Tests(SynchronousTestCase):
    def test_request_layout(self) -> None:
        packet = echo_request(SRC4, DST4, 0x1234, 7, b"abc")
        ip = parse(packet, verify_checksum=True)
        self.assertEqual((ip.version, ip.protocol, ip.src, ip.dst), (4, PROTO_ICMP, SRC4, DST4))
        kind, code, _, ident, seq = struct.unpack("!BBHHH", ip.payload[:8])
        self.assertEqual((kind, code, ident, seq), (ECHO_REQUEST_V4, 0, 0x1234, 7))
        self.assertEqual(ip.payload[8:], b"abc")
        self.assertTrue(icmp_checksum_ok(SRC4, DST4, ip.payload))

    def test_request_to_reply(self) -> None:
        request = parse_echo_request(parse(echo_request(SRC4, DST4, 1, 2, b"hello")))
        self.assertEqual(request, Echo(SRC4, DST4, 1, 2, b"hello"))
        assert request is not None
        reply_packet = echo_reply(request)
        ip = parse(reply_packet, verify_checksum=True)
        self.assertEqual((ip.src, ip.dst), (DST4, SRC4))
        self.assertEqual(ip.payload[0], ECHO_REPLY_V4)
        self.assertTrue(icmp_checksum_ok(DST4, SRC4, ip.payload))
        self.assertEqual(parse_echo_reply(ip), Echo(DST4, SRC4, 1, 2, b"hello"))
        # A reply is not a request, and vice versa.
        self.assertIsNone(parse_echo_request(ip))
        self.assertIsNone(parse_echo_reply(parse(echo_request(SRC4, DST4, 1, 2))))

    def test_bad_checksum_ignored(self) -> None:
        packet = echo_request(SRC4, DST4, 1, 2, b"data")
        body = parse(packet).payload
        for i in (2, 3, len(body) - 1):
            broken = body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1 :]
            self.assertIsNone(parse_echo_request(parse(rebuild(packet, broken))))

    def test_nonzero_code_ignored(self) -> None:
        body = bytearray(parse(echo_request(SRC4, DST4, 1, 2)).payload)
        body[1] = 1
        body[2:4] = b"\x00\x00"
        body[2:4] = naive_checksum(bytes(body)).to_bytes(2, "big")
        self.assertIsNone(parse_echo_request(parse(build(SRC4, DST4, PROTO_ICMP, bytes(body)))))

    def test_short_or_other_protocol_ignored(self) -> None:
        body = parse(echo_request(SRC4, DST4, 1, 2)).payload
        self.assertIsNone(parse_echo_request(parse(build(SRC4, DST4, PROTO_ICMP, body[:7]))))
        self.assertIsNone(parse_echo_request(parse(build(SRC4, DST4, PROTO_UDP, body))))

    def test_all_zero_reply_ignored(self) -> None:
        # Type 0 (echo reply), code 0, checksum 0x0000, ident 0, seq 0: the checksum is wrong
        # (all-zero data checksums to 0xFFFF).
        self.assertIsNone(parse_echo_reply(parse(build(SRC4, DST4, PROTO_ICMP, bytes(8)))))
        good = build(SRC4, DST4, PROTO_ICMP, bytes(2) + b"\xff\xff" + bytes(4))
        self.assertEqual(parse_echo_reply(parse(good)), Echo(SRC4, DST4, 0, 0, b""))

    def test_checksum_does_not_depend_on_addresses(self) -> None:
        # ICMPv4 has no pseudo-header: the same body verifies between any two hosts.
        body = parse(echo_request(SRC4, DST4, 1, 2, b"x")).payload
        other = build(b"\x01\x02\x03\x04", b"\x05\x06\x07\x08", PROTO_ICMP, body)
        self.assertIsNotNone(parse_echo_request(parse(other)))


class EchoV6Tests(SynchronousTestCase):
    def test_request_layout(self) -> None:
        packet = echo_request(SRC6, DST6, 0xBEEF, 9, b"abcde")
        ip = parse(packet)
        self.assertEqual((ip.version, ip.protocol, ip.src, ip.dst), (6, PROTO_ICMPV6, SRC6, DST6))
        kind, code, _, ident, seq = struct.unpack("!BBHHH", ip.payload[:8])
        self.assertEqual((kind, code, ident, seq), (ECHO_REQUEST_V6, 0, 0xBEEF, 9))
        self.assertTrue(icmp_checksum_ok(SRC6, DST6, ip.payload))

    def test_request_to_reply(self) -> None:
        request = parse_echo_request(parse(echo_request(SRC6, DST6, 3, 4, b"v6")))
        self.assertEqual(request, Echo(SRC6, DST6, 3, 4, b"v6"))
        assert request is not None
        ip = parse(echo_reply(request))
        self.assertEqual((ip.src, ip.dst, ip.payload[0]), (DST6, SRC6, ECHO_REPLY_V6))
        self.assertTrue(icmp_checksum_ok(DST6, SRC6, ip.payload))
        self.assertEqual(parse_echo_reply(ip), Echo(DST6, SRC6, 3, 4, b"v6"))
        self.assertIsNone(parse_echo_request(ip))

    def test_bad_checksum_ignored(self) -> None:
        packet = echo_request(SRC6, DST6, 1, 2, b"data")
        body = parse(packet).payload
        broken = body[:3] + bytes([body[3] ^ 0x80]) + body[4:]
        self.assertIsNone(parse_echo_request(parse(rebuild(packet, broken))))

    def test_pseudo_header_is_covered(self) -> None:
        body = parse(echo_request(SRC6, DST6, 1, 2, b"data")).payload
        moved = build(SRC6, IPv6Address("fd00::3").packed, PROTO_ICMPV6, body)
        self.assertIsNone(parse_echo_request(parse(moved)))

    def test_v4_types_in_v6_ignored(self) -> None:
        body = parse(echo_request(SRC4, DST4, 1, 2)).payload
        self.assertIsNone(parse_echo_request(parse(build(SRC6, DST6, PROTO_ICMPV6, body))))
        self.assertIsNone(parse_echo_request(parse(build(SRC6, DST6, PROTO_ICMP, body))))


class EchoPropertyTests(SynchronousTestCase):
    @given(
        st.sampled_from([(SRC4, DST4), (SRC6, DST6)]),
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFF),
        st.binary(max_size=300),
    )
    def test_round_trip(
        self, addresses: tuple[bytes, bytes], ident: int, seq: int, data: bytes
    ) -> None:
        src, dst = addresses
        ip = parse(echo_request(src, dst, ident, seq, data), verify_checksum=True)
        self.assertTrue(icmp_checksum_ok(src, dst, ip.payload))
        request = parse_echo_request(ip)
        self.assertEqual(request, Echo(src, dst, ident, seq, data))
        assert request is not None
        reply = parse(echo_reply(request), verify_checksum=True)
        self.assertTrue(icmp_checksum_ok(dst, src, reply.payload))
        self.assertEqual(parse_echo_reply(reply), Echo(dst, src, ident, seq, data))

    @given(st.binary(max_size=64), st.booleans())
    def test_garbage_bodies_never_raise(self, body: bytes, v6: bool) -> None:
        src, dst, proto = (SRC6, DST6, PROTO_ICMPV6) if v6 else (SRC4, DST4, PROTO_ICMP)
        ip = parse(build(src, dst, proto, body))
        for parser in (parse_echo_request, parse_echo_reply):
            echo = parser(ip)
            if echo is not None:
                self.assertTrue(icmp_checksum_ok(src, dst, body))
