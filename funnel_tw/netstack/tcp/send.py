"""The send side of a connection: the send buffer, the SACK scoreboard, congestion control.

Loss recovery is SACK-based (RFC 6675: a hole with three segments' worth of SACKed data above
it is lost) with NewReno behaviour when the peer does not do SACK; congestion control is
NewReno with appropriate byte counting. ``_send_data`` is what the windows let out at a flush;
``_new_ack`` is what an acknowledgement does to the buffer, the scoreboard and ``cwnd``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

from ..events import DRAINED
from ..owner import Owner
from ..segment import ACK, FIN, PSH
from .sequence import unwrap
from .state import CAN_SEND, State

DUP_THRESH = 3
SEND_BUFFER_LOW = 1 << 20  # default: DRAINED fires when unsent+unacked data falls below this


class SendSide:
    """The send half of :class:`~.connection.Connection` (a mixin: one object, one state)."""

    # What this part uses of the rest of the connection, declared for the type checker only.
    # Methods that hand ``self`` to the owner say ``self: Self``: the owner expects the
    # concrete Connection, which this module cannot name (it is built from this one).
    stack: Owner[Self]
    state: State
    mss: int
    rto: float
    rtt_seq: int | None
    rtt_time: float
    retransmits: int
    t_rto: float | None
    t_persist: float | None
    if TYPE_CHECKING:

        def _send_segment(
            self, seq: int, flags: int, payload: bytes = b"", options: bytes = b""
        ) -> None: ...
        def _ack_options(self) -> bytes: ...
        def _fin_fits(self) -> bool: ...
        def _fin_sent(self, seq: int) -> None: ...
        def _our_fin_acked(self, now: float) -> None: ...
        def _sample_rtt(self, ack: int, now: float) -> None: ...
        def _computed_rto(self) -> float: ...
        def _progress(self, now: float) -> None: ...

    def _init_send(self, iss: int) -> None:
        self.iss = iss
        self.snd_una = iss
        self.snd_nxt = iss
        self.snd_max = iss
        self.snd_wnd = 1
        self.snd_wl1 = 0
        self.snd_wl2 = 0
        self.max_snd_wnd = 0
        self.snd_wscale = 0
        self.sndbuf = bytearray()
        self.buf_off = 0  # sndbuf[buf_off] is the byte at sequence number buf_seq
        self.buf_seq = iss + 1
        self.fin_queued = False
        self.fin_seq: int | None = None  # sequence number of our FIN once it has one
        self.drained_pending = False
        self.send_low_water = SEND_BUFFER_LOW
        # congestion control and recovery
        self.cwnd = 10 * self.mss
        self.ssthresh = 1 << 30
        self.ca_acked = 0
        self.dupacks = 0
        self.in_recovery = False
        self.recover = iss
        self.rexmit_next = iss
        self.sacked: list[list[int]] = []  # disjoint sorted [start, end) above snd_una
        self.sacked_bytes = 0
        self.sack_ok = False

    # --- application interface -----------------------------------------------------------------

    @property
    def send_buffered(self) -> int:
        """Bytes written by the application and not yet acknowledged."""
        return len(self.sndbuf) - self.buf_off

    def send(self: Self, data: bytes) -> None:
        """Queue ``data``; it goes out at the Stack's next flush."""
        if self.state not in CAN_SEND and self.state not in (State.SYN_SENT, State.SYN_RECEIVED):
            return
        if self.fin_queued or not data:
            return
        self.sndbuf += data
        self.stack.mark_output(self)

    # --- the buffer and the scoreboard ---------------------------------------------------------

    def _data_end(self) -> int:
        return self.buf_seq + len(self.sndbuf) - self.buf_off

    def _pipe(self) -> int:
        """RFC 6675 pipe: bytes believed in flight.

        Counted up to ``snd_nxt``, not ``snd_max``: after a timeout ``snd_nxt`` goes back to
        ``snd_una`` and everything beyond it is presumed lost.
        """
        nxt = self.snd_nxt
        if nxt >= self.snd_max:
            sacked = self.sacked_bytes
        else:
            sacked = sum(min(e, nxt) - s for s, e in self.sacked if s < nxt)
        flight = nxt - self.snd_una - sacked
        if self.in_recovery:
            flight -= self._lost_bytes_after(self.rexmit_next)
        return max(flight, 0)

    def _holes(self) -> list[tuple[int, int]]:
        holes = []
        point = self.snd_una
        for start, end in self.sacked:
            if start > point:
                holes.append((point, start))
            point = max(point, end)
        return holes

    def _lost_bytes_after(self, point: int) -> int:
        lost = 0
        for start, end in self._next_lost_holes():
            if end <= point:
                continue
            lost += end - max(start, point)
        return lost

    def _next_lost_holes(self) -> list[tuple[int, int]]:
        """Holes deemed lost: three segments' worth SACKed above them (or NewReno's first)."""
        threshold = DUP_THRESH * self.mss
        if not self.sacked:
            if self.in_recovery:
                return [(self.snd_una, min(self.snd_una + self.mss, self.snd_max))]
            return []
        lost = []
        above = self.sacked_bytes
        point = self.snd_una
        for start, end in self.sacked:
            if start > point and (above >= threshold or point == self.snd_una):
                lost.append((point, start))
            above -= end - start
            point = max(point, end)
        return lost

    def _update_scoreboard(self, blocks: list[tuple[int, int]]) -> None:
        changed = False
        for left_w, right_w in blocks:
            left = unwrap(left_w, self.snd_una)
            right = unwrap(right_w, self.snd_una)
            if not (self.snd_una <= left < right <= self.snd_max):
                continue
            self._sack_add(left, right)
            changed = True
        if changed:
            self.sacked_bytes = sum(e - s for s, e in self.sacked)

    def _sack_add(self, left: int, right: int) -> None:
        merged: list[list[int]] = []
        placed = False
        for block in self.sacked:
            if block[1] < left:
                merged.append(block)
            elif right < block[0]:
                if not placed:
                    merged.append([left, right])
                    placed = True
                merged.append(block)
            else:
                left, right = min(left, block[0]), max(right, block[1])
        if not placed:
            merged.append([left, right])
        self.sacked = merged

    # --- output --------------------------------------------------------------------------------

    def _segment_bytes(self, seq: int, n: int) -> bytes:
        offset = self.buf_off + (seq - self.buf_seq)
        return bytes(self.sndbuf[offset : offset + n])

    def _emit_data(self, seq: int, n: int, now: float) -> None:
        payload = self._segment_bytes(seq, n)
        flags = ACK
        end = seq + n
        if end == self._data_end():
            flags |= PSH
        if self.fin_queued and end == self._data_end() and self._fin_fits():
            flags |= FIN
            self._fin_sent(end)
            end += 1
        self._send_segment(seq, flags, payload)
        if end > self.snd_max:
            if self.rtt_seq is None and not self.in_recovery:
                self.rtt_seq = seq
                self.rtt_time = now
            self.snd_max = end
        if self.t_rto is None:
            self.t_rto = now + self.rto

    def _send_data(self, now: float) -> bool:
        sent = False
        # SACK blocks ride on data segments too: leave room for them within the MTU
        mss = self.mss - len(self._ack_options())
        # 1. retransmit lost holes during recovery
        if self.in_recovery:
            pipe = self._pipe()
            for start, end in self._next_lost_holes():
                if pipe >= self.cwnd:
                    break
                point = max(start, self.rexmit_next)
                while point < end and pipe < self.cwnd:
                    n = min(mss, end - point)
                    if self.fin_seq is not None and point + n > self.fin_seq:
                        n = self.fin_seq - point
                    if n <= 0:
                        break
                    self.stack.count("tcp_retransmitted_segments")
                    self._emit_data(point, n, now)
                    point += n
                    pipe += n
                    sent = True
                self.rexmit_next = max(self.rexmit_next, point)
            if pipe >= self.cwnd:
                return sent
        # 2. new data (or go-back-N after a timeout) within both windows
        data_end = self._data_end()
        while True:
            flight = self._pipe()
            window_edge = self.snd_una + self.snd_wnd
            budget = min(window_edge - self.snd_nxt, self.cwnd - flight)
            if self.snd_nxt < data_end:
                # skip what the peer already holds (after a timeout)
                for start, end in self.sacked:
                    if start <= self.snd_nxt < end:
                        self.snd_nxt = end
                if self.snd_nxt >= data_end:
                    continue
                n = min(mss, data_end - self.snd_nxt)
                if budget < n:
                    if budget <= 0 or (budget < mss and self.snd_max > self.snd_una):
                        break  # wait for the window rather than send a sliver
                    n = budget
                for start, _ in self.sacked:
                    if self.snd_nxt < start < self.snd_nxt + n:
                        n = start - self.snd_nxt
                        break
                if self.snd_nxt < self.snd_max:
                    self.stack.count("tcp_retransmitted_segments")
                self._emit_data(self.snd_nxt, n, now)
                self.snd_nxt += n + (1 if self.fin_seq == self.snd_nxt + n else 0)
                sent = True
                continue
            if (
                self.fin_queued
                and self.snd_nxt == data_end
                and (self.fin_seq is None or self.snd_nxt <= self.fin_seq)
                and self._fin_fits()
            ):
                self._fin_sent(data_end)
                self._send_segment(data_end, FIN | ACK)
                self.snd_nxt = data_end + 1
                self.snd_max = max(self.snd_max, self.snd_nxt)
                if self.t_rto is None:
                    self.t_rto = now + self.rto
                sent = True
            break
        # 3. zero window: probe until it opens
        if (
            self.snd_wnd == 0
            and data_end > self.snd_nxt
            and self.snd_max == self.snd_una
            and self.t_persist is None
        ):
            self.t_persist = now + self.rto
        return sent

    # --- acknowledgements ----------------------------------------------------------------------

    def _new_ack(self: Self, ack: int, now: float) -> None:
        acked = ack - self.snd_una
        self._sample_rtt(ack, now)
        data_acked = acked
        if self.fin_seq is not None and ack > self.fin_seq:
            data_acked -= 1
        if data_acked > 0:
            self.buf_off += data_acked
            self.buf_seq += data_acked
            if self.buf_off >= 65536 and self.buf_off * 2 >= len(self.sndbuf):
                del self.sndbuf[: self.buf_off]
                self.buf_off = 0
        self.snd_una = ack
        if self.snd_nxt < ack:
            self.snd_nxt = ack
        if self.rexmit_next < ack:
            self.rexmit_next = ack
        if self.sacked:
            while self.sacked and self.sacked[0][1] <= ack:
                self.sacked.pop(0)
            if self.sacked and self.sacked[0][0] < ack:
                self.sacked[0][0] = ack
            self.sacked_bytes = sum(e - s for s, e in self.sacked)
        self.retransmits = 0
        self.rto = self._computed_rto()
        self.dupacks = 0
        # congestion control
        mss = self.mss
        if self.in_recovery:
            if ack >= self.recover:
                self.in_recovery = False
                self.cwnd = max(min(self.ssthresh, self.snd_max - self.snd_una + mss), 2 * mss)
            elif not self.sack_ok:
                # NewReno partial ACK: the next segment is lost too; deflate by what was acked
                self.rexmit_next = self.snd_una
                self.cwnd = max(self.cwnd - acked + mss, mss)
        elif self.cwnd < self.ssthresh:
            # slow start counts every byte a (possibly stretch) ACK covers, at most doubling
            self.cwnd = min(self.cwnd + min(acked, self.cwnd), max(self.ssthresh, 2 * mss))
        else:
            self.ca_acked += acked
            if self.ca_acked >= self.cwnd:
                self.ca_acked -= self.cwnd
                self.cwnd += mss
        # timers
        if self.snd_max > self.snd_una:
            self.t_rto = now + self.rto
        else:
            self.t_rto = None
        if self.fin_seq is not None and ack > self.fin_seq:
            self._our_fin_acked(now)
        self._progress(now)
        if (
            self.drained_pending
            and self.send_buffered < self.send_low_water
            and self.state in CAN_SEND
        ):
            self.drained_pending = False
            self.stack.emit(DRAINED, self, None)
        self.stack.mark_output(self)

    def _duplicate_ack(self: Self, now: float) -> None:
        self.dupacks += 1
        if self.in_recovery:
            if not self.sack_ok:
                self.cwnd += self.mss  # NewReno inflation
            self.stack.mark_output(self)
            return
        if self.dupacks >= DUP_THRESH or self.sacked_bytes >= DUP_THRESH * self.mss:
            self._enter_recovery()

    def _enter_recovery(self: Self) -> None:
        self.stack.count("tcp_fast_retransmits")
        flight = self.snd_max - self.snd_una
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.in_recovery = True
        self.recover = self.snd_max
        self.rexmit_next = self.snd_una
        self.cwnd = self.ssthresh if self.sack_ok else self.ssthresh + DUP_THRESH * self.mss
        self.rtt_seq = None
        self.stack.mark_output(self)
