"""The send side of a connection: the send buffer, the record of what was sent, recovery.

What the application wrote waits in the send buffer (``sendq.py``) until it is acknowledged.

Every segment sent is a :class:`~.rack.Sent` record in ``rtx`` (sequence order). SACK blocks
mark records delivered; RACK (``rack.py``) marks the ones that are lost by time; lost records are
retransmitted first, in the order they were found. ``pipe`` (RFC 6675) is what was sent minus
what was SACKed and what is deemed lost: O(1), kept as counters.

Recovery: the window falls once per loss episode and Proportional Rate Reduction (RFC 6937)
spreads the retransmissions and new data over the ACKs that come back. A retransmission found
spurious undoes the reduction: every retransmission of an episode is remembered, and when
D-SACKs (RFC 2883) have reported all of them as duplicates, ``cwnd`` and ``ssthresh`` go back
to what they were (as Linux's undo). Without SACK, three duplicate ACKs or a partial ACK mark
the first unacknowledged segment lost (NewReno, RFC 6582). After a timeout everything not
SACKed is lost and is sent again from one segment of window.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Self

from ..events import DRAINED
from ..owner import Owner
from ..segment import ACK, FIN, PSH, TIMESTAMP_LEN, PacketBuilder
from .bbr import Bbr
from .burst import Burst
from .cubic import Cubic
from .pacing import Pacing
from .rack import ACKED, INFLIGHT, LOST, SACKED, RackSide, Sent
from .recovery import Episode, Recovery
from .resume import Resume
from .sendq import SendQueue
from .sequence import unwrap
from .state import CAN_SEND, State

DUP_THRESH = 3
SEND_BUFFER = 2 << 20  # the application may leave this much unacknowledged data with us ...
# ... or twice the window, up to this (Linux's tcp_wmem): 3/4 of it (where DRAINED wakes the
# producer) is still above a peer's whole default window (RECEIVE_BUFFER_MAX), so a producer
# that keeps up keeps that window full
SEND_BUFFER_MAX = 12 << 20
SEND_BUFFER_LOW = SEND_BUFFER * 3 // 4  # DRAINED fires below 3/4 of the limit (at first: this)
UNDO_MAX_RANGES = 4096  # retransmissions remembered per episode; beyond, no undo


def _start(rec: Sent) -> int:
    return rec.start


class SendSide(Burst, RackSide, Pacing, Recovery, Resume, SendQueue):
    """The send half of :class:`~.connection.Connection` (a mixin: one object, one state)."""

    if not TYPE_CHECKING:  # (the type checker would hold the mixin to its empty slots)
        __slots__ = ()  # the attributes are the Connection's (connection.py)

    # What this part uses of the rest of the connection, declared for the type checker only.
    # Methods that hand ``self`` to the owner say ``self: Self``: the owner expects the
    # concrete Connection, which this module cannot name (it is built from this one).
    stack: Owner[Self]
    state: State
    mss: int
    ts_ok: bool
    rto: float
    rtt_seq: int | None
    rtt_time: float
    retransmits: int
    t_rto: float | None
    t_persist: float | None
    t_delack: float | None
    builder: PacketBuilder
    local: tuple[bytes, int]
    remote: tuple[bytes, int]
    rcv_nxt: int
    ack_pending: int
    ack_now: bool
    dsack: tuple[int, int] | None
    if TYPE_CHECKING:

        def _send_segment(
            self, seq: int, flags: int, payload: bytes = b"", options: bytes | None = None
        ) -> None: ...
        def _ack_options(self) -> bytes: ...
        def _payload_room(self, options: bytes) -> int: ...
        def _options_for(self, options: bytes, n: int) -> bytes: ...
        def _advertised(self) -> int: ...
        def _fin_fits(self) -> bool: ...
        def _fin_sent(self, seq: int) -> None: ...
        def _our_fin_acked(self, now: float) -> None: ...
        def _rtt_update(self, rtt: float) -> None: ...
        def _computed_rto(self) -> float: ...
        def _progress(self, now: float) -> None: ...

    def _init_send(
        self, iss: int, send_buffer_max: int = SEND_BUFFER_MAX, bbr: bool = False
    ) -> None:
        self.iss = iss
        self.snd_una = iss
        self.snd_nxt = iss  # the next new sequence number (no go-back-N: always snd_max)
        self.snd_max = iss
        self.snd_wnd = 1
        self.snd_wl1 = 0
        self.snd_wl2 = 0
        self.max_snd_wnd = 0
        self.snd_wscale = 0
        self._init_sendq()
        self.buf_seq = iss + 1
        self.fin_queued = False
        self.fin_seq: int | None = None  # sequence number of our FIN once it has one
        self.drained_pending = False
        self.send_buffer = SEND_BUFFER
        self.send_buffer_max = max(send_buffer_max, SEND_BUFFER)  # tcp-send-buffer-max
        self._low_water: int | None = None  # an explicit DRAINED mark (else 3/4 of the limit)
        # what was sent and what became of it
        self.rtx: list[Sent] = []  # sequence order; rtx[rtx_head:] not yet acknowledged
        self.rtx_head = 0
        self.in_flight: OrderedDict[Sent, None] = OrderedDict()
        # to retransmit (lazily skipped once delivered); None when empty: an empty deque
        # costs 760 bytes, for every idle connection
        self.lost_q: deque[Sent] | None = None
        self.sacked_bytes = 0
        self.lost_bytes = 0
        self.reno_sacked = 0  # without SACK: one segment per duplicate ACK (as Linux counts)
        self.sack_cache: list[tuple[int, int]] = []  # the previous ACK's SACK blocks
        self.sack_ok = False
        # congestion control and recovery
        self.cwnd = 10 * self.mss
        self.ssthresh = 1 << 30
        self.cc = Cubic(self.mss)  # (kept with BBR too: an episode's undo state names it)
        self.bbr: Bbr | None = Bbr(self.mss, iss) if bbr else None  # tcp-congestion = bbr
        self.dupacks = 0
        self.in_recovery = False  # fast recovery (RFC 6675 / PRR)
        self.in_loss = False  # after a timeout, until what was sent before it is acknowledged
        self.recover = iss
        self.prr_delivered = 0
        self.prr_out = 0
        self.recover_fs = 0
        # undo (Linux's undo_marker / undo_retrans, with the ranges themselves): the current
        # loss episode, and earlier ones whose retransmissions still await D-SACKs (recovery.py),
        # oldest first
        self.undo: Episode | None = None
        self.undo_older: list[Episode] | None = None
        self.undo_done = False  # the latest episode was undone: an earlier one may be next
        # cwnd validation (RFC 7661, as Linux's tcp_cwnd_validate): grow only when used
        self.max_flight = 0
        self.max_flight_seq = iss
        self.cwnd_limited = False
        self._init_rack()
        self._init_pacing()
        self._init_resume(iss)

    # --- application interface -----------------------------------------------------------------

    def send(self: Self, data: bytes) -> None:
        """Queue ``data``; it goes out at the Stack's next flush."""
        if self.state not in CAN_SEND and self.state not in (State.SYN_SENT, State.SYN_RECEIVED):
            return
        if self.fin_queued or not data:
            return
        self._queue(data)
        self.stack.mark_output(self)

    # --- the buffer and the scoreboard ---------------------------------------------------------

    def _pipe(self) -> int:
        """RFC 6675 pipe: bytes believed in flight (sent, not SACKed, not deemed lost)."""
        flight = (
            self.snd_max - self.snd_una - self.sacked_bytes - self.lost_bytes - self.reno_sacked
        )
        return flight if flight > 0 else 0

    def _mark_lost(self, rec: Sent) -> None:
        if rec.state != INFLIGHT:
            return
        rec.state = LOST
        self.lost_bytes += rec.end - rec.start
        del self.in_flight[rec]
        if self.lost_q is None:
            self.lost_q = deque()
        self.lost_q.append(rec)

    def _forget_sent(self) -> None:
        """Drop the record (the connection is gone)."""
        self.rtx = []
        self.rtx_head = 0
        self.in_flight = OrderedDict()
        self.lost_q = None
        self.undo = None
        self.undo_older = None

    # --- output --------------------------------------------------------------------------------

    def _transmit(self, rec: Sent, now: float, options: bytes) -> None:
        """Put ``rec`` on the wire (again); ``options`` are the ACK's, if they fit."""
        start, end = rec.start, rec.end
        fin = self.fin_seq is not None and end == self.fin_seq + 1
        data_end = end - 1 if fin else end
        payload = self._segment_bytes(start, data_end - start) if data_end > start else b""
        flags = ACK
        if fin:
            flags |= FIN
        if payload and data_end == self._data_end():
            flags |= PSH
        if len(payload) + len(options) > self.mss + (TIMESTAMP_LEN if self.ts_ok else 0):
            options = self._options_for(options, len(payload))  # (_payload_room, inlined)
        self._send_segment(start, flags, payload, options)
        rec.xmit = now
        self.pace_tokens -= end - start
        if self.t_rto is None:
            self.t_rto = now + self.rto

    def _new_segment(self, start: int, end: int, now: float, options: bytes) -> None:
        rec = Sent(start, end, now)
        self.rtx.append(rec)
        self.in_flight[rec] = None
        self.snd_nxt = self.snd_max = end
        self._transmit(rec, now, options)
        if self.in_recovery:
            self.prr_out += end - start

    def _retransmit(self, rec: Sent, now: float, options: bytes) -> None:
        if rec.state == LOST:
            self.lost_bytes -= rec.end - rec.start
        elif rec.state == INFLIGHT:
            del self.in_flight[rec]
        rec.state = INFLIGHT
        rec.retrans = True
        self.in_flight[rec] = None  # to the end: the newest transmission
        self.stack.count("tcp_retransmitted_segments")
        if self.in_recovery:
            self.prr_out += rec.end - rec.start
        episode = self.undo
        if episode is not None:
            if len(episode.ranges) >= UNDO_MAX_RANGES:
                self.undo = self.undo_older = None  # too many to remember: no undo
            else:
                episode.ranges[rec.start] = rec.end
                episode.retransmitted += 1
        self._transmit(rec, now, options)

    def _nothing_to_send(self) -> bool:
        """Nothing in flight, nothing to send or retransmit, no FIN due (an answer has just
        been acknowledged, or a request arrived): then :meth:`_send_data` would only refresh
        the pacer and the window validation, and the next send does both to the same
        values: nothing changes cwnd, ssthresh, srtt or the acknowledged point in between,
        the token bucket fills at the same rate whether it is topped up once or twice (or
        starts full, if pacing had no rate yet), and with nothing in flight the validation
        starts a new window either way."""
        return (
            self.snd_una == self.snd_max
            and self.lost_q is None
            and self.snd_nxt >= self._data_end()
            and (self.fin_seq is not None or not self.fin_queued)
        )

    def _send_data(self, now: float) -> bool:
        if self._nothing_to_send():
            self.t_pace = None
            return False
        sent = False
        # SACK blocks ride on data segments too: leave room for them within the MTU
        options = self._ack_options()
        mss = self._payload_room(options)
        self.t_pace = None
        self._pace_start(now, self._pipe())
        # 1. what is deemed lost, in the order it was found
        lost_q = self.lost_q
        while lost_q:
            rec = lost_q[0]
            if rec.state != LOST:
                lost_q.popleft()
                continue
            if self._pipe() >= self.cwnd or self._pace_blocked(now):
                return sent
            lost_q.popleft()
            self._retransmit(rec, now, options)
            sent = True
        if not self.lost_q:
            self.lost_q = None  # all sent: an empty deque still costs 760 bytes
        # 2. new data within both windows, at the pacing rate
        data_end = self._data_end()
        if self.snd_nxt < data_end:
            sent = self._send_new(now, data_end, mss, options) or sent
        if self.bbr is not None and self.snd_nxt >= data_end and self._pipe() < self.cwnd:
            self.bbr.note_app_limited(self.snd_max)  # the application is what limits it
        # 3. a FIN on its own
        if (
            self.fin_queued
            and self.fin_seq is None
            and self.snd_nxt == data_end
            and self._fin_fits()
        ):
            self._fin_sent(data_end)
            self._new_segment(data_end, data_end + 1, now, options)
            sent = True
        # 4. zero window: probe until it opens
        if (
            self.snd_wnd == 0
            and data_end > self.snd_nxt
            and self.snd_max == self.snd_una
            and self.t_persist is None
        ):
            self.t_persist = now + self.rto
        if sent:
            self._arm_tlp(now)
        self._validate_cwnd()
        return sent

    def _validate_cwnd(self) -> None:
        """Note, per window of data, the most in flight and whether cwnd was what stopped
        the sender (not the peer's window, pacing or the application). Once cwnd limited
        the sender in a window, that holds until the window is acknowledged (Linux 6.1's
        ``tcp_cwnd_validate``): a paced sender is cwnd-limited only at the end of a round."""
        flight = self.snd_max - self.snd_una
        limited = self._pipe() + self.mss > self.cwnd
        if (
            self.snd_una >= self.max_flight_seq
            or limited
            or (not self.cwnd_limited and flight > self.max_flight)
        ):
            self.max_flight = flight
            self.max_flight_seq = self.snd_max
            self.cwnd_limited = limited

    def _is_cwnd_limited(self) -> bool:
        if self.cwnd < self.ssthresh:  # slow start: grow while half the window is used
            return self.cwnd < 2 * self.max_flight
        return self.cwnd_limited

    # --- acknowledgements ----------------------------------------------------------------------

    def _ack_arrived(
        self: Self,
        ack: int,
        blocks: Sequence[tuple[int, int]],
        duplicate: bool,
        now: float,
    ) -> None:
        """An acceptable ACK (``ack`` unwrapped, at most ``snd_max``) with its SACK blocks
        (wire values); ``duplicate``: no data, no window change, something in flight."""
        prior_una = self.snd_una
        prior_sacked = self.sacked_bytes
        dsack = False
        sacks: list[tuple[int, int]] = []
        if blocks and self.sack_ok:
            dsack = self._read_sack_blocks(ack, blocks, sacks)
        newest: Sent | None = None
        rtt: float | None = None
        if ack > prior_una:
            newest = self._acked_records(ack)
        if sacks:
            newest = self._sacked_records(sacks, newest)
        if newest is not None:
            rtt = self._newest_delivered(newest, now)
        if dsack:
            self._rack_dsack_seen()
        if ack > prior_una:
            self._advance_una(ack, now)
        # (an ACK from behind, held on the way, may still bring news in its SACK blocks)
        delivered = max(ack - prior_una, 0) + (self.sacked_bytes - prior_sacked)
        # what is lost
        lost_before = self.lost_bytes
        if not self.sack_ok:
            self._newreno(ack, prior_una, duplicate)
        elif self.sacked_bytes or (self.in_flight and self.rack_xmit > float("-inf")):
            self._rack_detect_loss(now)
        if self._tlp_ack(ack, dsack, ack > prior_una, delivered > 0):
            self._reduce_once()
        # what the window does
        if self.in_loss and self.snd_una >= self.recover:
            self.in_loss = False
            self._episode_over()
        if self.in_recovery and self.snd_una >= self.recover:
            self._exit_recovery()
        if not self.in_recovery and not self.in_loss and self.lost_bytes:
            self._enter_recovery()
        if self.bbr is not None:
            self._bbr_ack(self.bbr, delivered, max(self.lost_bytes - lost_before, 0), rtt, now)
        elif self.in_recovery:
            self._prr(delivered)
        elif delivered > 0:
            self._grow(delivered, rtt, now)
        self._try_undo()
        # timers and the application
        if self.snd_max > self.snd_una:
            if ack > prior_una:
                self.t_rto = now + self.rto
                self._arm_tlp(now)
        else:
            self.t_rto = self.t_tlp = self.t_reo = None
        if ack > prior_una:
            if self.fin_seq is not None and ack > self.fin_seq:
                self._our_fin_acked(now)
            self._progress(now)
            self._drained_check()
        self.stack.mark_output(self)

    def _all_acked_plainly(self) -> bool:
        """Whether an ACK of everything sent would take none of :meth:`_ack_arrived`'s
        branches for loss, recovery, probes, undo or the FIN: then :meth:`_all_acked` is
        what it does."""
        return not (
            self.in_recovery
            or self.in_loss
            or self.lost_bytes
            or self.sacked_bytes
            or self.reno_sacked
            or self.tlp_end is not None
            or self.undo is not None
            or (self.undo_done and self.undo_older)
            or self.fin_seq is not None
        )

    def _all_acked(self: Self, now: float) -> None:
        """:meth:`_ack_arrived` for an ACK of ``snd_max`` without SACK blocks, when
        :meth:`_all_acked_plainly`: every record is acknowledged, so no loss is left to
        detect, no recovery, probe or undo to settle, and no timer but the stall clock."""
        ack = self.snd_max
        prior_una = self.snd_una
        rtt: float | None = None
        newest = self._acked_records(ack)
        if newest is not None:
            rtt = self._newest_delivered(newest, now)
        self._advance_una(ack, now)
        if self.bbr is not None:
            self._bbr_ack(self.bbr, ack - prior_una, 0, rtt, now)
        else:
            self._grow(ack - prior_una, rtt, now)
        self.t_rto = self.t_tlp = self.t_reo = None
        self._progress(now)
        self._drained_check()
        self.stack.mark_output(self)

    def _newest_delivered(self, newest: Sent, now: float) -> float | None:
        """RACK's reference moves to ``newest``, the most recently sent segment an ACK
        delivered; its round trip is sampled and returned, unless it was retransmitted
        (Karn)."""
        self._rack_delivered(newest, now)
        if newest.retrans:
            return None
        rtt = max(now - newest.xmit, 1e-6)
        self._rack_rtt_sample(rtt)
        self._rtt_update(rtt)
        return rtt

    def _drained_check(self: Self) -> None:
        """DRAINED, once, when what the application left with us falls below the low
        water mark (after an ACK that is news)."""
        if (
            self.drained_pending
            and self.send_buffered < self.send_low_water
            and self.state in CAN_SEND
        ):
            self.drained_pending = False
            self.stack.emit(DRAINED, self, None)

    def _read_sack_blocks(
        self, ack: int, blocks: Sequence[tuple[int, int]], out: list[tuple[int, int]]
    ) -> bool:
        """The new SACK information in ``blocks`` goes to ``out`` (unwrapped, clipped, minus
        what the previous ACK already said); True if the first block is a D-SACK."""
        dsack = False
        una = self.snd_una
        cache = self.sack_cache
        fresh: list[tuple[int, int]] = []
        for k, (left_w, right_w) in enumerate(blocks):
            left = unwrap(left_w, una)
            right = unwrap(right_w, una)
            if k == 0 and left < right:
                if right <= ack:
                    dsack = True
                elif len(blocks) > 1:
                    l1 = unwrap(blocks[1][0], una)
                    r1 = unwrap(blocks[1][1], una)
                    dsack = l1 <= left and right <= r1
                if dsack:
                    self._dsack_arrived(left, right)
                    continue
            left = max(left, ack)
            if not (left < right <= self.snd_max):
                continue
            fresh.append((left, right))
            for c_left, c_right in cache:
                if c_left <= left < c_right:
                    left = c_right
                if c_left < right <= c_right and left < c_left:
                    right = c_left
            if left < right:
                out.append((left, right))
        if ack >= una:  # (an ACK that newer ones overtook says less than the last one did)
            self.sack_cache = fresh
        return dsack

    def _dsack_arrived(self, left: int, right: int) -> None:
        """The peer got [left, right) twice: if we retransmitted it in this episode or an
        earlier one still awaiting its D-SACKs, that retransmission was not needed."""
        self.stack.count("tcp_dsack_received")
        for ranges in self._undo_candidates():
            point = left
            while point < right:
                end = ranges.pop(point, None)
                if end is None:
                    break
                point = end
            if point != left:
                return

    def _acked_records(self, ack: int) -> Sent | None:
        """Remove what ``ack`` covers from the record; the most recently sent one of them
        that was still in flight or deemed lost."""
        rtx, i = self.rtx, self.rtx_head
        newest: Sent | None = None
        lowest_unsacked: int | None = None
        while i < len(rtx) and rtx[i].end <= ack:
            rec = rtx[i]
            i += 1
            state = rec.state
            if state == SACKED:
                self.sacked_bytes -= rec.end - rec.start
            else:
                if state == INFLIGHT:
                    del self.in_flight[rec]
                elif state == LOST:
                    self.lost_bytes -= rec.end - rec.start
                if (  # rack.sent_after(rec, newest), inlined: once per segment acknowledged
                    newest is None
                    or rec.xmit > newest.xmit
                    or (rec.xmit == newest.xmit and rec.end > newest.end)
                ):
                    newest = rec
                if not rec.retrans and lowest_unsacked is None:
                    lowest_unsacked = rec.start
            rec.state = ACKED
        if i < len(rtx) and rtx[i].start < ack:
            rec = rtx[i]  # acknowledged in part (the peer's window cut it)
            if rec.state == SACKED:
                self.sacked_bytes -= ack - rec.start
            elif rec.state == LOST:
                self.lost_bytes -= ack - rec.start
            rec.start = ack
        if lowest_unsacked is not None and lowest_unsacked < self.rack_fack:
            self.reordering_seen = True  # delivered below what was already SACKed
        if ack > self.rack_fack:
            self.rack_fack = ack
        if i == len(rtx):
            if i:  # all acknowledged: drop the records, and the table in_flight grew to
                rtx.clear()
                i = 0
                self.in_flight = OrderedDict()
        elif i >= 1024 and i * 2 >= len(rtx):
            del rtx[:i]
            i = 0
        self.rtx_head = i
        return newest

    def _sacked_records(self, sacks: list[tuple[int, int]], newest: Sent | None) -> Sent | None:
        rtx = self.rtx
        fack = self.rack_fack
        for left, right in sacks:
            # the first record that starts within the block (one SACKed in part stays unSACKed)
            i = bisect.bisect_left(rtx, left, lo=self.rtx_head, key=_start)
            while i < len(rtx) and rtx[i].end <= right:
                rec = rtx[i]
                i += 1
                state = rec.state
                if state == SACKED:
                    continue
                if state == INFLIGHT:
                    del self.in_flight[rec]
                elif state == LOST:
                    self.lost_bytes -= rec.end - rec.start
                rec.state = SACKED
                self.sacked_bytes += rec.end - rec.start
                if (  # rack.sent_after(rec, newest), inlined: once per segment acknowledged
                    newest is None
                    or rec.xmit > newest.xmit
                    or (rec.xmit == newest.xmit and rec.end > newest.end)
                ):
                    newest = rec
                if not rec.retrans and rec.end < fack:
                    self.reordering_seen = True
                if rec.end > self.rack_fack:
                    self.rack_fack = rec.end
        return newest

    def _advance_una(self, ack: int, now: float) -> None:
        """What a new cumulative ACK does to the buffer and the timers."""
        acked = ack - self.snd_una
        data_acked = acked
        if self.fin_seq is not None and ack > self.fin_seq:
            data_acked -= 1
        if data_acked > 0:
            self._data_acked(data_acked)
        self.snd_una = ack
        if self.snd_nxt < ack:
            self.snd_nxt = ack
        if self.reno_sacked:
            self.reno_sacked = max(self.reno_sacked - acked, 0)
        self.retransmits = 0
        self.rto = self._computed_rto()
        self.dupacks = 0
        if ack >= self.obs_end:
            self._observe()  # a round measured for Careful Resume ended (resume.py)

    def _newreno(self, ack: int, prior_una: int, duplicate: bool) -> None:
        """Without SACK: three duplicate ACKs, or a partial ACK in recovery, mean the first
        unacknowledged segment is lost (RFC 6582)."""
        if duplicate and ack == prior_una:
            self.dupacks += 1
            flight = self.snd_max - self.snd_una
            self.reno_sacked = min(self.reno_sacked + self.mss, max(flight - self.mss, 0))
            if self.dupacks == DUP_THRESH and not self.in_recovery and not self.in_loss:
                self._mark_head_lost()
        elif ack > prior_una and self.in_recovery and ack < self.recover:
            self._mark_head_lost()

    def _mark_head_lost(self) -> None:
        if self.rtx_head < len(self.rtx):
            self._mark_lost(self.rtx[self.rtx_head])  # (already lost: nothing to do)

    # --- Tail Loss Probe -----------------------------------------------------------------------

    def _arm_tlp(self, now: float) -> None:
        if (
            not self.sack_ok
            or self.in_recovery
            or self.in_loss
            or self.tlp_end is not None
            or self.snd_max == self.snd_una
            or self.state not in (State.ESTABLISHED, State.CLOSE_WAIT, State.FIN_WAIT_1)
        ):
            self.t_tlp = None
            return
        segments = (self.snd_max - self.snd_una + self.mss - 1) // self.mss
        self.t_tlp = self._pto(now, segments)

    def _tail_loss_probe(self: Self, now: float) -> None:
        """The PTO fired: send one segment, new data if there is some the peer's window
        takes, else the last one again (RFC 8985 7.3)."""
        self.t_tlp = None
        if (
            self.in_recovery
            or self.in_loss
            or self.tlp_end is not None
            or self.snd_max == self.snd_una
        ):
            return
        options = self._ack_options()
        mss = self._payload_room(options)
        data_end = self._data_end()
        start = self.snd_nxt
        n = min(mss, data_end - start, self.snd_una + self.snd_wnd - start)
        self.stack.count("tcp_tlp_probes")
        if start < data_end and n > 0:
            end = start + n
            if self.fin_queued and end == data_end and self._fin_fits():
                self._fin_sent(end)
                end += 1
            self._new_segment(start, end, now, options)
            self.tlp_retrans = False
        else:
            rec = self.rtx[-1]
            if rec.state == SACKED or rec.state == ACKED:
                return
            self._retransmit(rec, now, options)
            self.tlp_retrans = True
        self.tlp_end = self.snd_max
        self.t_rto = now + self.rto
        self.stack.mark_output(self)
