"""One TCP connection (RFC 9293), sans-IO: the state machine and segment processing.

A :class:`Connection` is one object whose parts live in their own modules, each a mixin over
the same control block: ``send`` (the send buffer, SACK scoreboard and congestion control),
``receive`` (reassembly and the window) and ``timers`` (RTO, delayed ACK, keepalive, the
zero-window probe, TIME-WAIT). This module holds what ties them together: opening and
closing, the state transitions, and the per-segment path (``segment_arrived``, ``output``).

The owner (an :class:`~funnel_tw.netstack.owner.Owner`, in practice the Stack) feeds segments
in, asks for output at ``flush`` time and runs the timers; it also collects the connection's
events for the application (data, end of stream, closed, drained).
"""

from __future__ import annotations

from typing import Any

from ..events import EOF
from ..owner import Owner
from ..segment import ACK, FIN, PSH, RST, SYN, PacketBuilder, syn_options
from .bbr import Bbr
from .cubic import Cubic
from .predict import Prediction
from .receive import RECEIVE_BUFFER_MAX, ReceiveSide, wscale_for
from .send import SEND_BUFFER_MAX, SendSide
from .sequence import MASK, unwrap
from .state import CAN_RECEIVE, SYNCHRONIZED, State
from .timers import DELAYED_ACK, TIME_WAIT_SECONDS, Timers
from .timestamps import OLDER, PAWS_IDLE, Timestamps


class Connection(SendSide, ReceiveSide, Timers, Timestamps, Prediction):
    """A TCP connection's control block and its send and receive buffers."""

    # Every attribute of the control block (the mixins' too: they declare none of their own).
    # Slots, not a dict: 1 KiB per connection instead of 3.3 (bench/idle.py), for each of
    # thousands held; tests/netstack/test_tcp_slots.py checks that every ``self.x =`` is here.
    __slots__ = (
        "_last_oow_ack",
        "_low_water",
        "ack_now",
        "ack_pending",
        "active_open",
        "app",
        "bbr",
        "buf_len",
        "buf_off",
        "buf_seq",
        "builder",
        "cc",
        "close_reason",
        "close_reported",
        "cr_entry",
        "cr_mark",
        "cr_phase",
        "cr_pipe",
        "cr_start",
        "created",
        "cwnd",
        "cwnd_limited",
        "drained_pending",
        "dsack",
        "dsack_round",
        "dupacks",
        "eof_delivered",
        "fin_queued",
        "fin_received",
        "fin_seq",
        "half_open",
        "held",
        "held_bytes",
        "in_flight",
        "in_loss",
        "in_recovery",
        "irs",
        "iss",
        "keepalive_idle",
        "keepalive_interval",
        "keepalive_probes",
        "keepalive_sent",
        "key",
        "last_ack_sent",
        "last_heard",
        "last_ooo",
        "local",
        "local_mss",
        "lost_bytes",
        "lost_q",
        "max_flight",
        "max_flight_seq",
        "max_snd_wnd",
        "min_rtt",
        "mss",
        "obs_best",
        "obs_clean",
        "obs_end",
        "obs_una",
        "ooo",
        "ooo_bytes",
        "ooo_count",
        "ooo_dup_nxt",
        "ooo_dupacks",
        "orphan_timeout",
        "orphaned",
        "pace_depth",
        "pace_rate",
        "pace_stamp",
        "pace_tokens",
        "pacing",
        "pending_fin",
        "probes_out",
        "prr_delivered",
        "prr_out",
        "rack_end",
        "rack_fack",
        "rack_rtt",
        "rack_xmit",
        "rcv_adv",
        "rcv_edge",
        "rcv_nxt",
        "rcv_rtt",
        "rcv_rtt_seq",
        "rcv_rtt_time",
        "rcv_wscale",
        "rcvq_seq",
        "rcvq_space",
        "rcvq_time",
        "reading_paused",
        "receive_buffer",
        "receive_buffer_max",
        "recover",
        "recover_fs",
        "remote",
        "reno_sacked",
        "reo_wnd_mult",
        "reo_wnd_persist",
        "reordering_seen",
        "retransmits",
        "rto",
        "rtt_seq",
        "rtt_time",
        "rttvar",
        "rtx",
        "rtx_head",
        "sack_cache",
        "sack_ok",
        "sacked_bytes",
        "sched",
        "send_buffer",
        "send_buffer_max",
        "snd_max",
        "snd_nxt",
        "snd_una",
        "snd_wl1",
        "snd_wl2",
        "snd_wnd",
        "snd_wscale",
        "sndq",
        "sndq_head",
        "sndq_starts",
        "srtt",
        "ssthresh",
        "stack",
        "state",
        "t_delack",
        "t_keepalive",
        "t_pace",
        "t_persist",
        "t_reo",
        "t_rto",
        "t_stall",
        "t_timewait",
        "t_tlp",
        "tlp_end",
        "tlp_retrans",
        "ts_offset",
        "ts_ok",
        "ts_recent",
        "ts_recent_time",
        "undo",
        "undo_done",
        "undo_older",
        "user_timeout",
        "window_granted",
    )

    stack: Owner[Connection]

    def __init__(
        self,
        stack: Owner[Connection],
        local: tuple[bytes, int],
        remote: tuple[bytes, int],
        *,
        iss: int,
        now: float,
        receive_buffer: int,
        mss: int,
        receive_buffer_max: int = RECEIVE_BUFFER_MAX,
        send_buffer_max: int = SEND_BUFFER_MAX,
        ts_offset: int | None = None,  # our timestamps' clock offset; None: none offered
        bbr: bool = False,  # tcp-congestion = bbr (bbr.py); else CUBIC
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
        self.sched: float | None = None  # the deadline the owner's timer heap holds for us
        self.active_open = False
        self.local_mss = mss
        self.mss = min(536, mss)
        self._init_send(iss, send_buffer_max, bbr)
        self._init_timers(now)
        self._init_receive(receive_buffer, receive_buffer_max)
        self._init_timestamps(ts_offset)

    def __repr__(self) -> str:
        return f"<TCP {self.local[1]}->{self.remote[1]} {self.state.value}>"

    # --- application interface -----------------------------------------------------------------

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
        self._reset("aborted")

    def orphan(self, now: float) -> None:
        """The application has let go: close, deliver nothing more and, from now on, reset
        the connection when it makes no progress for ``orphan_timeout`` seconds (also in
        FIN-WAIT-2). Held data is released and the window reopens, so a peer we paused is
        not left probing a window that will never open."""
        if self.state in (State.CLOSED, State.TIME_WAIT):
            return
        self.orphaned = True
        if self.state is State.SYN_SENT:
            self._terminate(None)
            return
        self.close()
        self.held = []
        self.held_bytes = 0
        if self.reading_paused:
            self.reading_paused = False
            self.ack_now = True  # announce the reopened window
        self.eof_delivered = True  # nobody to tell any more
        self.t_stall = None
        self._check_stall(now)
        self.stack.mark_output(self)

    def _reset(self, reason: str) -> None:
        if self.state in SYNCHRONIZED or self.state is State.SYN_RECEIVED:
            # at the highest sequence number sent: after a timeout snd_nxt went back, and a
            # reset below what the peer expects next would be dropped as out of window
            self.stack.emit_packet(
                self.builder.build(
                    self.local[1],
                    self.remote[1],
                    max(self.snd_nxt, self.snd_max),
                    self.rcv_nxt,
                    RST | ACK,
                    0,
                )
            )
        self._terminate(reason)

    # --- segments out, and the end -------------------------------------------------------------

    def _send_segment(
        self, seq: int, flags: int, payload: bytes = b"", options: bytes | None = None
    ) -> None:
        if self.state is not State.SYN_SENT:
            flags |= ACK
            if options is None:
                options = self._ack_options()
        elif options is None:
            options = b""
        window = self._advertised() if not flags & SYN else min(self._window(), 0xFFFF)
        self.stack.emit_packet(
            self.builder.build(
                self.local[1], self.remote[1], seq, self.rcv_nxt, flags, window, options, payload
            )
        )
        if flags & ACK:
            self.last_ack_sent = self.rcv_nxt
            self.ack_pending = 0
            self.ack_now = False
            self.t_delack = None
            if options and self.dsack is not None:
                self.dsack = None  # reported once (RFC 2883)

    def send_ack(self) -> None:
        # at the highest sequence number sent, as BSD does: after a timeout snd_nxt goes back,
        # and an ACK below what the peer expects next would be rejected unread
        self._send_segment(max(self.snd_nxt, self.snd_max), ACK)

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
        self.t_stall = self.t_reo = self.t_tlp = self.t_pace = None
        self._clear_sendq()
        self._forget_sent()
        self.held = []
        self.held_bytes = 0
        self.ooo = []
        self.stack.connection_closed(self, reason)

    # --- opening -------------------------------------------------------------------------------

    def open_active(self, now: float) -> None:
        self.active_open = True
        self.state = State.SYN_SENT
        self.snd_nxt = self.snd_max = self.iss + 1
        self.rcv_wscale = wscale_for(self.receive_buffer_max)
        self._send_syn(now)

    def _send_syn(self, now: float) -> None:
        flags = SYN if self.state is State.SYN_SENT else SYN | ACK
        if self.state is State.SYN_SENT:  # we offer all; a SYN-ACK, what the peer offered too
            options = syn_options(self.local_mss, self.rcv_wscale, True, self._syn_timestamp())
        else:
            stamp = self._syn_timestamp() if self.ts_ok else None
            wscale = self.rcv_wscale or None
            options = syn_options(self.local_mss, wscale, self.sack_ok, stamp)
        window = min(self._window(), 0xFFFF)
        if flags & ACK:
            self.last_ack_sent = self.rcv_nxt
            self.rcv_adv = self.rcv_edge = self.rcv_nxt + window  # SYN windows: unscaled
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
        self.rcv_wscale = wscale_for(self.receive_buffer_max)
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
        self._ts_peer_syn(options)

    def _established(self, now: float) -> None:
        self.state = State.ESTABLISHED
        self.cwnd = 10 * self.mss
        self.cc = Cubic(self.mss)
        if self.bbr is not None:
            self.bbr = Bbr(self.mss, self.iss)
        self.t_rto = None
        self.retransmits = 0
        self._autotune_start(now)
        self._resume_start()
        if self.keepalive_idle:
            self.t_keepalive = now + self.keepalive_idle

    # --- input ---------------------------------------------------------------------------------

    def segment_arrived(
        self,
        seq_w: int,
        ack_w: int,
        flags: int,
        window: int,
        options: Any,
        payload: bytes,
        now: float,
        tsval: int | None = None,  # the segment's clock (RFC 7323: timestamps.py)
    ) -> None:
        state = self.state
        paws = False
        if tsval is not None:
            if not self.ts_ok:
                tsval = None  # not agreed in the SYNs: ignored (RFC 7323 3.2)
            elif 0 < (self.ts_recent - tsval) & MASK < OLDER:  # older than TS.Recent
                paws = self._paws_rejects(tsval, seq_w, ack_w, flags, window, payload, now)
                if now - self.ts_recent_time <= PAWS_IDLE:
                    tsval = None  # taken or not, TS.Recent does not go back
        if (
            not paws
            and state is State.ESTABLISHED
            and flags & ~PSH == ACK
            and payload
            and seq_w == self.rcv_nxt & MASK
            and window << self.snd_wscale == self.snd_wnd
            and not options.sack
            and len(payload) <= self.rcv_adv - self.rcv_nxt
        ):
            # Header prediction (predict.py): the next in-order data of an established
            # connection that changes no window and acknowledges nothing new or all we sent
            if tsval is not None and self.rcv_nxt <= self.last_ack_sent:  # RFC 7323 4.3
                self.ts_recent, self.ts_recent_time = tsval, now
            if self.snd_una == self.snd_max:
                if ack_w == self.snd_una & MASK:
                    self._in_order_data(payload, now)
                    return
            elif ack_w == self.snd_max & MASK and self._all_acked_plainly():
                self._in_order_data_acking_all(payload, now)
                return
        if state is State.SYN_SENT:
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
        if not acceptable or paws:  # an old duplicate by its clock is not acceptable either
            if flags & RST:
                return
            self.stack.count("tcp_out_of_window")
            if n and seq + n <= self.rcv_nxt and not flags & SYN and self.state in SYNCHRONIZED:
                # data we already have, sent again: say so at once (D-SACK, RFC 2883), as a
                # data segment cannot be part of an ACK loop (Linux does not rate-limit it)
                self._duplicate_data(seq, seq + n)
                self.send_ack()
                return
            self._out_of_window_ack(now)
            return
        if tsval is not None and seq <= self.last_ack_sent and not flags & RST:
            self.ts_recent, self.ts_recent_time = tsval, now  # RFC 7323 4.3
        self.last_heard = now
        self.keepalive_sent = 0
        self.probes_out = 0
        if self.keepalive_idle and self.state in SYNCHRONIZED:
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
            if self.state in CAN_RECEIVE:
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
        flight = self.snd_max - self.snd_una
        duplicate = ack == self.snd_una and flight > 0 and n == 0 and not window_changed
        blocks = options.sack if options is not None else ()
        if ack > self.snd_una or duplicate or blocks:
            self._ack_arrived(ack, blocks, duplicate, now)
        return True

    # --- state transitions ---------------------------------------------------------------------

    def _fin_fits(self) -> bool:
        return self.state in (State.ESTABLISHED, State.CLOSE_WAIT) or self.fin_seq is not None

    def _fin_sent(self, seq: int) -> None:
        if self.fin_seq is None:
            self.fin_seq = seq
            if self.state is State.ESTABLISHED:
                self.state = State.FIN_WAIT_1
            elif self.state is State.CLOSE_WAIT:
                self.state = State.LAST_ACK

    def _fin_arrived(self, now: float) -> None:
        self.fin_received = True
        self.rcv_nxt += 1
        self.ack_now = True
        if not self.reading_paused and not self.eof_delivered:
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
        self.t_rto = self.t_persist = self.t_keepalive = self.t_stall = None
        self.t_timewait = now + TIME_WAIT_SECONDS
        self.stack.entered_time_wait(self)

    # --- output --------------------------------------------------------------------------------

    def output(self, now: float) -> None:
        """Send what the windows allow, then any ACK that is owed."""
        state = self.state
        if state in (State.CLOSED, State.SYN_SENT, State.SYN_RECEIVED):
            return
        sent_any = False
        if state not in (State.TIME_WAIT, State.FIN_WAIT_2, State.CLOSING, State.LAST_ACK) or (
            self.lost_q
        ):
            sent_any = self._send_data(now)
        if not sent_any and (self.ack_now or self.ack_pending >= 2):
            self.send_ack()
        elif not sent_any and self.ack_pending and self.t_delack is None:
            self.t_delack = now + DELAYED_ACK
        if self.send_buffered >= self.send_low_water:
            self.drained_pending = True
        self._check_stall(now)
