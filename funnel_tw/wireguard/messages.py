"""Wire formats of the four WireGuard messages (little-endian, type as a u32)."""

from __future__ import annotations

import struct
from typing import NamedTuple

MSG_INITIATION = 1
MSG_RESPONSE = 2
MSG_COOKIE_REPLY = 3
MSG_TRANSPORT = 4

INITIATION_SIZE = 148
RESPONSE_SIZE = 92
COOKIE_REPLY_SIZE = 64
TRANSPORT_HEADER_SIZE = 16
TRANSPORT_MIN_SIZE = 32  # header + an empty (keepalive) payload's 16-byte tag

_INITIATION = struct.Struct("<II32s48s28s")  # up to mac1
_RESPONSE = struct.Struct("<III32s16s")  # up to mac1
_COOKIE_REPLY = struct.Struct("<II24s32s")
TRANSPORT_HEADER = struct.Struct("<IIQ")

# The first four bytes of each message: the type byte and three zero bytes.
HEADER_INITIATION = struct.pack("<I", MSG_INITIATION)
HEADER_RESPONSE = struct.pack("<I", MSG_RESPONSE)
HEADER_COOKIE_REPLY = struct.pack("<I", MSG_COOKIE_REPLY)
HEADER_TRANSPORT = struct.pack("<I", MSG_TRANSPORT)


class Initiation(NamedTuple):
    sender: int
    ephemeral: bytes
    static: bytes  # encrypted, 32 + 16
    timestamp: bytes  # encrypted, 12 + 16


class Response(NamedTuple):
    sender: int
    receiver: int
    ephemeral: bytes
    empty: bytes  # encrypted empty payload: the 16-byte tag


class CookieReply(NamedTuple):
    receiver: int
    nonce: bytes
    cookie: bytes  # encrypted, 16 + 16


def pack_initiation(m: Initiation) -> bytes:
    """The message without its MACs (mac1 and mac2 are appended by the cookie generator)."""
    return _INITIATION.pack(MSG_INITIATION, m.sender, m.ephemeral, m.static, m.timestamp)


def unpack_initiation(data: bytes) -> Initiation:
    _, sender, ephemeral, static, timestamp = _INITIATION.unpack_from(data)
    return Initiation(sender, ephemeral, static, timestamp)


def pack_response(m: Response) -> bytes:
    return _RESPONSE.pack(MSG_RESPONSE, m.sender, m.receiver, m.ephemeral, m.empty)


def unpack_response(data: bytes) -> Response:
    _, sender, receiver, ephemeral, empty = _RESPONSE.unpack_from(data)
    return Response(sender, receiver, ephemeral, empty)


def pack_cookie_reply(m: CookieReply) -> bytes:
    return _COOKIE_REPLY.pack(MSG_COOKIE_REPLY, m.receiver, m.nonce, m.cookie)


def unpack_cookie_reply(data: bytes) -> CookieReply:
    _, receiver, nonce, cookie = _COOKIE_REPLY.unpack_from(data)
    return CookieReply(receiver, nonce, cookie)
