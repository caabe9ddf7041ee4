"""Congestion control and recovery of a connection: window growth, loss episodes, undo.

The window grows by slow start with HyStart++, then CUBIC (``cubic.py``), and only while it is
what limits the sender. A loss episode reduces it once: Proportional Rate Reduction (RFC 6937)
spreads the retransmissions and new data over the ACKs that come back, down to ssthresh.
Every retransmission of an episode is remembered; when D-SACKs (RFC 2883) have reported all of
them as duplicates, or the episode ended with nothing retransmitted, ``cwnd``, ``ssthresh`` and
CUBIC's state go back to what they were (as Linux's undo). Unlike Linux, an episode still
awaiting its D-SACKs when the next one begins is kept (a datagram held longer than a round
trip answers after that): each is undone on its own, newest first (docs/netstack.md). After a
timeout everything not SACKed is lost and is sent again from one segment of window.

With ``tcp-congestion = bbr`` (``bbr.py``) the window is the model's instead: no growth rule, no
reduction to ssthresh (which stays unset), PRR gives way to packet conservation for a round,
and the window from before an episode comes back when it ends.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Self

from ..owner import Owner
from .bbr import Bbr
from .cubic import Cubic
from .rack import INFLIGHT, LOST, SACKED, Sent

UNDO_EPISODES = 4  # earlier episodes kept for an undo while their D-SACKs are awaited


class Episode:
    """A loss episode that may still be undone: the window (and CUBIC's state) to go back
    to, the retransmitted ranges whose D-SACKs are still awaited, and how many were
    retransmitted. The current one is the connection's ``undo``; earlier ones still awaiting
    their D-SACKs wait in ``undo_older``."""

    __slots__ = ("cc", "cwnd", "ranges", "retransmitted", "ssthresh")

    def __init__(
        self,
        cwnd: int,
        ssthresh: int,
        cc: tuple[float, float],
        ranges: dict[int, int],
        retransmitted: int,
    ) -> None:
        self.cwnd = cwnd
        self.ssthresh = ssthresh
        self.cc = cc
        self.ranges = ranges
        self.retransmitted = retransmitted


class Recovery:
    """The congestion state of :class:`~.connection.Connection` (a mixin: one object, one state)."""

    if not TYPE_CHECKING:  # (the type checker would hold the mixin to its empty slots)
        __slots__ = ()  # the attributes are the Connection's (connection.py)

    # What this part uses of the rest of the connection, declared for the type checker only.
    stack: Owner[Self]
    mss: int
    srtt: float | None
    snd_una: int
    snd_max: int
    cwnd: int
    ssthresh: int
    cc: Cubic
    bbr: Bbr | None
    in_recovery: bool
    in_loss: bool
    recover: int
    prr_delivered: int
    prr_out: int
    recover_fs: int
    undo: Episode | None
    undo_older: list[Episode] | None
    undo_done: bool
    rtx: list[Sent]
    rtx_head: int
    rack_fack: int
    in_flight: OrderedDict[Sent, None]
    lost_q: deque[Sent] | None
    lost_bytes: int
    dupacks: int
    reno_sacked: int
    rtt_seq: int | None
    t_tlp: float | None
    t_reo: float | None
    tlp_end: int | None
    cr_phase: int
    if TYPE_CHECKING:

        def _pipe(self) -> int: ...
        def _pace_quantum(self) -> float: ...
        def _is_cwnd_limited(self) -> bool: ...
        def _rack_recovery_ended(self) -> None: ...
        def _send_data(self, now: float) -> bool: ...
        def _resume_congestion(self) -> int | None: ...
        def _resume_ack(self, delivered: int, now: float) -> bool: ...

    # --- congestion control --------------------------------------------------------------------

    def _cc_ssthresh(self) -> int:
        """The window after a loss (CUBIC's multiplicative decrease, cubic.py), or less
        after a jump that the path did not carry (a safe retreat, resume.py)."""
        ssthresh = self.cc.reduce(self.cwnd)
        retreat = self._resume_congestion()
        return ssthresh if retreat is None else min(ssthresh, retreat)

    def _grow(self, delivered: int, rtt: float | None, now: float) -> None:
        """Window growth on ``delivered`` bytes: slow start with HyStart++, then CUBIC; only
        while cwnd is what limits the sender, and not while a resumed window is unvalidated
        (resume.py decides that, and moves between its phases, on the same ACKs)."""
        if self.cr_phase and self._resume_ack(delivered, now):
            return
        if not self._is_cwnd_limited():
            self.cc.idle(now)
        elif self.cwnd < self.ssthresh:
            self.cwnd, self.ssthresh = self.cc.slow_start(
                self.cwnd, self.ssthresh, delivered, rtt, self.snd_una, self.snd_max
            )
        elif not self.in_loss:
            self.cwnd = self.cc.avoid(self.cwnd, delivered, now, self.srtt or 0.0)

    def _bbr_ack(self, bbr: Bbr, delivered: int, lost: int, rtt: float | None, now: float) -> None:
        """The window BBR's model gives after an ACK that delivered ``delivered`` bytes and
        let RACK find ``lost`` more lost (in and out of recovery: it replaces PRR too). Its
        round trips end when data sent after one began is delivered, SACKed included (RACK's
        ``rack_fack``), as Linux counts them: ``snd_una`` stands still at a hole for as long
        as the recovery lasts, and a round (and packet conservation) with it."""
        self.cwnd = bbr.ack(
            self.cwnd,
            delivered,
            lost,
            rtt,
            now,
            self.rack_fack,
            self.snd_max,
            self._pipe(),
            int(self._pace_quantum()),
        )

    def _begin_episode(self, keep_older: bool = False) -> None:
        """A loss episode starts: remember the window for an undo. With ``keep_older`` (a
        fast retransmit, not a timeout) the episode before, if its retransmissions still await
        their D-SACKs, is kept: when the path holds datagrams longer than a round trip, those
        come back after the next episode began, and each episode is undone on its own."""
        current = self.undo
        if keep_older and current is not None and current.ranges:
            older = self.undo_older or []
            older.append(current)
            del older[:-UNDO_EPISODES]
            self.undo_older = older
        elif not keep_older:
            self.undo_older = None
        self.undo_done = False
        self.undo = Episode(self.cwnd, self.ssthresh, self.cc.state(), {}, 0)

    def _enter_recovery(self: Self) -> None:
        self.stack.count("tcp_fast_retransmits")
        self._begin_episode(keep_older=True)
        if self.bbr is None:
            self.ssthresh = self._cc_ssthresh()
        else:
            self.cwnd = self.bbr.loss_episode(self.cwnd, self._pipe(), self.snd_max)
        self.in_recovery = True
        self.recover = self.snd_max
        self.prr_delivered = 0
        self.prr_out = 0
        self.recover_fs = max(self.snd_max - self.snd_una, 1)
        self.rtt_seq = None
        self.t_tlp = None
        self.tlp_end = None
        self.stack.mark_output(self)

    def _prr(self, delivered: int) -> None:
        """RFC 6937: send in proportion to what is delivered, down to ssthresh."""
        self.prr_delivered += max(delivered, 0)
        pipe = self._pipe()
        if pipe > self.ssthresh:
            sndcnt = math.ceil(self.prr_delivered * self.ssthresh / self.recover_fs) - self.prr_out
        else:  # slow start reduction bound
            limit = max(self.prr_delivered - self.prr_out, delivered) + self.mss
            sndcnt = min(self.ssthresh - pipe, limit)
        if self.prr_out == 0 and self.lost_bytes:
            sndcnt = max(sndcnt, self.mss)  # the fast retransmit goes at once
        self.cwnd = pipe + max(sndcnt, 0)

    def _exit_recovery(self) -> None:
        self.in_recovery = False
        if self.bbr is None:
            self.cwnd = max(self.ssthresh, 2 * self.mss)
        self._rack_recovery_ended()
        self._episode_over()

    def _episode_over(self) -> None:
        """Recovery ended. If nothing had to be retransmitted, nothing was lost: undo."""
        if self.bbr is not None:
            self.cwnd = self.bbr.episode_over(self.cwnd)
        if self.undo is not None and self.undo.retransmitted == 0:
            self._undo()

    def _reduce_once(self) -> None:
        """A loss repaired without recovery (a tail loss probe): reduce the window once
        (BBR: its model already saw the loss)."""
        if self.bbr is not None:
            return
        self.ssthresh = self._cc_ssthresh()
        self.cwnd = min(self.cwnd, self.ssthresh)

    def _try_undo(self) -> None:
        current = self.undo
        if current is not None and current.retransmitted and not current.ranges:
            self._undo()
        elif self.undo_done and self.undo_older:
            self._undo_older()

    def _undo_candidates(self) -> list[dict[int, int]]:
        """Where a D-SACKed retransmission may be remembered: this episode, then the earlier
        ones, newest first."""
        found = [self.undo.ranges] if self.undo is not None and self.undo.ranges else []
        if self.undo_older:
            found += [e.ranges for e in reversed(self.undo_older) if e.ranges]
        return found

    def _undo(self) -> None:
        """The losses were not: restore the window from before the episode (and take back
        what is still marked lost); then the earlier episodes' in turn, newest first, as far
        as they were not losses either."""
        current = self.undo
        assert current is not None  # (both callers checked)
        self.stack.count("tcp_undo")
        self._restore(current.cwnd, current.ssthresh, current.cc)
        self.undo = None
        self.undo_done = True
        if self.in_recovery:
            self.in_recovery = False
            self._rack_recovery_ended()
        self.in_loss = False
        if self.lost_bytes:
            self._unmark_lost()
        self._undo_older()

    def _undo_older(self) -> None:
        older = self.undo_older
        while older and older[-1].retransmitted and not older[-1].ranges:
            episode = older.pop()
            self.stack.count("tcp_undo")
            self._restore(episode.cwnd, episode.ssthresh, episode.cc)

    def _restore(self, cwnd: int, ssthresh: int, cc: tuple[float, float]) -> None:
        self.cwnd = max(self.cwnd, cwnd)
        self.ssthresh = max(self.ssthresh, ssthresh)
        self.cc.restore(cc)

    def _unmark_lost(self) -> None:
        records = [r for r in self.rtx[self.rtx_head :] if r.state in (INFLIGHT, LOST)]
        records.sort(key=lambda r: (r.xmit, r.end))
        self.in_flight = OrderedDict.fromkeys(records)
        for rec in records:
            rec.state = INFLIGHT
        self.lost_bytes = 0
        self.lost_q = None

    # --- the retransmission timeout ------------------------------------------------------------

    def _timeout_loss(self: Self, now: float) -> None:
        """RTO: everything not SACKed is lost; start again from one segment (RFC 5681 3.1)."""
        if not self.in_loss and not self.in_recovery:
            self._begin_episode()
            if self.bbr is None:
                self.ssthresh = self._cc_ssthresh()
        elif not self.in_loss and self.undo is None:
            self._begin_episode()
        self.cc.timeout()
        if self.bbr is None or self.in_loss:
            self.cwnd = self.mss
        else:
            self.cwnd = self.bbr.loss_episode(self.cwnd, 0, self.snd_max, timeout=True)
        self.in_recovery = False
        self.in_loss = True
        self.recover = self.snd_max
        self.dupacks = 0
        self.reno_sacked = 0
        self.t_tlp = self.t_reo = None
        self.tlp_end = None
        lost = 0
        lost_q: deque[Sent] = deque()
        for rec in self.rtx[self.rtx_head :]:
            if rec.state == SACKED:
                continue
            if rec.state == INFLIGHT:
                rec.state = LOST
            lost += rec.end - rec.start
            lost_q.append(rec)
        self.in_flight = OrderedDict()
        self.lost_q = lost_q or None
        self.lost_bytes = lost
        self._send_data(now)
