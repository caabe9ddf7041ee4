"""The anti-replay window of RFC 6479: 128 blocks of 64 bits, 8128 counters of history.

The window is checked only after a packet has been authenticated, so a forged counter can
never move it. This is the pure-Python one; ``_transport.c`` has the same window in C, which
its ``open_run`` updates, and transport_key.py picks the pair (``ReplayFilter``).
"""

from __future__ import annotations

_BLOCK_BITS = 64
_BLOCK_LOG = 6
_BLOCKS = 128
WINDOW_SIZE = (_BLOCKS - 1) * _BLOCK_BITS  # 8128


class PyReplayFilter:
    __slots__ = ("_blocks", "_last")

    def __init__(self) -> None:
        self._last = 0
        self._blocks = [0] * _BLOCKS

    def validate(self, counter: int, limit: int) -> bool:
        """True (and remember it) if ``counter`` is below ``limit`` and not seen before."""
        if counter >= limit:
            return False
        block = counter >> _BLOCK_LOG
        last = self._last
        blocks = self._blocks
        if counter > last:
            current = last >> _BLOCK_LOG
            if block != current:  # (most packets stay in the newest block: nothing to clear)
                if block - current >= _BLOCKS:
                    for i in range(_BLOCKS):
                        blocks[i] = 0
                else:
                    for i in range(current + 1, block + 1):
                        blocks[i % _BLOCKS] = 0
            self._last = counter
        elif last - counter > WINDOW_SIZE:
            return False
        index = block % _BLOCKS
        bit = 1 << (counter & (_BLOCK_BITS - 1))
        old = blocks[index]
        if old & bit:
            return False
        blocks[index] = old | bit
        return True
