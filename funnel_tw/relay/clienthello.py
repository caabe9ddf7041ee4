"""Read a TLS ClientHello far enough to learn the SNI name, without decrypting anything.

Sans-IO: feed it bytes as they arrive; it keeps every byte (to replay to the node unchanged)
and reports, once it can, the server name and ALPN protocols, or why the bytes are not a usable
ClientHello. The hello may be split over any number of TCP segments and over several TLS
records (RFC 8446 5.1 allows a handshake message to span records). Its size is capped, so a
client cannot make the relay buffer more than :data:`MAX_HELLO` bytes.
"""

from __future__ import annotations

import re
from typing import NamedTuple

MAX_HELLO = 16 * 1024  # bytes of handshake message; real hellos are 200 B - 2 KiB
_RECORD_HANDSHAKE = 22
_HANDSHAKE_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
    r"(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$"
)


class ClientHello(NamedTuple):
    server_name: str | None
    alpn: tuple[bytes, ...]


class ClientHelloError(ValueError):
    """Not a TLS ClientHello we can route (garbage, truncated structure, too large)."""


class ClientHelloParser:
    """Accumulates a connection's first bytes until the ClientHello is complete."""

    def __init__(self, max_hello: int = MAX_HELLO) -> None:
        self.max_hello = max_hello
        self.buffer = bytearray()  # everything received, to replay
        self._handshake = bytearray()  # the handshake bytes reassembled from records
        self._offset = 0  # how far into buffer the records have been consumed
        self.hello: ClientHello | None = None

    def feed(self, data: bytes) -> ClientHello | None:
        """Add bytes; the ClientHello once complete, else None. Raises ClientHelloError."""
        self.buffer += data
        if self.hello is not None:
            return self.hello
        if self._offset == 0 and self.buffer:  # reject garbage at its first byte
            if self.buffer[0] != _RECORD_HANDSHAKE:
                raise ClientHelloError(f"not a TLS handshake record (first byte {self.buffer[0]})")
            if len(self.buffer) > 1 and self.buffer[1] != 3:
                raise ClientHelloError("not a TLS record version")
        while True:
            if len(self.buffer) - self._offset < 5:
                return None
            header = self.buffer[self._offset : self._offset + 5]
            if header[0] != _RECORD_HANDSHAKE:
                raise ClientHelloError(f"not a TLS handshake record (first byte {header[0]})")
            if header[1] != 3:
                raise ClientHelloError("not a TLS record version")
            length = (header[3] << 8) | header[4]
            if length == 0 or length > 16384 + 256:
                raise ClientHelloError(f"bad TLS record length {length}")
            end = self._offset + 5 + length
            if len(self.buffer) < end:
                if len(self._handshake) + len(self.buffer) - self._offset > self.max_hello + 5:
                    raise ClientHelloError("ClientHello too large")
                return None
            self._handshake += self.buffer[self._offset + 5 : end]
            self._offset = end
            if len(self._handshake) >= 4:
                if self._handshake[0] != _HANDSHAKE_CLIENT_HELLO:
                    raise ClientHelloError("first handshake message is not a ClientHello")
                size = int.from_bytes(self._handshake[1:4], "big")
                if size > self.max_hello:
                    raise ClientHelloError(f"ClientHello of {size} bytes is too large")
                if len(self._handshake) >= 4 + size:
                    self.hello = parse_client_hello(bytes(self._handshake[4 : 4 + size]))
                    return self.hello

    @property
    def raw(self) -> bytes:
        return bytes(self.buffer)


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ClientHelloError("truncated ClientHello")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def vector(self, length_bytes: int) -> bytes:
        length = self.u8() if length_bytes == 1 else self.u16()
        return self.take(length)

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def parse_client_hello(body: bytes) -> ClientHello:
    """The fields we route on, from a ClientHello handshake body (RFC 8446 4.1.2)."""
    r = _Reader(body)
    if r.take(2)[0] != 3:
        raise ClientHelloError("not a TLS ClientHello version")
    r.take(32)  # random
    if len(r.vector(1)) > 32:
        raise ClientHelloError("bad session id")
    suites = r.vector(2)
    if not suites or len(suites) % 2:
        raise ClientHelloError("bad cipher suites")
    if not r.vector(1):
        raise ClientHelloError("no compression methods")
    server_name: str | None = None
    alpn: tuple[bytes, ...] = ()
    if r.left == 0:
        return ClientHello(None, ())  # no extensions at all (SSLv3-era hello)
    extensions = _Reader(r.vector(2))
    seen: set[int] = set()
    while extensions.left:
        kind = extensions.u16()
        data = extensions.vector(2)
        if kind in seen:
            raise ClientHelloError(f"extension {kind} twice")
        seen.add(kind)
        if kind == _EXT_SERVER_NAME:
            server_name = _server_name(data)
        elif kind == _EXT_ALPN:
            alpn = _alpn(data)
    return ClientHello(server_name, alpn)


def _server_name(data: bytes) -> str | None:
    r = _Reader(data)
    names = _Reader(r.vector(2))
    while names.left:
        kind = names.u8()
        name = names.vector(2)
        if kind == 0:  # host_name
            try:
                text = name.decode("ascii").lower().rstrip(".")
            except UnicodeDecodeError:
                raise ClientHelloError("server name is not ASCII") from None
            if not _HOSTNAME.match(text):
                raise ClientHelloError(f"bad server name {text[:80]!r}")
            return text
    return None


def _alpn(data: bytes) -> tuple[bytes, ...]:
    r = _Reader(data)
    protocols = _Reader(r.vector(2))
    out = []
    while protocols.left:
        proto = protocols.vector(1)
        if not proto:
            raise ClientHelloError("empty ALPN protocol name")
        out.append(proto)
    return tuple(out)
