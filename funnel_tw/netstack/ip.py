"""IPv4 and IPv6 headers: parse what arrives, build what we send (checksums always right)."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import NamedTuple

from .checksum import checksum, verify

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")


class IPError(ValueError):
    """A packet whose IP header is malformed."""


class Packet(NamedTuple):
    """A parsed IP packet: addresses as raw bytes (4 or 16), the transport payload."""

    version: int
    src: bytes
    dst: bytes
    protocol: int
    ttl: int
    payload: bytes

    @property
    def src_address(self) -> IPv4Address | IPv6Address:
        return ip_address(self.src)

    @property
    def dst_address(self) -> IPv4Address | IPv6Address:
        return ip_address(self.dst)


def parse(packet: bytes, verify_checksum: bool = False) -> Packet:
    """Parse an IPv4 or IPv6 packet; raises IPError. Fragments and IPv6 extension headers
    are not reassembled or walked: the payload then belongs to the fragment/extension."""
    if not packet:
        raise IPError("empty packet")
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < 20:
            raise IPError("short IPv4 header")
        vihl, _, total, _, frag, ttl, proto, _, src, dst = _IPV4.unpack_from(packet)
        ihl = (vihl & 0x0F) * 4
        if ihl < 20 or total < ihl or total > len(packet):
            raise IPError("bad IPv4 lengths")
        if frag & 0x3FFF:
            raise IPError("IPv4 fragment")
        if verify_checksum and not verify(packet[:ihl]):
            raise IPError("bad IPv4 header checksum")
        return Packet(4, src, dst, proto, ttl, packet[ihl:total])
    if version == 6:
        if len(packet) < 40:
            raise IPError("short IPv6 header")
        _, length, next_header, hop, src, dst = _IPV6.unpack_from(packet)
        if 40 + length > len(packet):
            raise IPError("bad IPv6 payload length")
        return Packet(6, src, dst, next_header, hop, packet[40 : 40 + length])
    raise IPError(f"IP version {version}")


def build_ipv4(
    src: bytes, dst: bytes, protocol: int, payload: bytes, ttl: int = 64, ident: int = 0
) -> bytes:
    header = _IPV4.pack(0x45, 0, 20 + len(payload), ident, 0x4000, ttl, protocol, 0, src, dst)
    csum = checksum(header)
    return header[:10] + csum.to_bytes(2, "big") + header[12:] + payload


def build_ipv6(
    src: bytes, dst: bytes, next_header: int, payload: bytes, hop_limit: int = 64
) -> bytes:
    return _IPV6.pack(0x60000000, len(payload), next_header, hop_limit, src, dst) + payload


def build(src: bytes, dst: bytes, protocol: int, payload: bytes, ttl: int = 64) -> bytes:
    if len(src) == 4:
        return build_ipv4(src, dst, protocol, payload, ttl)
    return build_ipv6(src, dst, protocol, payload, ttl)


def pseudo_header(src: bytes, dst: bytes, protocol: int, length: int) -> bytes:
    """The pseudo-header that TCP, UDP and ICMPv6 checksums cover."""
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, protocol, length)
    return src + dst + struct.pack("!IxxxB", length, protocol)
