"""PROXY protocol headers, byte for byte against haproxy's proxy-protocol.txt.

v1 (section 2.1): ``PROXY TCP4|TCP6 <src> <dst> <srcport> <dstport>\\r\\n``, single spaces,
at most 107 bytes; IPv4 as four decimal numbers, IPv6 as hex groups with at most one ``::``
(no dotted-quad tail).
v2 (section 2.2): the 12-byte signature, version 2 + PROXY command (0x21), family and
transport (0x11 TCP over IPv4, 0x21 TCP over IPv6), a big-endian length of the address block,
then source address, destination address, source port, destination port (network order).
"""

from __future__ import annotations

import struct
from ipaddress import ip_address

from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.serve.proxyproto import V2_SIGNATURE, header

SIGNATURE = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"


def parse_v2(data: bytes) -> tuple[int, int, bytes, bytes, int, int]:
    """An independent reader of what a v2 receiver sees: (ver_cmd, family, src, dst, ports)."""
    assert data[:12] == SIGNATURE
    ver_cmd, family, length = struct.unpack("!BBH", data[12:16])
    body = data[16:]
    assert len(body) == length, (len(body), length)
    size = 4 if family == 0x11 else 16
    src, dst = body[:size], body[size : 2 * size]
    sport, dport = struct.unpack("!HH", body[2 * size : 2 * size + 4])
    return ver_cmd, family, src, dst, sport, dport


class SignatureTests(SynchronousTestCase):
    def test_signature(self) -> None:
        self.assertEqual(V2_SIGNATURE, SIGNATURE)
        self.assertEqual(len(V2_SIGNATURE), 12)


class Version1Tests(SynchronousTestCase):
    def test_ipv4(self) -> None:
        self.assertEqual(
            header(1, ("192.0.2.1", 56324), ("100.64.0.2", 443)),
            b"PROXY TCP4 192.0.2.1 100.64.0.2 56324 443\r\n",
        )

    def test_ipv6(self) -> None:
        self.assertEqual(
            header(1, ("2001:db8::1", 56324), ("fd7a:115c:a1e0::2", 443)),
            b"PROXY TCP6 2001:db8::1 fd7a:115c:a1e0::2 56324 443\r\n",
        )

    def test_ipv6_longest_zero_run_compressed(self) -> None:
        self.assertEqual(
            header(1, ("2001:db8:0:0:1:0:0:1", 1), ("2001:0:0:1::", 2)),
            b"PROXY TCP6 2001:db8::1:0:0:1 2001:0:0:1:: 1 2\r\n",
        )

    def test_ipv4_client_ipv6_node(self) -> None:
        # Both addresses must be of one family: the v4 client as an IPv4-mapped IPv6 address,
        # written in hex groups (the spec's IPv6 form has no dotted-quad tail).
        self.assertEqual(
            header(1, ("192.0.2.1", 56324), ("fd7a:115c:a1e0::2", 443)),
            b"PROXY TCP6 ::ffff:c000:201 fd7a:115c:a1e0::2 56324 443\r\n",
        )

    def test_ipv6_client_ipv4_node(self) -> None:
        self.assertEqual(
            header(1, ("2001:db8::1", 56324), ("100.64.0.2", 443)),
            b"PROXY TCP6 2001:db8::1 ::ffff:6440:2 56324 443\r\n",
        )

    def test_port_extremes(self) -> None:
        self.assertEqual(
            header(1, ("203.0.113.255", 0), ("10.0.0.1", 65535)),
            b"PROXY TCP4 203.0.113.255 10.0.0.1 0 65535\r\n",
        )

    def test_longest_header_fits(self) -> None:
        full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        line = header(1, (full, 65535), (full, 65535))
        self.assertEqual(line, f"PROXY TCP6 {full} {full} 65535 65535\r\n".encode())
        self.assertLessEqual(len(line), 107)

    def test_no_leading_zeros_in_ipv4(self) -> None:
        line = header(1, ("10.0.0.1", 5), ("10.1.2.3", 6))
        self.assertEqual(line, b"PROXY TCP4 10.0.0.1 10.1.2.3 5 6\r\n")


class Version2Tests(SynchronousTestCase):
    def test_ipv4(self) -> None:
        self.assertEqual(
            header(2, ("192.0.2.1", 56324), ("100.64.0.2", 443)),
            SIGNATURE
            + b"\x21\x11\x00\x0c"
            + b"\xc0\x00\x02\x01"
            + b"\x64\x40\x00\x02"
            + b"\xdc\x04\x01\xbb",
        )

    def test_ipv6(self) -> None:
        data = header(2, ("2001:db8::1", 56324), ("fd7a:115c:a1e0::2", 443))
        self.assertEqual(
            data,
            SIGNATURE
            + b"\x21\x21\x00\x24"
            + bytes.fromhex("20010db8000000000000000000000001")
            + bytes.fromhex("fd7a115ca1e000000000000000000002")
            + b"\xdc\x04\x01\xbb",
        )
        self.assertEqual(len(data), 16 + 36)

    def test_ipv4_client_ipv6_node(self) -> None:
        data = header(2, ("192.0.2.1", 56324), ("fd7a:115c:a1e0::2", 443))
        self.assertEqual(
            parse_v2(data),
            (
                0x21,
                0x21,
                bytes.fromhex("00000000000000000000ffffc0000201"),
                ip_address("fd7a:115c:a1e0::2").packed,
                56324,
                443,
            ),
        )

    def test_ipv6_client_ipv4_node(self) -> None:
        data = header(2, ("2001:db8::1", 1), ("100.64.0.2", 2))
        self.assertEqual(
            parse_v2(data),
            (
                0x21,
                0x21,
                ip_address("2001:db8::1").packed,
                bytes.fromhex("00000000000000000000ffff64400002"),
                1,
                2,
            ),
        )

    def test_port_extremes(self) -> None:
        data = header(2, ("10.0.0.1", 0), ("10.0.0.2", 65535))
        self.assertEqual(data[-4:], b"\x00\x00\xff\xff")
        self.assertEqual(parse_v2(data)[4:], (0, 65535))


class BadInputTests(SynchronousTestCase):
    def test_unknown_version(self) -> None:
        for version in (0, 3):
            self.assertRaises(ValueError, header, version, ("10.0.0.1", 1), ("10.0.0.2", 2))

    def test_not_an_address(self) -> None:
        self.assertRaises(ValueError, header, 1, ("node.example.com", 1), ("10.0.0.2", 2))
