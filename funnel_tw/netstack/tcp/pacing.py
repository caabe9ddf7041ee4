"""Pacing: a connection sends at a rate derived from its window, not a window at line rate.

Without it a whole window leaves in one burst and lands in the peer's UDP socket buffer
(wireguard-go's is 208 KiB) faster than it is read: drops, then recovery. Linux paces every
flow at ``cwnd / srtt`` times 2 in slow start (while cwnd < ssthresh / 2) and 1.2 after, and
so does this. Packets go in quanta of about a millisecond of data (at least two segments, at
most 64 KiB): a token bucket two quanta deep (four with BBR) fills at the pacing rate, a
segment may leave while it holds tokens, and once it is empty the connection waits
(``t_pace``) until a whole quantum has come in. So a timer that fires late (a busy reactor)
loses nothing up to a quantum (three with BBR), and the overlay's GSO batches are a quantum
each. With BBR (``bbr.py``) the rate is its model's (a gain over the bottleneck bandwidth),
the quanta the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .bbr import Bbr
from .resume import UNVALIDATED

PACING_SS_RATIO = 2.0
PACING_CA_RATIO = 1.2
PACING_QUANTUM = 0.001  # seconds of data released at once
PACING_MAX_QUANTUM = 64 * 1024
PACING_DEPTH = 2  # quanta the token bucket holds ...
# ... with BBR: its rate is what it measured, so the rate a late-waking reactor loses (beyond
# the bucket) is missing from the next measurement too, and a CPU-bound sender's estimate
# settles below what the path carries (ours -> ours at 20 ms, docs/netstack.md "BBR")
BBR_PACING_DEPTH = 4


class Pacing:
    """The pacer of :class:`~.connection.Connection` (a mixin: one object, one state)."""

    if not TYPE_CHECKING:  # (the type checker would hold the mixin to its empty slots)
        __slots__ = ()  # the attributes are the Connection's (connection.py)

    mss: int
    cwnd: int
    ssthresh: int
    srtt: float | None
    cr_phase: int
    bbr: Bbr | None

    def _init_pacing(self) -> None:
        self.pacing = True  # False: a window at once (tests that want exact send times)
        self.pace_rate = 0.0  # bytes per second; 0 until a round trip is known: unpaced
        self.pace_tokens = 0.0
        self.pace_depth = 0.0
        self.pace_stamp = 0.0
        self.t_pace: float | None = None  # a quantum is in the bucket again

    def _pace_start(self, now: float, in_flight: int) -> None:
        """Before sending: the rate for the current window, and the tokens earned since."""
        srtt = self.srtt
        if not srtt or not self.pacing:
            self.pace_rate = 0.0
            return
        if self.bbr is not None:
            rate = self.bbr.pacing_rate(self.cwnd, srtt)
        else:
            ratio = PACING_SS_RATIO if self.cwnd < self.ssthresh // 2 else PACING_CA_RATIO
            if self.cr_phase == UNVALIDATED:
                ratio = 1.0  # a jumped window goes out over one round trip (RFC 9959 3.3)
            rate = ratio * max(self.cwnd, in_flight) / srtt
        quantum = min(max(rate * PACING_QUANTUM, 2.0 * self.mss), float(PACING_MAX_QUANTUM))
        depth = self._pace_quanta() * quantum
        if self.pace_rate == 0.0:
            self.pace_tokens = depth  # the first flight after the handshake
        else:
            self.pace_tokens = min(self.pace_tokens + (now - self.pace_stamp) * rate, depth)
        self.pace_stamp = now
        self.pace_rate = rate
        self.pace_depth = depth

    def _pace_blocked(self, now: float) -> bool:
        """No tokens left: wait until a quantum has come in (True), or go on (False)."""
        if self.pace_rate == 0.0 or self.pace_tokens > 0:
            return False
        self.t_pace = now + (self._pace_quantum() - self.pace_tokens) / self.pace_rate
        return True

    def _pace_quantum(self) -> float:
        """The burst the pacer releases at once."""
        return self.pace_depth / self._pace_quanta()

    def _pace_quanta(self) -> int:
        """The quanta the token bucket holds: two, or four with BBR."""
        return PACING_DEPTH if self.bbr is None else BBR_PACING_DEPTH
