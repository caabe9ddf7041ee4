"""A connection's clocks: the retransmission timer (RFC 6298), delayed ACK, keepalive, the
zero-window probe, the stall (user) timeout and TIME-WAIT.

The stall timeout is RFC 5482's user timeout as Linux's ``TCP_USER_TIMEOUT`` applies it: data
we hold (unacknowledged, or unsent behind a zero window) that makes no progress for
``user_timeout`` seconds aborts the connection, so a peer that vanished, or one that keeps
advertising a zero window, cannot pin our buffers forever. Once the application has let go
(``orphan``), the shorter ``orphan_timeout`` applies, and also bounds FIN-WAIT-2 (Linux's
``tcp_fin_timeout``). Unanswered zero-window probes count like retransmissions.

Timers are absolute deadlines (None when off); the owner asks ``next_deadline`` and calls
``tick`` once it has passed. The RTT estimate that sets the RTO is kept here too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

from ..owner import Owner
from ..segment import ACK
from .state import SYNCHRONIZED, State

MIN_RTO = 0.2
MAX_RTO = 60.0
INITIAL_RTO = 1.0
DELAYED_ACK = 0.02
MAX_RETRANSMITS = 12
MAX_SYN_RETRANSMITS = 5
TIME_WAIT_SECONDS = 30.0
USER_TIMEOUT = 0.0  # default off, as in Linux; the overlay sets its own
ORPHAN_TIMEOUT = 30.0  # after the application let go: no progress this long resets


class Timers:
    """The timers of :class:`~.connection.Connection` (a mixin: one object, one state)."""

    if not TYPE_CHECKING:  # (the type checker would hold the mixin to its empty slots)
        __slots__ = ()  # the attributes are the Connection's (connection.py)

    # What this part uses of the rest of the connection, declared for the type checker only.
    # Methods that hand ``self`` to the owner say ``self: Self``: the owner expects the
    # concrete Connection, which this module cannot name (it is built from this one).
    stack: Owner[Self]
    state: State
    mss: int
    snd_una: int
    snd_nxt: int
    snd_max: int
    snd_wnd: int
    fin_seq: int | None
    cwnd: int
    ssthresh: int
    in_recovery: bool
    in_loss: bool
    lost_bytes: int
    ack_pending: int
    fin_queued: bool
    orphaned: bool
    if TYPE_CHECKING:

        @property
        def send_buffered(self) -> int: ...

        def _send_segment(
            self, seq: int, flags: int, payload: bytes = b"", options: bytes | None = None
        ) -> None: ...
        def send_ack(self) -> None: ...
        def _send_syn(self, now: float) -> None: ...
        def _send_data(self, now: float) -> bool: ...
        def _timeout_loss(self, now: float) -> None: ...
        def _tail_loss_probe(self, now: float) -> None: ...
        def _rack_detect_loss(self, now: float) -> bool: ...
        def _enter_recovery(self) -> None: ...
        def _prr(self, delivered: int) -> None: ...
        def _terminate(self, reason: str | None) -> None: ...
        def _reset(self, reason: str) -> None: ...

    def _init_timers(self, now: float) -> None:
        # RTT and the retransmission timeout
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = INITIAL_RTO
        self.rtt_seq: int | None = None
        self.rtt_time = 0.0
        self.retransmits = 0
        # deadlines
        self.t_rto: float | None = None
        self.t_delack: float | None = None
        self.t_persist: float | None = None
        self.t_timewait: float | None = None
        self.t_keepalive: float | None = None
        self.t_stall: float | None = None  # no progress by then: abort (user timeout)
        self.t_reo: float | None = None  # RACK's reordering window ends (rack.py)
        self.t_tlp: float | None = None  # the tail loss probe is due (rack.py)
        self.t_pace: float | None = None  # the pacer lets the next quantum go (pacing.py)
        # the stall bound and unanswered zero-window probes
        self.user_timeout = USER_TIMEOUT
        self.orphan_timeout = ORPHAN_TIMEOUT
        self.probes_out = 0
        # keepalive
        self.keepalive_idle = 0.0  # 0 = off
        self.keepalive_interval = 75.0
        self.keepalive_probes = 9
        self.keepalive_sent = 0
        self.last_heard = now

    def set_keepalive(self: Self, idle: float, now: float) -> None:
        """Probe after ``idle`` seconds of silence (0: off); takes effect at once."""
        self.keepalive_idle = idle
        self.keepalive_sent = 0
        if idle and self.state in SYNCHRONIZED and self.state is not State.TIME_WAIT:
            self.t_keepalive = now + idle
            self.stack.mark_output(self)
        else:
            self.t_keepalive = None

    def set_user_timeout(self: Self, seconds: float) -> None:
        """Abort when data we hold makes no progress for ``seconds`` (0: off); from the next
        progress or output on."""
        self.user_timeout = seconds
        self.t_stall = None
        self.stack.mark_output(self)

    def _stall_limit(self) -> float:
        if self.orphaned:
            return min(self.orphan_timeout, self.user_timeout or self.orphan_timeout)
        return self.user_timeout

    def _send_pending(self) -> bool:
        """Data or a FIN of ours not yet acknowledged (sent or not)."""
        if self.send_buffered or self.snd_max > self.snd_una:
            return True
        return self.fin_queued and (self.fin_seq is None or self.snd_una <= self.fin_seq)

    def _check_stall(self, now: float) -> None:
        """Arm the stall deadline if something waits for the peer and it is not armed yet."""
        if self.t_stall is not None or self.state not in SYNCHRONIZED:
            return
        if self.state is State.TIME_WAIT:
            return
        limit = self._stall_limit()
        if not limit:
            return
        if self._send_pending() or (self.orphaned and self.state is State.FIN_WAIT_2):
            self.t_stall = now + limit

    def _progress(self, now: float) -> None:
        """The peer acknowledged something new: the stall clock starts again."""
        self.t_stall = None
        self._check_stall(now)

    # --- round-trip time -----------------------------------------------------------------------

    def _sample_rtt(self, ack: int, now: float) -> None:
        if self.rtt_seq is None or ack <= self.rtt_seq:
            return
        self.rtt_seq = None
        self._rtt_update(max(now - self.rtt_time, 1e-6))

    def _rtt_update(self, rtt: float) -> None:
        """One round-trip sample (RFC 6298 2.2-2.3): from the handshake, then from each ACK
        that delivers a segment sent once (Karn)."""
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

    # --- deadlines -----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        best: float | None = None
        for t in (
            self.t_rto,
            self.t_delack,
            self.t_persist,
            self.t_timewait,
            self.t_keepalive,
            self.t_stall,
            self.t_reo,
            self.t_tlp,
            self.t_pace,
        ):
            if t is not None and (best is None or t < best):
                best = t
        return best

    def tick(self: Self, now: float) -> None:
        if self.t_timewait is not None and self.t_timewait <= now:
            self._terminate(None)
            return
        if self.t_stall is not None and self.t_stall <= now:
            self.t_stall = None
            self.stack.count("tcp_user_timeouts")
            self._reset("orphan timeout" if self.orphaned else "user timeout")
            return
        if self.t_delack is not None and self.t_delack <= now:
            self.t_delack = None
            if self.ack_pending:
                self.send_ack()
        if self.t_rto is not None and self.t_rto <= now:
            self.t_rto = None
            self._retransmit_timeout(now)
            if self.state is State.CLOSED:
                return
        if self.t_reo is not None and self.t_reo <= now:
            self.t_reo = None
            if self._rack_detect_loss(now) and not self.in_recovery and not self.in_loss:
                self._enter_recovery()
                self._prr(0)
            self.stack.mark_output(self)
        if self.t_tlp is not None and self.t_tlp <= now:
            self._tail_loss_probe(now)
        if self.t_pace is not None and self.t_pace <= now:
            self.t_pace = None
            self.stack.mark_output(self)
        if self.t_persist is not None and self.t_persist <= now:
            self.t_persist = None
            if self.snd_wnd == 0 and self.state in SYNCHRONIZED:
                self.probes_out += 1
                if self.probes_out > MAX_RETRANSMITS:
                    # the peer answers nothing, not even a probe: it is gone
                    self.stack.count("tcp_probe_timeouts")
                    self._terminate("connection timed out")
                    return
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
        self._timeout_loss(now)
        self.t_rto = now + self.rto
