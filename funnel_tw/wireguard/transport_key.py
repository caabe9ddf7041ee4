"""One direction's key of a session, sealing and opening whole transport messages.

A C extension on the system's OpenSSL when it is built (``_transport.c``), else the
``cryptography`` package. The C one frames the message (header, counter, padding) and runs the
cipher in one call with a cipher context set up once per key: sealing a 1,280-byte packet costs
~1.1 us in C against ~2.0 us here (docs/performance.md, lever 13). ``pip install`` builds it
when the machine has a compiler and OpenSSL's headers (setup.py, ``optional``);
``FUNNEL_TW_PURE_PYTHON=1`` keeps this module's code even when it is built, for side-by-side
benchmarks and the tests of both.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

_COUNTER = struct.Struct("<Q")
_NONCE_PREFIX = b"\x00\x00\x00\x00"
_PADDING = bytes(16)
_HEAD = 16  # message type, receiver index, counter
_TAG = 16


class TransportKeyType(Protocol):
    def seal(self, header: bytes, counter: int, packet: bytes, mtu: int, /) -> bytes: ...
    def open(self, message: bytes, /) -> bytes | None: ...


def padding(size: int, mtu: int) -> int:
    """Zero bytes after a packet of ``size`` (wireguard-go's calculatePaddingSize): up to a
    multiple of 16, never past the MTU."""
    last = size
    if mtu == 0:
        return ((last + 15) & ~15) - last
    if last > mtu:
        last %= mtu
    padded = (last + 15) & ~15
    if padded > mtu:
        padded = mtu
    return padded - last


class PyTransportKey:
    """The pure-Python TransportKey: the same messages, through ``cryptography``."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("TransportKey: the key is 32 bytes")
        self._aead = ChaCha20Poly1305(key)

    def seal(self, header: bytes, counter: int, packet: bytes, mtu: int, /) -> bytes:
        """The whole transport message: ``header`` (type and receiver index, 8 bytes), the
        counter, and ``packet`` padded and encrypted with its tag."""
        if len(header) != 8:
            raise ValueError("seal: the header is 8 bytes")
        if mtu < 0:
            raise ValueError("seal: mtu must be >= 0")
        if not 0 <= counter < 1 << 64:
            raise OverflowError("seal: the counter is 64 bits")
        if packet:
            pad = padding(len(packet), mtu)
            if pad:
                packet = packet + _PADDING[:pad]
        counter_bytes = _COUNTER.pack(counter)
        sealed = self._aead.encrypt(_NONCE_PREFIX + counter_bytes, packet, None)
        return header + counter_bytes + sealed

    def open(self, message: bytes, /) -> bytes | None:
        """The plaintext of a whole transport message, or None if it does not authenticate."""
        if len(message) < _HEAD + _TAG:
            return None
        try:
            return self._aead.decrypt(_NONCE_PREFIX + message[8:16], message[16:], None)
        except InvalidTag:
            return None


def _load() -> tuple[Callable[[bytes], TransportKeyType], str]:
    if os.environ.get("FUNNEL_TW_PURE_PYTHON") == "1":
        return PyTransportKey, "python (FUNNEL_TW_PURE_PYTHON=1)"
    try:
        from ._transport import OPENSSL_VERSION
        from ._transport import TransportKey as CTransportKey
    except ImportError:
        return PyTransportKey, "python (the C extension is not built)"
    return CTransportKey, f"C ({OPENSSL_VERSION})"


#: ``TransportKey(key)``: the C one when built and not turned off, else PyTransportKey.
TransportKey: Callable[[bytes], TransportKeyType]
#: Which one it is, for status and logs.
IMPLEMENTATION: str
TransportKey, IMPLEMENTATION = _load()
