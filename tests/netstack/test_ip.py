"""IPv4/IPv6 header building and parsing (funnel_tw.netstack.ip)."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.netstack.ip import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    IPError,
    Packet,
    build,
    build_ipv4,
    build_ipv6,
    parse,
    pseudo_header,
)

from .reference import naive_checksum, naive_ones_sum

SRC4, DST4 = IPv4Address("10.0.0.1").packed, IPv4Address("10.0.0.2").packed
SRC6, DST6 = IPv6Address("fd00::1").packed, IPv6Address("fd00::2").packed

addresses4 = st.binary(min_size=4, max_size=4)
addresses6 = st.binary(min_size=16, max_size=16)


class BuildParseTests(SynchronousTestCase):
    def test_constants(self) -> None:
        self.assertEqual((PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6), (1, 6, 17, 58))

    def test_ipv4_layout(self) -> None:
        packet = build_ipv4(SRC4, DST4, PROTO_UDP, b"payload", ttl=33, ident=0x1234)
        self.assertEqual(len(packet), 20 + 7)
        vihl, tos, total, ident, frag, ttl, proto, csum, src, dst = struct.unpack(
            "!BBHHHBBH4s4s", packet[:20]
        )
        self.assertEqual((vihl, tos, total, ident), (0x45, 0, 27, 0x1234))
        self.assertEqual((frag, ttl, proto), (0x4000, 33, PROTO_UDP))  # DF, no offset
        self.assertEqual((src, dst), (SRC4, DST4))
        zeroed = packet[:10] + b"\x00\x00" + packet[12:20]
        self.assertEqual(csum, naive_checksum(zeroed))
        self.assertEqual(naive_ones_sum(packet[:20]), 0xFFFF)

    def test_ipv6_layout(self) -> None:
        packet = build_ipv6(SRC6, DST6, PROTO_TCP, b"payload", hop_limit=7)
        self.assertEqual(len(packet), 40 + 7)
        first, length, nh, hop = struct.unpack("!IHBB", packet[:8])
        self.assertEqual((first, length, nh, hop), (0x60000000, 7, PROTO_TCP, 7))
        self.assertEqual((packet[8:24], packet[24:40]), (SRC6, DST6))

    def test_round_trip(self) -> None:
        p4 = parse(build(SRC4, DST4, PROTO_UDP, b"four", ttl=9), verify_checksum=True)
        self.assertEqual(p4, Packet(4, SRC4, DST4, PROTO_UDP, 9, b"four"))
        p6 = parse(build(SRC6, DST6, PROTO_UDP, b"six", ttl=10), verify_checksum=True)
        self.assertEqual(p6, Packet(6, SRC6, DST6, PROTO_UDP, 10, b"six"))
        self.assertEqual(str(p4.src_address), "10.0.0.1")
        self.assertEqual(str(p6.dst_address), "fd00::2")

    def test_trailing_bytes_are_not_payload(self) -> None:
        # WireGuard pads packets to 16 bytes; the lengths in the header decide.
        self.assertEqual(parse(build_ipv4(SRC4, DST4, 17, b"abc") + bytes(9)).payload, b"abc")
        self.assertEqual(parse(build_ipv6(SRC6, DST6, 17, b"abc") + bytes(9)).payload, b"abc")

    def test_ipv4_options_skipped(self) -> None:
        options = b"\x01\x01\x01\x00"  # NOP NOP NOP EOL
        header = bytearray(build_ipv4(SRC4, DST4, 17, b"")[:20])
        header[0] = 0x46
        header[2:4] = (24 + 3).to_bytes(2, "big")
        header[10:12] = b"\x00\x00"
        header[10:12] = naive_checksum(bytes(header) + options).to_bytes(2, "big")
        packet = parse(bytes(header) + options + b"xyz", verify_checksum=True)
        self.assertEqual(packet.payload, b"xyz")

    def test_empty_payload(self) -> None:
        self.assertEqual(parse(build_ipv4(SRC4, DST4, 6, b"")).payload, b"")
        self.assertEqual(parse(build_ipv6(SRC6, DST6, 6, b"")).payload, b"")

    @given(
        st.one_of(st.tuples(addresses4, addresses4), st.tuples(addresses6, addresses6)),
        st.integers(0, 255),
        st.integers(0, 255),
        st.binary(max_size=1500),
    )
    def test_round_trip_property(
        self, addresses: tuple[bytes, bytes], protocol: int, ttl: int, payload: bytes
    ) -> None:
        src, dst = addresses
        packet = build(src, dst, protocol, payload, ttl)
        parsed = parse(packet, verify_checksum=True)
        self.assertEqual(
            parsed, Packet(4 if len(src) == 4 else 6, src, dst, protocol, ttl, payload)
        )


class MalformedTests(SynchronousTestCase):
    def assertIPError(self, packet: bytes, verify_checksum: bool = False) -> None:
        self.assertRaises(IPError, parse, packet, verify_checksum)

    def test_ipv4(self) -> None:
        good = build_ipv4(SRC4, DST4, 17, b"0123456789")
        self.assertIPError(b"")
        self.assertIPError(good[:19])
        for bad_ihl in (0x40, 0x44):
            self.assertIPError(bytes([bad_ihl]) + good[1:])
        self.assertIPError(bytes([0x4F]) + good[1:])  # 60-byte header in a 30-byte packet
        for total in (0, 19, len(good) + 1, 0xFFFF):
            self.assertIPError(good[:2] + total.to_bytes(2, "big") + good[4:])
        for frag in (0x2000, 0x0001, 0x1FFF, 0x6000):  # MF and/or an offset
            self.assertIPError(good[:6] + frag.to_bytes(2, "big") + good[8:])
        # Only DF (and the reserved bit) are not fragments.
        for flags in (0x0000, 0x8000):
            parse(good[:6] + flags.to_bytes(2, "big") + good[8:])

    def test_ipv4_checksum(self) -> None:
        good = build_ipv4(SRC4, DST4, 17, b"0123456789")
        bad = good[:10] + bytes([good[10] ^ 0xFF]) + good[11:]
        self.assertIPError(bad, verify_checksum=True)
        parse(bad)  # not checked unless asked
        # Only the header is covered: the payload may change.
        parse(good[:-1] + b"x", verify_checksum=True)

    def test_ipv6(self) -> None:
        good = build_ipv6(SRC6, DST6, 17, b"0123456789")
        self.assertIPError(good[:39])
        self.assertIPError(good[:4] + (11).to_bytes(2, "big") + good[6:])
        self.assertIPError(good[:-1])

    def test_other_versions(self) -> None:
        for version in (0, 1, 5, 7, 15):
            self.assertIPError(bytes([version << 4 | 5]) + bytes(59))

    @given(st.binary(max_size=120), st.booleans())
    def test_arbitrary_bytes_only_raise_ip_error(self, data: bytes, verify: bool) -> None:
        try:
            packet = parse(data, verify)
        except IPError:
            return
        self.assertIn(packet.version, (4, 6))
        self.assertLessEqual(len(packet.payload), len(data))

    @given(
        st.binary(min_size=1, max_size=80), st.sampled_from([0x45, 0x46, 0x4F, 0x60]), st.booleans()
    )
    def test_ip_looking_bytes_only_raise_ip_error(
        self, rest: bytes, first: int, verify: bool
    ) -> None:
        try:
            packet = parse(bytes([first]) + rest, verify)
        except IPError:
            return
        self.assertEqual(packet.version, first >> 4)
        self.assertEqual(len(packet.src), 4 if packet.version == 4 else 16)


class PseudoHeaderTests(SynchronousTestCase):
    def test_ipv4(self) -> None:
        self.assertEqual(
            pseudo_header(SRC4, DST4, PROTO_UDP, 0x1234),
            SRC4 + DST4 + b"\x00\x11\x12\x34",
        )

    def test_ipv6(self) -> None:
        # RFC 8200 section 8.1: 32-bit upper-layer length, 3 zero bytes, next header.
        self.assertEqual(
            pseudo_header(SRC6, DST6, PROTO_ICMPV6, 0x12345),
            SRC6 + DST6 + b"\x00\x01\x23\x45" + b"\x00\x00\x00\x3a",
        )
