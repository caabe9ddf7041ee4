"""Sequence-number arithmetic: 32-bit wire values, unbounded integers inside.

A connection keeps ``snd_una``, ``rcv_nxt``... as plain integers; a wire value is unwrapped to
the integer nearest the value expected, so every comparison elsewhere is plain integer
arithmetic and wrap-around is handled here and where values go back on the wire (``& MASK``).
"""

from __future__ import annotations

MASK = 0xFFFFFFFF
HALF = 0x80000000


def unwrap(wire: int, near: int) -> int:
    """The integer congruent to ``wire`` mod 2**32 that is nearest to ``near``."""
    delta = (wire - near) & MASK
    if delta >= HALF:
        delta -= 1 << 32
    return near + delta
