"""The Internet checksum (RFC 1071): a C extension when it is built, else one big-integer
reduction. The same extension builds a TCP segment's whole IP packet (``tcp_packet``, used by
segment.py's PacketBuilder: ~0.14 us against ~1.2 in Python), a burst of them in one call
(``tcp_run``: the send path's new segments), and reads an arriving one (``tcp4_fields``,
segment.py).

Every segment our TCP sends is checksummed over its whole payload, so this is on the send
path's per-packet bill: the pure-Python sum of a 1,368-byte payload costs ~3.5 us, the C one
~0.1 us (docs/performance.md, "Compiled fast path"). ``pip install`` builds
``_checksum.c`` with the machine's compiler when there is one (setup.py, ``optional``);
``FUNNEL_TW_PURE_PYTHON=1`` in the environment keeps the pure-Python code even when it is
built, for the benchmarks' side-by-side runs and the tests of both.

The pure-Python sum: the ones'-complement sum of 16-bit words equals the buffer read as one
big-endian integer modulo 0xFFFF (because 2**16 == 1 mod 0xFFFF), which CPython computes in C.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

Buffer = bytes | bytearray | memoryview


class OnesSum(Protocol):
    def __call__(self, data: Buffer, start: int = 0, /) -> int: ...


def py_ones_sum(data: Buffer, start: int = 0, /) -> int:
    """The folded 16-bit ones'-complement sum of ``data`` (an odd length padded with a zero
    byte) plus ``start``, a previous sum: 0xFFFF rather than 0 when anything was nonzero."""
    total = ((int.from_bytes(data, "big") << (8 * (len(data) & 1))) + start) % 0xFFFF
    if total == 0 and (start or any(data)):
        return 0xFFFF
    return total


def _load() -> tuple[
    OnesSum,
    Callable[..., bytes] | None,
    Callable[..., list[bytes]] | None,
    Callable[..., Any] | None,
    str,
]:
    if os.environ.get("FUNNEL_TW_PURE_PYTHON") == "1":
        return py_ones_sum, None, None, None, "python (FUNNEL_TW_PURE_PYTHON=1)"
    try:
        from ._checksum import ones_sum as c_ones_sum
        from ._checksum import tcp4_fields as c_tcp4_fields
        from ._checksum import tcp_packet as c_tcp_packet
        from ._checksum import tcp_run as c_tcp_run
    except ImportError:
        return py_ones_sum, None, None, None, "python (the C extension is not built)"
    return c_ones_sum, c_tcp_packet, c_tcp_run, c_tcp4_fields, "C"


#: ``ones_sum(data, start=0)``: the C one when built and not turned off, else py_ones_sum.
ones_sum: OnesSum
#: The C builder of a TCP segment's IP packet (segment.py's PacketBuilder), or None.
tcp_packet: Callable[..., bytes] | None  # its signature: _checksum.pyi
#: The C builder of a burst of such packets (PacketBuilder.build_run), or None.
tcp_run: Callable[..., list[bytes]] | None
#: The C reader of an arriving IPv4 TCP packet (segment.py's tcp4_fields), or None.
tcp4_fields: Callable[..., Any] | None
#: Which one ``ones_sum`` is, for status and logs.
IMPLEMENTATION: str
ones_sum, tcp_packet, tcp_run, tcp4_fields, IMPLEMENTATION = _load()


def checksum(*parts: bytes) -> int:
    """The checksum field value for the concatenation of ``parts`` (each of even length but
    the last)."""
    return ~ones_sum(b"".join(parts)) & 0xFFFF


def verify(*parts: bytes) -> bool:
    """True if the parts, checksum field included, sum to all ones."""
    return ones_sum(b"".join(parts)) == 0xFFFF
