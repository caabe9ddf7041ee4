"""Careful Resume (RFC 9959): a connection starts from what the last one to its peer learned.

Every public connection through the relay is a new TCP connection to the node, and slow start
from ten segments costs ~9 round trips before a 150 MB/s path at 50 ms is full (0.5 s of a
3 s download). The stack keeps per peer address the most a connection delivered in one round
trip and its smallest RTT (``paths.py``). A new connection to that peer:

- *Reconnaissance*: sends its initial window as usual. Once that is acknowledged, with an RTT
  that still looks like the saved path's (more than half of it, at most ten times it) and more
  queued than the window lets out, it jumps.
- *Unvalidated*: cwnd = half the saved window, paced at cwnd / RTT (not the usual 2x of slow
  start), no growth. When the window is full, the first segment sent after the jump is
  acknowledged or a round trip has passed, cwnd becomes what is in flight (or, if the sender
  did not fill it, what the path delivered since the jump).
- *Validating*: normal growth until the last segment sent unvalidated is acknowledged.
- *Safe retreat*: a loss while unvalidated or validating sets ssthresh to half of what the
  path delivered since the jump (the "pipe size"), recovery brings cwnd down to it, and the
  saved entry is forgotten.

What is saved when a connection ends is measured here too: per round trip (an ACK reaching the
highest sequence number sent when the round began), the bytes acknowledged, in rounds without a
loss. Below four initial windows nothing is worth saving. The receiving side keeps the window
it grew to, and a new connection to the same peer starts with it (within the stack's memory
budget): otherwise the sender's jump is held by a window still autotuning up (RFC 9959 4.7).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

from ..owner import Owner
from ..paths import PathEntry
from .bbr import Bbr

RECON = 1
UNVALIDATED = 2
VALIDATING = 3
DONE = 4  # remembered: the connection has ended
IW_SEGMENTS = 10
SAVE_MIN_IWS = 4  # RFC 9959 3.1: a window under 4 IW need not be saved


class Resume:
    """Careful Resume for :class:`~.connection.Connection` (a mixin: one object, one state)."""

    if not TYPE_CHECKING:  # (the type checker would hold the mixin to its empty slots)
        __slots__ = ()  # the attributes are the Connection's (connection.py)

    stack: Owner[Self]
    remote: tuple[bytes, int]
    mss: int
    cwnd: int
    srtt: float | None
    min_rtt: float | None
    snd_una: int
    snd_max: int
    receive_buffer: int
    receive_buffer_max: int
    window_granted: int
    rcv_rtt: float
    bbr: Bbr | None

    if TYPE_CHECKING:

        def _data_end(self) -> int: ...
        def _grant_window(self, want: int) -> int: ...

    def _init_resume(self, iss: int) -> None:
        self.cr_phase = 0  # 0: not resuming (the usual case: one test per ACK)
        self.cr_entry: PathEntry | None = None
        self.cr_mark = iss  # RECON: the end of the initial window; then the phase's bound
        self.cr_pipe = 0  # bytes the path delivered since the jump (RFC 9959 PipeSize)
        self.cr_start = 0.0
        self.obs_una = iss  # the round being measured: where it began, where it ends
        self.obs_end = iss
        self.obs_best = 0  # the most acknowledged in one loss-free round
        self.obs_clean = True

    def _resume_start(self: Self) -> None:
        """At establishment: take the peer's saved entry, if any, and start from it."""
        paths = self.stack.paths
        if paths is None or self.bbr is not None:
            return  # (BBR measures the path itself within a few round trips)
        entry = paths.take(self.remote[0], self.stack.now)
        if entry is None:
            return
        self.cr_entry = entry
        self._grant_window(min(entry.window, self.receive_buffer_max) - self.receive_buffer)
        if entry.cwnd // 2 > self.cwnd:
            self.cr_phase = RECON
            self.cr_mark = self.snd_una + IW_SEGMENTS * self.mss

    def _observe(self) -> None:
        """A measured round ended (``snd_una`` reached ``obs_end``): note it, begin the next."""
        got = self.snd_una - self.obs_una
        if self.obs_clean and got > self.obs_best:
            self.obs_best = got
        self.obs_una = self.snd_una
        self.obs_end = self.snd_max
        self.obs_clean = True

    def _resume_ack(self, delivered: int, now: float) -> bool:
        """One ACK while resuming; True: cwnd must not grow on it (Unvalidated)."""
        phase = self.cr_phase
        if phase == RECON:
            return self._reconnaissance(now)
        if phase == UNVALIDATED:
            self.cr_pipe += delivered
            flight = self.snd_max - self.snd_una
            if (
                flight + self.mss > self.cwnd
                or self.snd_una > self.cr_mark
                or now - self.cr_start > (self.srtt or 0.0)
            ):
                iw = IW_SEGMENTS * self.mss
                if flight < iw or flight <= self.cr_pipe:  # the sender did not fill it
                    self.cwnd = max(self.cr_pipe, iw)
                    self.cr_phase = 0
                else:
                    self.cwnd = flight
                    self.cr_mark = self.snd_max  # the last sequence sent unvalidated
                    self.cr_phase = VALIDATING
            return True
        if phase == VALIDATING:
            self.cr_pipe += delivered
            if self.snd_una >= self.cr_mark:
                self.cr_phase = 0  # resumed
        return False

    def _reconnaissance(self, now: float) -> bool:
        entry = self.cr_entry
        if self.snd_una < self.cr_mark or entry is None:
            return False
        rtt = self.min_rtt
        if rtt is None or rtt <= entry.rtt / 2 or rtt > 10 * entry.rtt:
            self.stack.count("tcp_resume_path_changed")
            self.cr_phase = 0  # another path: this connection's own measurement replaces it
            return False
        jump = entry.cwnd // 2
        if jump <= self.cwnd:
            self.cr_phase = 0  # slow start got there already
            return False
        if self._data_end() - self.snd_una <= self.cwnd:
            return False  # not held by cwnd: wait until there is more to send (RFC 9959 3.2)
        self.stack.count("tcp_resume_jumps")
        self.cr_pipe = self.snd_max - self.snd_una
        self.cwnd = jump
        self.cr_mark = self.snd_max  # the first sequence sent unvalidated begins here
        self.cr_start = now
        self.cr_phase = UNVALIDATED
        return True

    def _resume_congestion(self) -> int | None:
        """A loss or a timeout: the ssthresh a safe retreat imposes, or None. A loss also
        spoils the round being measured."""
        self.obs_clean = False
        phase = self.cr_phase
        if phase == RECON:
            self.cr_phase = 0  # normal congestion control from here (RFC 9959 3.2)
        elif phase in (UNVALIDATED, VALIDATING):
            self.cr_phase = 0
            self.stack.count("tcp_resume_retreats")
            paths = self.stack.paths
            if paths is not None and self.cr_entry is not None:
                paths.forget(self.remote[0], self.cr_entry)
            self.cr_entry = None
            return max(self.cr_pipe // 2, 2 * self.mss)
        return None

    def path_learned(self) -> tuple[int, float, int] | None:
        """What to save when the connection ends: (bytes per round, RTT, receive window), the
        old entry's values where this connection measured nothing new; None: it learned
        nothing (the entry it took, if any, keeps its age)."""
        old = self.cr_entry
        cwnd = self.obs_best if self.obs_best >= SAVE_MIN_IWS * IW_SEGMENTS * self.mss else 0
        window = self.receive_buffer if self.window_granted > 0 else 0
        if old is not None and window <= old.window:
            window = 0  # what it started with, not what it grew to
        if not cwnd and not window:
            return None
        if old is not None:
            cwnd = cwnd or old.cwnd
            window = window or old.window
        rtt = self.min_rtt or self.rcv_rtt or (old.rtt if old is not None else 0.0)
        return cwnd, rtt, window
