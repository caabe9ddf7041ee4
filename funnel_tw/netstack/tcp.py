"""One TCP connection (RFC 9293), sans-IO.

Sequence numbers are kept as unbounded integers internally (``snd_una``, ``rcv_nxt``...): a
32-bit wire value is unwrapped to the integer nearest the value expected, so every comparison
below is plain integer arithmetic and wrap-around is handled in two places only.

Loss recovery is SACK-based (RFC 6675: a hole with three segments' worth of SACKed data above
it is lost) with NewReno behaviour when the peer does not do SACK; congestion control is
NewReno with appropriate byte counting; the retransmission timer follows RFC 6298.

The owning :class:`~funnel_tw.netstack.stack.Stack` feeds segments in, asks for output at
``flush`` time and runs the timers; it also collects the connection's events for the
application (data, end of stream, closed, drained).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from .segment import ACK, FIN, PSH, RST, SYN, PacketBuilder, sack_option, syn_options

if TYPE_CHECKING:
    from .stack import Stack

MASK = 0xFFFFFFFF
HALF = 0x80000000


def unwrap(wire: int, near: int) -> int:
    """The integer congruent to ``wire`` mod 2**32 that is nearest to ``near``."""
    delta = (wire - near) & MASK
    if delta >= HALF:
        delta -= 1 << 32
    return near + delta


class State(enum.Enum):
    SYN_SENT = "SYN-SENT"
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSING = "CLOSING"
    TIME_WAIT = "TIME-WAIT"
    CLOSE_WAIT = "CLOSE-WAIT"
    LAST_ACK = "LAST-ACK"
    CLOSED = "CLOSED"


_SYNCHRONIZED = {
    State.ESTABLISHED,
    State.FIN_WAIT_1,
    State.FIN_WAIT_2,
    State.CLOSING,
    State.TIME_WAIT,
    State.CLOSE_WAIT,
    State.LAST_ACK,
}
_CAN_SEND = {State.ESTABLISHED, State.CLOSE_WAIT}
_CAN_RECEIVE = {State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2}

# events for the application, collected by the Stack
CONNECTED, DATA, EOF, CLOSED, DRAINED, ACCEPTED = range(6)

MIN_RTO = 0.2
MAX_RTO = 60.0
INITIAL_RTO = 1.0
DELAYED_ACK = 0.02
MAX_RETRANSMITS = 12
MAX_SYN_RETRANSMITS = 5
TIME_WAIT_SECONDS = 30.0
DUP_THRESH = 3
RECEIVE_WSCALE = 7  # offered window scale: windows up to 8 MiB
SEND_BUFFER_LOW = 1 << 20  # default: DRAINED fires when unsent+unacked data falls below this
MAX_OOO_SEGMENTS = 1024
OUT_OF_WINDOW_ACK_INTERVAL = 0.5
ACK_EVERY_SEGMENTS = 32  # within one batch, ACK at least this often (the rest at flush)


class Connection:
    """A TCP connection's control block and its send and receive buffers."""

    def __init__(
        self,
        stack: Stack,
        local: tuple[bytes, int],
        remote: tuple[bytes, int],
        *,
        iss: int,
        now: float,
        receive_buffer: int,
        mss: int,
    ) -> None:
        self.stack = stack
        self.local = local
        self.remote = remote
        self.key = (local[0], local[1], remote[0], remote[1])
        self.builder = PacketBuilder(local[0], remote[0])
        self.state = State.CLOSED
        self.created = now
        self.close_reason: str | None = None
        self.half_open = False  # a passive open not yet accepted (counts against the backlog)
        self.close_reported = False
        self.app: Any = None  # set by the layer above; the Stack never looks at it
        # send side
        self.iss = iss
        self.snd_una = iss
        self.snd_nxt = iss
        self.snd_max = iss
        self.snd_wnd = 1
        self.snd_wl1 = 0
        self.snd_wl2 = 0
        self.max_snd_wnd = 0
        self.snd_wscale = 0
        self.local_mss = mss
        self.mss = min(536, mss)
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
        # RTT and timers (absolute deadlines, None when off)
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = INITIAL_RTO
        self.rtt_seq: int | None = None
        self.rtt_time = 0.0
        self.retransmits = 0
        self.t_rto: float | None = None
        self.t_delack: float | None = None
        self.t_persist: float | None = None
        self.t_timewait: float | None = None
        self.t_keepalive: float | None = None
        self.keepalive_idle = 0.0  # 0 = off
        self.keepalive_interval = 75.0
        self.keepalive_probes = 9
        self.keepalive_sent = 0
        self.last_heard = now
        # receive side
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_wscale = 0
        self.receive_buffer = receive_buffer
        self.rcv_adv = 0  # right edge of the window we last advertised
        self.ooo: list[tuple[int, bytes]] = []  # out-of-order segments, sorted by start
        self.ooo_bytes = 0
        self.held: list[bytes] = []  # received in order but not delivered (reading paused)
        self.held_bytes = 0
        self.reading_paused = False
        self.ack_pending = 0
        self.ack_now = False
        self.fin_received = False
        self.eof_delivered = False
        self.pending_fin: int | None = None  # a FIN that arrived beyond a gap
        self.last_ooo: tuple[int, int] | None = None  # the out-of-order segment received last
        self._last_oow_ack = float("-inf")
        self.active_open = False

    def __repr__(self) -> str:
        return f"<TCP {self.local[1]}->{self.remote[1]} {self.state.value}>"

    # --- application interface --------------------------------------------------------------

    @property
    def send_buffered(self) -> int:
        """Bytes written by the application and not yet acknowledged."""
        return len(self.sndbuf) - self.buf_off

    def send(self, data: bytes) -> None:
        """Queue ``data``; it goes out at the Stack's next flush."""
        if self.state not in _CAN_SEND and self.state not in (State.SYN_SENT, State.SYN_RECEIVED):
            return
        if self.fin_queued or not data:
            return
        self.sndbuf += data
        self.stack.mark_output(self)

    def close(self) -> None:
        """Half-close: send FIN after everything written so far."""
        if self.fin_queued or self.state in (State.CLOSED, State.TIME_WAIT):
            return
        self.fin_queued = True
        if self.state is State.SYN_SENT:
            self._terminate(None)
            return
        self.stack.mark_output(self)

    def abort(self) -> None:
        """Reset the connection now, discarding buffered data."""
        if self.state in _SYNCHRONIZED or self.state is State.SYN_RECEIVED:
            self.stack.emit_packet(
                self.builder.build(
                    self.local[1], self.remote[1], self.snd_nxt, self.rcv_nxt, RST | ACK, 0
                )
            )
        self._terminate("aborted")

    def set_keepalive(self, idle: float, now: float) -> None:
        """Probe after ``idle`` seconds of silence (0: off); takes effect at once."""
        self.keepalive_idle = idle
        self.keepalive_sent = 0
        if idle and self.state in _SYNCHRONIZED and self.state is not State.TIME_WAIT:
            self.t_keepalive = now + idle
            self.stack.mark_output(self)
        else:
            self.t_keepalive = None

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        if not self.reading_paused:
            return
        self.reading_paused = False
        held, self.held = self.held, []
        before = self._window()
        self.held_bytes = 0
        for chunk in held:
            self.stack.emit(DATA, self, chunk)
        if self.fin_received and not self.eof_delivered:
            self.eof_delivered = True
            self.stack.emit(EOF, self, None)
        # tell the peer the window opened (receiver-side silly window avoidance)
        if self._window() - before >= min(self.receive_buffer // 2, 2 * self.local_mss) or (
            before == 0
        ):
            self.ack_now = True
            self.stack.mark_output(self)

    # --- helpers --------------------------------------------------------------------------------

    def _window(self) -> int:
        return max(0, self.receive_buffer - self.held_bytes - self.ooo_bytes)

    def _advertised(self) -> int:
        window = self._window()
        # never shrink the right edge we already advertised
        window = max(window, self.rcv_adv - self.rcv_nxt)
        scaled = min(window >> self.rcv_wscale, 0xFFFF)
        self.rcv_adv = self.rcv_nxt + (scaled << self.rcv_wscale)
        return scaled

    def _sack_blocks(self) -> list[tuple[int, int]]:
        blocks: list[tuple[int, int]] = []
        for start, data in self.ooo:
            end = start + len(data)
            if blocks and start <= blocks[-1][1]:
                blocks[-1] = (blocks[-1][0], max(blocks[-1][1], end))
            else:
                blocks.append((start, end))
        # RFC 2018: the first block holds the segment received last; then the highest ones
        blocks.reverse()
        if self.last_ooo is not None:
            for i, (s, e) in enumerate(blocks):
                if s <= self.last_ooo[0] and self.last_ooo[1] <= e:
                    blocks.insert(0, blocks.pop(i))
                    break
        return [(s & MASK, e & MASK) for s, e in blocks[:3]]

    def _ack_options(self) -> bytes:
        if self.sack_ok and self.ooo:
            return sack_option(self._sack_blocks())
        return b""

    def _send_segment(
        self, seq: int, flags: int, payload: bytes = b"", options: bytes = b""
    ) -> None:
        if self.state is not State.SYN_SENT:
            flags |= ACK
            options = options or self._ack_options()
        window = self._advertised() if not flags & SYN else min(self._window(), 0xFFFF)
        self.stack.emit_packet(
            self.builder.build(
                self.local[1], self.remote[1], seq, self.rcv_nxt, flags, window, options, payload
            )
        )
        if flags & ACK:
            self.ack_pending = 0
            self.ack_now = False
            self.t_delack = None

    def send_ack(self) -> None:
        # at the highest sequence number sent, as BSD does: after a timeout snd_nxt goes back,
        # and an ACK below what the peer expects next would be rejected unread
        self._send_segment(max(self.snd_nxt, self.snd_max), ACK)

    def _out_of_window_ack(self, now: float) -> None:
        """Answer an unacceptable segment, at most every 0.5 s (as Linux does), so two ends
        that disagree cannot bounce ACKs at each other without end."""
        if now - self._last_oow_ack >= OUT_OF_WINDOW_ACK_INTERVAL:
            self._last_oow_ack = now
            self.send_ack()

    def _challenge_ack(self) -> None:
        if self.stack.allow_challenge_ack():
            self.send_ack()

    def expire(self) -> None:
        """Forget the connection without telling the peer (TIME-WAIT ended or recycled)."""
        self._terminate(None)

    def _terminate(self, reason: str | None) -> None:
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self.close_reason = reason
        self.t_rto = self.t_delack = self.t_persist = self.t_timewait = self.t_keepalive = None
        self.sndbuf = bytearray()
        self.buf_off = 0
        self.held = []
        self.ooo = []
        self.stack.connection_closed(self, reason)

    # --- opening ------------------------------------------------------------------------------

    def _syn_options(self, offered_wscale: bool, offered_sack: bool) -> bytes:
        return syn_options(
            self.local_mss,
            RECEIVE_WSCALE if offered_wscale else None,
            offered_sack,
        )

    def open_active(self, now: float) -> None:
        self.active_open = True
        self.state = State.SYN_SENT
        self.snd_nxt = self.snd_max = self.iss + 1
        self.rcv_wscale = RECEIVE_WSCALE
        self._send_syn(now)

    def _send_syn(self, now: float) -> None:
        flags = SYN if self.state is State.SYN_SENT else SYN | ACK
        if self.state is State.SYN_SENT:
            options = self._syn_options(True, True)
        else:
            options = self._syn_options(self.rcv_wscale > 0, self.sack_ok)
        window = min(self._window(), 0xFFFF)
        if flags & ACK:
            self.rcv_adv = self.rcv_nxt + window  # SYN windows are never scaled
        self.stack.emit_packet(
            self.builder.build(
                self.local[1], self.remote[1], self.iss, self.rcv_nxt, flags, window, options
            )
        )
        self.rtt_seq = self.iss if self.retransmits == 0 else None
        self.rtt_time = now
        self.t_rto = now + self.rto

    def open_passive(self, seq: int, window: int, options: Any, now: float) -> None:
        """A SYN arrived on a listening port: answer with SYN-ACK."""
        self.state = State.SYN_RECEIVED
        self.rcv_wscale = RECEIVE_WSCALE
        self._peer_syn(seq, options)
        self.snd_wnd = window  # SYN windows are never scaled
        self.snd_nxt = self.snd_max = self.iss + 1
        self.cwnd = 10 * self.mss
        self._send_syn(now)

    def _peer_syn(self, seq: int, options: Any) -> None:
        """What the peer's SYN tells us: its sequence numbers, MSS, window scale and SACK.
        Window scaling is used only if both sides offer it (RFC 7323 2.2)."""
        self.irs = seq
        self.rcv_nxt = seq + 1
        self.mss = min(options.mss or 536, self.local_mss)
        if options.wscale is not None:
            self.snd_wscale = options.wscale
        else:
            self.snd_wscale = self.rcv_wscale = 0
        self.sack_ok = options.sack_ok

    def _established(self, now: float) -> None:
        self.state = State.ESTABLISHED
        self.cwnd = 10 * self.mss
        self.t_rto = None
        self.retransmits = 0
        if self.keepalive_idle:
            self.t_keepalive = now + self.keepalive_idle

    # --- input --------------------------------------------------------------------------------

    def segment_arrived(
        self,
        seq_w: int,
        ack_w: int,
        flags: int,
        window: int,
        options: Any,
        payload: bytes,
        now: float,
    ) -> None:
        if self.state is State.SYN_SENT:
            self._syn_sent_input(seq_w, ack_w, flags, window, options, now)
            return
        if (
            self.state is State.SYN_RECEIVED
            and flags & SYN
            and not flags & ACK
            and seq_w == self.irs & MASK
        ):
            self._send_syn(now)  # the peer's SYN again: our SYN-ACK was lost
            return
        seq = unwrap(seq_w, self.rcv_nxt)
        n = len(payload)
        # 1. acceptability (RFC 9293 3.10.7.4); SYN and FIN occupy sequence space too
        seg_len = n + (1 if flags & FIN else 0) + (1 if flags & SYN else 0)
        rcv_wnd = max(self.rcv_adv - self.rcv_nxt, 0)
        if seg_len == 0:
            acceptable = (
                (seq == self.rcv_nxt)
                if rcv_wnd == 0
                else (self.rcv_nxt <= seq < self.rcv_nxt + rcv_wnd)
            )
        else:
            acceptable = rcv_wnd > 0 and (
                self.rcv_nxt <= seq < self.rcv_nxt + rcv_wnd
                or self.rcv_nxt <= seq + seg_len - 1 < self.rcv_nxt + rcv_wnd
                or seq < self.rcv_nxt < seq + seg_len
            )
        if not acceptable and rcv_wnd == 0 and seq == self.rcv_nxt and flags & ACK:
            # a zero window accepts no data, but its ACK (and RST) still count
            payload, n = b"", 0
            flags &= ~FIN
            self.stack.count("tcp_zero_window_drops")
            self.ack_now = True
            acceptable = True
        if not acceptable:
            if not flags & RST:
                self.stack.count("tcp_out_of_window")
                self._out_of_window_ack(now)
            return
        self.last_heard = now
        self.keepalive_sent = 0
        if self.keepalive_idle and self.state in _SYNCHRONIZED:
            self.t_keepalive = now + self.keepalive_idle
        # 2. RST (RFC 5961 3.2)
        if flags & RST:
            if seq == self.rcv_nxt:
                self._terminate("connection reset by peer")
            else:
                self.stack.count("tcp_rst_challenged")
                self._challenge_ack()
            return
        # 4. SYN in a synchronized state (RFC 5961 4.2)
        if flags & SYN:
            self.stack.count("tcp_syn_challenged")
            self._challenge_ack()
            return
        # 5. ACK
        if not flags & ACK:
            return
        ack = unwrap(ack_w, self.snd_una)
        if self.state is State.SYN_RECEIVED:
            if self.snd_una < ack <= self.snd_max:
                self.snd_una = ack
                self.buf_seq = self.iss + 1
                self.snd_wnd = window << self.snd_wscale
                self.snd_wl1, self.snd_wl2 = seq, ack
                self.max_snd_wnd = self.snd_wnd
                self._sample_rtt(ack, now)
                self._established(now)
                self.stack.connection_established(self, passive=not self.active_open)
            else:
                self.stack.emit_packet(
                    self.builder.build(self.local[1], self.remote[1], ack, 0, RST, 0)
                )
                return
        elif not self._process_ack(seq, ack, window, options, n, now):
            return
        if self.state is State.CLOSED:
            return
        # 7. segment text
        if n:
            if self.state in _CAN_RECEIVE:
                self._receive_data(seq, payload, now)
            else:
                self.stack.count("tcp_data_after_fin")
        # 8. FIN
        if flags & FIN:
            fin_at = seq + n
            if fin_at == self.rcv_nxt and not self.fin_received:
                self._fin_arrived(now)
            elif fin_at > self.rcv_nxt:
                self.pending_fin = fin_at  # beyond a gap: it counts once the gap is filled
            else:
                self.ack_now = True
        if self.ack_now or self.ack_pending:
            self.stack.mark_output(self)

    def _syn_sent_input(
        self, seq_w: int, ack_w: int, flags: int, window: int, options: Any, now: float
    ) -> None:
        if flags & ACK:
            ack = unwrap(ack_w, self.iss)
            if ack != self.iss + 1:
                if not flags & RST:
                    self.stack.emit_packet(
                        self.builder.build(self.local[1], self.remote[1], ack, 0, RST, 0)
                    )
                return
            if flags & RST:
                self._terminate("connection refused")
                return
        elif flags & RST:
            return
        if not flags & SYN:
            return
        self._peer_syn(seq_w, options)
        if flags & ACK:
            self.snd_una = self.iss + 1
            self.snd_wnd = window  # unscaled in a SYN
            self.snd_wl1, self.snd_wl2 = self.rcv_nxt, self.snd_una
            self.max_snd_wnd = self.snd_wnd
            self._sample_rtt(self.snd_una, now)
            self._established(now)
            self.send_ack()
            self.stack.connection_established(self, passive=False)
            self.stack.mark_output(self)
        else:
            # simultaneous open
            self.state = State.SYN_RECEIVED
            self._send_syn(now)

    def _process_ack(
        self, seq: int, ack: int, window: int, options: Any, n: int, now: float
    ) -> bool:
        """ACK processing for synchronized states; False if the segment is to be dropped."""
        if ack > self.snd_max:
            self.stack.count("tcp_ack_beyond_sent")
            self.send_ack()
            return False
        if ack < self.snd_una - max(self.max_snd_wnd, 0xFFFF):
            self.stack.count("tcp_ack_too_old")
            self._challenge_ack()
            return False
        scaled = window << self.snd_wscale
        window_changed = False
        if seq > self.snd_wl1 or (seq == self.snd_wl1 and ack >= self.snd_wl2):
            if scaled != self.snd_wnd:
                window_changed = True
                if self.snd_wnd == 0 and scaled:
                    self.t_persist = None
                self.snd_wnd = scaled
                self.max_snd_wnd = max(self.max_snd_wnd, scaled)
                self.stack.mark_output(self)
            self.snd_wl1, self.snd_wl2 = seq, ack
        if self.sack_ok and options is not None and options.sack:
            self._update_scoreboard(options.sack)
        flight = self.snd_max - self.snd_una
        if ack > self.snd_una:
            self._new_ack(ack, now)
        elif ack == self.snd_una and flight > 0 and n == 0 and not window_changed:
            self._duplicate_ack(now)
        return True

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

    def _new_ack(self, ack: int, now: float) -> None:
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
        if (
            self.drained_pending
            and self.send_buffered < self.send_low_water
            and self.state in _CAN_SEND
        ):
            self.drained_pending = False
            self.stack.emit(DRAINED, self, None)
        self.stack.mark_output(self)

    def _duplicate_ack(self, now: float) -> None:
        self.dupacks += 1
        if self.in_recovery:
            if not self.sack_ok:
                self.cwnd += self.mss  # NewReno inflation
            self.stack.mark_output(self)
            return
        if self.dupacks >= DUP_THRESH or self.sacked_bytes >= DUP_THRESH * self.mss:
            self._enter_recovery()

    def _enter_recovery(self) -> None:
        self.stack.count("tcp_fast_retransmits")
        flight = self.snd_max - self.snd_una
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.in_recovery = True
        self.recover = self.snd_max
        self.rexmit_next = self.snd_una
        self.cwnd = self.ssthresh if self.sack_ok else self.ssthresh + DUP_THRESH * self.mss
        self.rtt_seq = None
        self.stack.mark_output(self)

    def _sample_rtt(self, ack: int, now: float) -> None:
        if self.rtt_seq is None or ack <= self.rtt_seq:
            return
        rtt = max(now - self.rtt_time, 1e-6)
        self.rtt_seq = None
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.rto = self._computed_rto()

    def _computed_rto(self) -> float:
        if self.srtt is None:
            return INITIAL_RTO
        return min(max(self.srtt + max(0.001, 4 * self.rttvar), MIN_RTO), MAX_RTO)

    def _receive_data(self, seq: int, payload: bytes, now: float) -> None:
        if seq < self.rcv_nxt:  # overlaps what we have: keep only the new part
            payload = payload[self.rcv_nxt - seq :]
            seq = self.rcv_nxt
        window_end = self.rcv_nxt + max(self.rcv_adv - self.rcv_nxt, 0)
        if seq + len(payload) > window_end:
            payload = payload[: window_end - seq]
        if not payload:
            self.ack_now = True
            return
        if seq == self.rcv_nxt:
            self._deliver(payload)
            if self.ooo:
                self._drain_ooo()
                self.ack_now = True  # a gap was filled: tell the sender at once
            else:
                self.ack_pending += 1
                if self.ack_pending >= ACK_EVERY_SEGMENTS:
                    self.send_ack()  # inside a large batch: keep the sender's clock ticking
        else:
            self._store_ooo(seq, payload)
            # one duplicate ACK per out-of-order segment, at once (RFC 5681 4.2): a sender
            # without SACK counts them to start a fast retransmit
            self.send_ack()

    def _deliver(self, payload: bytes) -> None:
        self.rcv_nxt += len(payload)
        if self.reading_paused:
            self.held.append(payload)
            self.held_bytes += len(payload)
        else:
            self.stack.emit(DATA, self, payload)

    def _store_ooo(self, seq: int, payload: bytes) -> None:
        if len(self.ooo) >= MAX_OOO_SEGMENTS:
            self.stack.count("tcp_ooo_overflow")
            return
        end = seq + len(payload)
        for start, data in self.ooo:
            if start <= seq and end <= start + len(data):
                return  # already have all of it
        self.ooo.append((seq, payload))
        self.ooo.sort(key=lambda item: item[0])
        self.ooo_bytes += len(payload)
        self.last_ooo = (seq, end)

    def _drain_ooo(self) -> None:
        while self.ooo and self.ooo[0][0] <= self.rcv_nxt:
            start, data = self.ooo.pop(0)
            self.ooo_bytes -= len(data)
            end = start + len(data)
            if end > self.rcv_nxt:
                self._deliver(data[self.rcv_nxt - start :])
        if self.pending_fin is not None and self.pending_fin == self.rcv_nxt and not self.ooo:
            self.pending_fin = None
            self._fin_arrived(self.stack.now)

    def _fin_arrived(self, now: float) -> None:
        self.fin_received = True
        self.rcv_nxt += 1
        self.ack_now = True
        if not self.reading_paused:
            self.eof_delivered = True
            self.stack.emit(EOF, self, None)
        if self.state is State.ESTABLISHED:
            self.state = State.CLOSE_WAIT
        elif self.state is State.FIN_WAIT_1:
            # our FIN not yet acknowledged (else we would be in FIN-WAIT-2)
            self.state = State.CLOSING
        elif self.state is State.FIN_WAIT_2:
            self._enter_time_wait(now)

    def _our_fin_acked(self, now: float) -> None:
        if self.state is State.FIN_WAIT_1:
            if self.fin_received:
                self._enter_time_wait(now)
            else:
                self.state = State.FIN_WAIT_2
        elif self.state is State.CLOSING:
            self._enter_time_wait(now)
        elif self.state is State.LAST_ACK:
            self._terminate(None)

    def _enter_time_wait(self, now: float) -> None:
        self.state = State.TIME_WAIT
        self.t_rto = self.t_persist = self.t_keepalive = None
        self.t_timewait = now + TIME_WAIT_SECONDS
        self.stack.entered_time_wait(self)

    # --- output -------------------------------------------------------------------------------

    def output(self, now: float) -> None:
        """Send what the windows allow, then any ACK that is owed."""
        state = self.state
        if state in (State.CLOSED, State.SYN_SENT, State.SYN_RECEIVED):
            return
        sent_any = False
        if state not in (State.TIME_WAIT, State.FIN_WAIT_2, State.CLOSING, State.LAST_ACK) or (
            self.snd_nxt < self.snd_max
        ):
            sent_any = self._send_data(now)
        if not sent_any and (self.ack_now or self.ack_pending >= 2):
            self.send_ack()
        elif not sent_any and self.ack_pending and self.t_delack is None:
            self.t_delack = now + DELAYED_ACK
        if self.send_buffered >= self.send_low_water:
            self.drained_pending = True

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

    def _fin_fits(self) -> bool:
        return self.state in (State.ESTABLISHED, State.CLOSE_WAIT) or self.fin_seq is not None

    def _fin_sent(self, seq: int) -> None:
        if self.fin_seq is None:
            self.fin_seq = seq
            if self.state is State.ESTABLISHED:
                self.state = State.FIN_WAIT_1
            elif self.state is State.CLOSE_WAIT:
                self.state = State.LAST_ACK

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

    # --- timers -------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        best: float | None = None
        for t in (self.t_rto, self.t_delack, self.t_persist, self.t_timewait, self.t_keepalive):
            if t is not None and (best is None or t < best):
                best = t
        return best

    def tick(self, now: float) -> None:
        if self.t_timewait is not None and self.t_timewait <= now:
            self._terminate(None)
            return
        if self.t_delack is not None and self.t_delack <= now:
            self.t_delack = None
            if self.ack_pending:
                self.send_ack()
        if self.t_rto is not None and self.t_rto <= now:
            self.t_rto = None
            self._retransmit_timeout(now)
        if self.t_persist is not None and self.t_persist <= now:
            self.t_persist = None
            if self.snd_wnd == 0 and self.state in _SYNCHRONIZED:
                self.stack.count("tcp_window_probes")
                # an old sequence number: the peer answers with its current window
                self._send_segment(self.snd_una - 1, ACK)
                self.rto = min(self.rto * 2, MAX_RTO)
                self.t_persist = now + self.rto
        if self.t_keepalive is not None and self.t_keepalive <= now:
            if self.keepalive_sent >= self.keepalive_probes:
                self._terminate("keepalive timeout")
                return
            self.keepalive_sent += 1
            self._send_segment(self.snd_una - 1, ACK)
            self.t_keepalive = now + self.keepalive_interval

    def _retransmit_timeout(self, now: float) -> None:
        self.retransmits += 1
        limit = (
            MAX_SYN_RETRANSMITS
            if self.state in (State.SYN_SENT, State.SYN_RECEIVED)
            else (MAX_RETRANSMITS)
        )
        if self.retransmits > limit:
            self._terminate("connection timed out")
            return
        self.stack.count("tcp_rto")
        self.rto = min(self.rto * 2, MAX_RTO)
        self.rtt_seq = None
        if self.state in (State.SYN_SENT, State.SYN_RECEIVED):
            self._send_syn(now)
            self.rtt_seq = None
            return
        if self.snd_max == self.snd_una:
            return
        flight = self.snd_max - self.snd_una
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.mss
        self.in_recovery = False
        self.dupacks = 0
        self.snd_nxt = self.snd_una  # go back N (skipping what was SACKed)
        self.rexmit_next = self.snd_una
        if self.fin_seq is not None and self.snd_una == self.fin_seq:
            self._send_segment(self.fin_seq, FIN | ACK)
            self.snd_nxt = self.fin_seq + 1
        else:
            self._send_data(now)
        self.t_rto = now + self.rto
