"""CUBIC congestion control (RFC 9438) with HyStart++ (RFC 9406) in slow start.

NewReno adds one segment per round trip after a loss: at 20 ms and 300 Mbit/s (~550 segments
of window) it takes 5 s to get back to where it was, and paths with a real distance are where
that hurts. CUBIC grows as a cubic function of the time since the last reduction, centred on
the window where it happened (``w_max``): fast while far below it, flat around it, probing
beyond it; the reduction is to 0.7 of the window, not half. Where CUBIC would be slower than
Reno (short round trips) it follows a Reno-equivalent estimate instead (``w_est``).

HyStart++ ends slow start before it overshoots: per round trip it takes the smallest of the
first eight RTT samples, and when that rises by ``clamp(last / 8, 4 ms, 16 ms)`` over the
previous round's, the queue is building, so the window grows at a quarter of the rate
(Conservative Slow Start) for up to five rounds, then congestion avoidance begins, without a
loss. An RTT back below the baseline resumes slow start (the rise was noise).

This class only computes windows (in bytes, from the numbers it is given); the connection
decides when it is called (``send.py``: only when cwnd is what limits the sender).
"""

from __future__ import annotations

C = 0.4
BETA = 0.7
ALPHA = 3 * (1 - BETA) / (1 + BETA)  # Reno-friendly additive increase (RFC 9438 4.3)
# HyStart++ (RFC 9406 4.3)
MIN_RTT_THRESH = 0.004
MAX_RTT_THRESH = 0.016
MIN_RTT_DIVISOR = 8
N_RTT_SAMPLE = 8
CSS_GROWTH_DIVISOR = 4
CSS_ROUNDS = 5

_INF = float("inf")


class Cubic:
    """One connection's CUBIC and HyStart++ state; windows in bytes, times in seconds."""

    __slots__ = (
        "css_baseline",
        "css_rounds",
        "cur_round_min",
        "epoch",
        "frac",
        "k",
        "last_round_min",
        "last_time",
        "mss",
        "round_end",
        "samples",
        "w_est",
        "w_max",
    )

    def __init__(self, mss: int) -> None:
        self.mss = mss
        self.w_max = 0.0  # segments: the window at the last reduction
        self.k = 0.0  # seconds from the epoch's start until the cubic reaches w_max
        self.epoch: float | None = None  # congestion avoidance epoch (None: starts at next ACK)
        self.last_time = 0.0
        self.w_est = 0.0  # segments: the Reno-friendly estimate
        self.frac = 0.0  # bytes of increase not yet whole
        self.round_end = 0
        self.last_round_min = _INF
        self.cur_round_min = _INF
        self.samples = 0
        self.css_baseline: float | None = None  # in Conservative Slow Start
        self.css_rounds = 0

    # --- slow start: HyStart++ -----------------------------------------------------------------

    def slow_start(
        self, cwnd: int, ssthresh: int, acked: int, rtt: float | None, una: int, snd_max: int
    ) -> tuple[int, int]:
        """One ACK in slow start: the new (cwnd, ssthresh)."""
        if una >= self.round_end:  # a new round trip
            self.last_round_min = self.cur_round_min
            self.cur_round_min = _INF
            self.samples = 0
            self.round_end = snd_max
            if self.css_baseline is not None:
                self.css_rounds += 1
                if self.css_rounds >= CSS_ROUNDS:
                    self.css_baseline = None
                    return cwnd, cwnd  # into congestion avoidance, without a loss
        if rtt is not None:
            self.samples += 1
            if rtt < self.cur_round_min:
                self.cur_round_min = rtt
        inc = min(acked, cwnd)  # at most doubling, however stretched the ACK
        if self.css_baseline is None:
            last, cur = self.last_round_min, self.cur_round_min
            if self.samples >= N_RTT_SAMPLE and cur != _INF and last != _INF:
                thresh = min(max(last / MIN_RTT_DIVISOR, MIN_RTT_THRESH), MAX_RTT_THRESH)
                if cur >= last + thresh:
                    self.css_baseline = cur
                    self.css_rounds = 0
        elif self.samples >= N_RTT_SAMPLE and self.cur_round_min < self.css_baseline:
            self.css_baseline = None  # the delay went down again: a false alarm
        if self.css_baseline is not None:
            inc //= CSS_GROWTH_DIVISOR
        return min(cwnd + inc, max(ssthresh, 2 * self.mss)), ssthresh

    # --- congestion avoidance ------------------------------------------------------------------

    def w_cubic(self, t: float) -> float:
        return C * (t - self.k) ** 3 + self.w_max

    def avoid(self, cwnd: int, acked: int, now: float, srtt: float) -> int:
        """One ACK in congestion avoidance (RFC 9438 4.2-4.4): the new cwnd."""
        mss = self.mss
        w = cwnd / mss
        if self.epoch is None:
            self.epoch = now
            if w < self.w_max:
                self.k = ((self.w_max - w) / C) ** (1 / 3)
            else:
                self.k = 0.0
                self.w_max = w
            self.w_est = w
            self.frac = 0.0
        self.last_time = now
        t = now - self.epoch
        segments = acked / mss
        alpha = ALPHA if self.w_est < self.w_max else 1.0
        self.w_est += alpha * segments / w
        if self.w_cubic(t) < self.w_est:
            target = self.w_est  # the Reno-friendly region
            increase = (target - w) * mss
        else:
            target = min(max(self.w_cubic(t + srtt), w), 1.5 * w)
            increase = (target - w) / w * segments * mss
        self.frac += max(increase, 0.0)
        whole = int(self.frac)
        self.frac -= whole
        return cwnd + whole

    def idle(self, now: float) -> None:
        """Not limited by cwnd: time does not count towards the cubic (RFC 9438 5.8)."""
        if self.epoch is not None:
            self.epoch += now - self.last_time
        self.last_time = now

    # --- reductions ----------------------------------------------------------------------------

    def reduce(self, cwnd: int) -> int:
        """A loss (RFC 9438 4.6-4.7, with fast convergence): the new ssthresh."""
        w = cwnd / self.mss
        self.w_max = w * (1 + BETA) / 2 if w < self.w_max else w
        self.epoch = None
        self.css_baseline = None
        return max(int(w * BETA * self.mss), 2 * self.mss)

    def timeout(self) -> None:
        """A retransmission timeout: forget the epoch and the slow-start rounds (as Linux)."""
        self.epoch = None
        self.w_max = 0.0
        self.css_baseline = None
        self.last_round_min = self.cur_round_min = _INF
        self.samples = 0

    def state(self) -> tuple[float, float]:
        return (self.w_max, self.k)

    def restore(self, state: tuple[float, float]) -> None:
        """Undo: the reduction was for nothing; a new epoch starts from the old peak."""
        self.w_max, self.k = state
        self.epoch = None
