"""TCP timestamps (RFC 7323): offered in every SYN, used when both ends offer them.

Why a tunnel needs them: a Linux sender (a kernel-TCP relay, a tailnet peer, a client behind
``network = tun``) learns from the echoed timestamp whether the ACK that filled a hole was for
the original segment or for its retransmission. When the original was only late (reordered),
Linux undoes the window reduction at once (Eifel detection, RFC 3522) and widens its
reordering window; without timestamps it can only count D-SACKs, which on a path that
reorders a few segments of every round trip never all come back before the next reduction.
Measured before this module (bench/tcp_wan.py, 20 ms, 3 % of datagrams held 5 ms, Linux's
CUBIC): Linux sending to us 16-42 Mbit/s against 400+ to a Linux receiver.

The receiving half is what matters for that: TS.Recent is taken from a segment only when it
starts at or below the last ACK we sent (RFC 7323 4.3), so the ACK that a late original draws
echoes the original's clock, older than the retransmission. PAWS (5.3) drops a segment whose
clock went backwards (not a RST), with the rate-limited ACK of an out-of-window segment, and
is not applied once TS.Recent is over 24 days old (5.5). As Linux, a segment without the
option on a connection that has it is accepted (RFC 7323 3.2 allows dropping it). Our own
sender does not use the echo yet: RTT samples and undo stay Karn's and D-SACK's.

Our clock: milliseconds (Linux's unit), plus an offset drawn per connection so the value
does not tell how long the host has been up. Once agreed, ``mss`` is the data a segment
carries beside the 12 bytes of the option (Linux's ``mss_cache``). The per-segment checks
(PAWS, the TS.Recent update) are written into ``Connection.segment_arrived``, and the stack
reads a segment that carries the clocks alone without building an Options object: both run
for every segment, and cost 1-2 % of the node's instructions per request as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

from ..owner import Owner
from ..segment import ACK, FIN, RST, SYN, TIMESTAMP, TIMESTAMP_HEAD, TIMESTAMP_LEN
from .sequence import MASK

PAWS_IDLE = 24 * 86400.0  # RFC 7323 5.5: TS.Recent older than this is no longer trusted
OLDER = 1 << 31  # (a - b) & MASK at or above this: a is before b, modulo 2**32


class Timestamps:
    """Timestamps for :class:`~.connection.Connection` (a mixin: one object, one state)."""

    if not TYPE_CHECKING:  # (the type checker would hold the mixin to its empty slots)
        __slots__ = ()  # the attributes are the Connection's (connection.py)

    stack: Owner[Self]
    rcv_nxt: int
    snd_una: int
    snd_wnd: int
    snd_wscale: int
    max_snd_wnd: int
    rto: float
    mss: int

    def _init_timestamps(self, offset: int | None) -> None:
        self.ts_offset = offset  # None: this connection offers no timestamps
        self.ts_ok = False  # both SYNs carried them
        self.ts_recent = 0  # TS.Recent: the peer's clock we echo
        self.ts_recent_time = 0.0  # when it was taken (our time)
        self.last_ack_sent = 0  # Last.ACK.sent: rcv_nxt in the last ACK we sent

    def _tsval(self) -> int:
        return (int(self.stack.now * 1000.0) + (self.ts_offset or 0)) & MASK

    def _syn_timestamp(self) -> tuple[int, int] | None:
        """What our SYN (or SYN-ACK) carries: (TSval, TSecr), or None if it offers none."""
        if self.ts_offset is None:
            return None
        return (self._tsval(), self.ts_recent)

    def _ts_peer_syn(self, options: Any) -> None:
        """The peer's SYN or SYN-ACK: timestamps are on if it carries them and we offer."""
        tsval = options.tsval
        self.ts_ok = tsval is not None and self.ts_offset is not None
        if self.ts_ok:
            self.ts_recent = tsval
            self.ts_recent_time = self.stack.now
            self.mss -= TIMESTAMP_LEN  # as Linux's mss_cache: the data a segment carries

    def _options_for(self, options: bytes, n: int) -> bytes:
        """``options`` if ``n`` bytes of data fit beside them, else the timestamps alone (a
        segment cut before SACK blocks were due: they ride on the ACKs)."""
        if n <= self._payload_room(options):
            return options
        return self._ts_option() if self.ts_ok else b""

    def _payload_room(self, options: bytes) -> int:
        """The data that fits in a segment with ``options`` (``mss`` has room for timestamps)."""
        return self.mss - len(options) + (TIMESTAMP_LEN if self.ts_ok else 0)

    def _ts_option(self) -> bytes:
        tsval = (int(self.stack.now * 1000.0) + (self.ts_offset or 0)) & MASK  # _tsval, inlined
        return TIMESTAMP.pack(TIMESTAMP_HEAD, tsval, self.ts_recent)

    def _paws_rejects(
        self,
        tsval: int,
        seq_w: int,
        ack_w: int,
        flags: int,
        window: int,
        payload: bytes,
        now: float,
    ) -> bool:
        """RFC 7323 5.3 R1, for a segment whose clock is older than TS.Recent: an old
        duplicate, unless it is older by one tick only (Linux's TCP_PAWS_WINDOW), a RST (taken
        on its sequence number), TS.Recent is over 24 days old (5.5: no longer trusted; the
        segment renews it), or a pure ACK that a reordering path delivered late: in sequence,
        its clock within an RTO of TS.Recent in milliseconds, and either a duplicate that does
        not move the window (Linux's ``tcp_disordered_ack``) or behind ``snd_una`` by at most
        a window, overtaken by newer ACKs. Its SACK blocks still count, its window does not
        (``snd_wl2``). Linux drops the second kind; it tells a spurious retransmission by the
        clock an ACK echoes (Eifel), ours by D-SACK only, and the D-SACK often rides on such
        an ACK: dropped, a retransmission in slow start that reordering caused stayed a cut
        window for the rest of a transfer (45 Mbit/s where the path carried 800)."""
        if (self.ts_recent - tsval) & MASK <= 1 or flags & RST:
            return False
        if now - self.ts_recent_time > PAWS_IDLE:
            return False
        behind = (self.snd_una - ack_w) & MASK  # 0: a duplicate; below OLDER: overtaken
        if (
            not payload
            and flags & (SYN | FIN | ACK) == ACK
            and seq_w == self.rcv_nxt & MASK
            and (self.ts_recent - tsval) & MASK <= self.rto * 1000.0
            and (
                (behind == 0 and window << self.snd_wscale == self.snd_wnd)
                or 0 < behind <= max(self.max_snd_wnd, 0xFFFF)
            )
        ):
            return False
        self.stack.count("tcp_paws_drops")
        return True
