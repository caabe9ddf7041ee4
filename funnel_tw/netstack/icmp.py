"""ICMP and ICMPv6 echo: answer requests for our addresses, build and recognise our own."""

from __future__ import annotations

import struct
from typing import NamedTuple

from .checksum import checksum, verify
from .ip import PROTO_ICMP, PROTO_ICMPV6, Packet, build, pseudo_header

ECHO_REQUEST_V4, ECHO_REPLY_V4 = 8, 0
ECHO_REQUEST_V6, ECHO_REPLY_V6 = 128, 129
_ECHO = struct.Struct("!BBHHH")


class Echo(NamedTuple):
    src: bytes
    dst: bytes
    ident: int
    sequence: int
    data: bytes


def _message(src: bytes, dst: bytes, kind: int, ident: int, seq: int, data: bytes) -> bytes:
    body = _ECHO.pack(kind, 0, 0, ident, seq) + data
    if len(src) == 4:
        csum = checksum(body)
        proto = PROTO_ICMP
    else:
        csum = checksum(pseudo_header(src, dst, PROTO_ICMPV6, len(body)), body)
        proto = PROTO_ICMPV6
    body = body[:2] + csum.to_bytes(2, "big") + body[4:]
    return build(src, dst, proto, body)


def echo_request(src: bytes, dst: bytes, ident: int, seq: int, data: bytes = b"") -> bytes:
    kind = ECHO_REQUEST_V4 if len(src) == 4 else ECHO_REQUEST_V6
    return _message(src, dst, kind, ident, seq, data)


def _echo(packet: Packet, kind_v4: int, kind_v6: int) -> Echo | None:
    body = packet.payload
    if len(body) < 8:
        return None
    if packet.version == 4:
        if packet.protocol != PROTO_ICMP or body[0] != kind_v4 or not verify(body):
            return None
    elif (
        packet.protocol != PROTO_ICMPV6
        or body[0] != kind_v6
        or not verify(pseudo_header(packet.src, packet.dst, PROTO_ICMPV6, len(body)), body)
    ):
        return None
    _, code, _, ident, seq = _ECHO.unpack_from(body)
    if code != 0:
        return None
    return Echo(packet.src, packet.dst, ident, seq, body[8:])


def parse_echo_request(packet: Packet) -> Echo | None:
    return _echo(packet, ECHO_REQUEST_V4, ECHO_REQUEST_V6)


def parse_echo_reply(packet: Packet) -> Echo | None:
    return _echo(packet, ECHO_REPLY_V4, ECHO_REPLY_V6)


def echo_reply(request: Echo) -> bytes:
    """The reply to ``request``, from the address it was sent to."""
    kind = ECHO_REPLY_V4 if len(request.src) == 4 else ECHO_REPLY_V6
    return _message(request.dst, request.src, kind, request.ident, request.sequence, request.data)
