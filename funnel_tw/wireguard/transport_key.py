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
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .replay import PyReplayFilter

_COUNTER = struct.Struct("<Q")
_NONCE_PREFIX = b"\x00\x00\x00\x00"
_PADDING = bytes(16)
_HEAD = 16  # message type, receiver index, counter
_TAG = 16
_TRANSPORT_HEAD = struct.Struct("<IIQ")
_TRANSPORT = 4

#: open_run's answer: (end, packets, authenticated, data, size, source, address, uniform,
#: failed_open, replayed, bad_inner); see PyTransportKey.open_run.
RunResult = tuple[int, list[bytes], int, int, int, Any, "bytes | None", bool, int, int, int]


class ReplayFilterType(Protocol):
    def validate(self, counter: int, limit: int, /) -> bool: ...


class TransportKeyType(Protocol):
    def seal(self, header: bytes, counter: int, packet: bytes, mtu: int, /) -> bytes: ...
    def seal_run(
        self,
        header: bytes,
        counter: int,
        packets: list[bytes],
        mtu: int,
        endpoint: Any,
        out: list[tuple[bytes, Any]],
        /,
    ) -> int: ...
    def open(self, message: bytes, /) -> bytes | None: ...
    def open_run(
        self,
        batch: Sequence[tuple[bytes, Any]],
        start: int,
        stop: int,
        receiver: int,
        replay: Any,
        limit: int,
        /,
    ) -> RunResult: ...


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

    def seal_run(
        self,
        header: bytes,
        counter: int,
        packets: list[bytes],
        mtu: int,
        endpoint: Any,
        out: list[tuple[bytes, Any]],
        /,
    ) -> int:
        """``seal(header, counter + i, packets[i], mtu)`` for each packet (non-empty), each
        appended to ``out`` as ``(message, endpoint)``; returns the messages' bytes. The C one
        saves the call and the tuple per packet of the send path (docs/performance.md,
        lever 23). Nothing is appended if a packet is refused."""
        seal = self.seal
        sealed = []
        total = 0
        for i, packet in enumerate(packets):
            if not packet:
                raise ValueError("seal_run: packets are non-empty bytes")
            message = seal(header, counter + i, packet, mtu)
            total += len(message)
            sealed.append((message, endpoint))
        out.extend(sealed)
        return total

    def open(self, message: bytes, /) -> bytes | None:
        """The plaintext of a whole transport message, or None if it does not authenticate."""
        if len(message) < _HEAD + _TAG:
            return None
        try:
            return self._aead.decrypt(_NONCE_PREFIX + message[8:16], message[16:], None)
        except InvalidTag:
            return None

    def open_run(
        self,
        batch: Sequence[tuple[bytes, Any]],
        start: int,
        stop: int,
        receiver: int,
        replay: Any,
        limit: int,
        /,
    ) -> RunResult:
        """The receive path's loop for one keypair, over ``batch[start:stop]`` (pairs of
        message and source), in one call: the C one saves the per-datagram Python of
        receive.py (docs/performance.md, lever 21).

        From ``start``, while a message is a transport message of at least 32 bytes for
        ``receiver`` with a counter below ``limit``: open it (``failed_open`` counts those
        that do not authenticate) and pass its counter through ``replay`` (``replayed``
        counts those refused). ``authenticated`` counts the rest, ``size`` sums their bytes
        and ``source`` is the last one's. Of those with a plaintext (``data``), each must be
        an IPv4 or IPv6 packet whose total length fits (else ``bad_inner``); it is cut to
        that length and appended to ``packets``. ``address`` is the first packet's inner
        source address, ``uniform`` whether all have that one, so the caller checks the
        peer's allowed IPs once. ``end`` is the first message not taken, or ``stop``.
        """
        packets: list[bytes] = []
        authenticated = data = size = failed = replayed = bad = 0
        source: Any = None
        first: bytes | None = None
        uniform = True
        i = max(start, 0)
        stop = min(stop, len(batch))
        while i < stop:
            message, origin = batch[i]
            n = len(message)
            if n < _HEAD + _TAG:
                break
            kind, index, counter = _TRANSPORT_HEAD.unpack_from(message)
            if kind != _TRANSPORT or index != receiver or counter >= limit:
                break
            i += 1
            plain = self.open(message)
            if plain is None:
                failed += 1
                continue
            if not replay.validate(counter, limit):
                replayed += 1
                continue
            authenticated += 1
            size += n
            source = origin
            if not plain:
                continue  # a keepalive
            data += 1
            version = plain[0] >> 4
            if version == 4 and len(plain) >= 20:
                total = (plain[2] << 8) | plain[3]
                address = plain[12:16]
            elif version == 6 and len(plain) >= 40:
                total = 40 + ((plain[4] << 8) | plain[5])
                address = plain[8:24]
            else:
                bad += 1
                continue
            if total > len(plain) or total < 20:
                bad += 1
                continue
            if first is None:
                first = address
            elif address != first:
                uniform = False
            packets.append(plain if total == len(plain) else plain[:total])
        return (
            i,
            packets,
            authenticated,
            data,
            size,
            source,
            first,
            uniform,
            failed,
            replayed,
            bad,
        )


def _load() -> tuple[Callable[[bytes], TransportKeyType], Callable[[], ReplayFilterType], str]:
    if os.environ.get("FUNNEL_TW_PURE_PYTHON") == "1":
        return PyTransportKey, PyReplayFilter, "python (FUNNEL_TW_PURE_PYTHON=1)"
    try:
        from ._transport import OPENSSL_VERSION
        from ._transport import ReplayFilter as CReplayFilter
        from ._transport import TransportKey as CTransportKey
    except ImportError:
        return PyTransportKey, PyReplayFilter, "python (the C extension is not built)"
    return CTransportKey, CReplayFilter, f"C ({OPENSSL_VERSION})"


#: ``TransportKey(key)``: the C one when built and not turned off, else PyTransportKey.
TransportKey: Callable[[bytes], TransportKeyType]
#: ``ReplayFilter()``: the window ``TransportKey.open_run`` takes (C with the C key, a
#: C key's ``open_run`` refuses any other).
ReplayFilter: Callable[[], ReplayFilterType]
#: Which one it is, for status and logs.
IMPLEMENTATION: str
TransportKey, ReplayFilter, IMPLEMENTATION = _load()
