"""BBR congestion control (v1, after Linux's tcp_bbr.c), chosen with ``tcp-congestion = bbr``.

CUBIC takes every loss for a full queue and cuts the window by 30 %. Where the bottleneck's
buffer is shallow that is wrong most of the time: wireguard-go's socket on Debian holds
212,992 bytes (about 90 datagrams) in front of a 20 ms path whose window is ~1,000
segments, so a burst of a millisecond overflows it while the path is far from full, and a
loss-based sender spends its time recovering (issue 12: 180 Mbit/s where Linux's BBR moves
310-330 into the same receiver). BBR models the path instead: the bottleneck bandwidth
(``bw``: the highest delivery rate of the last 10 round trips) and the propagation round trip
(``min_rtt``: the lowest RTT of the last 10 s). It paces at ``pacing_gain x bw`` and keeps
``cwnd_gain x bw x min_rtt`` in flight; a loss costs the window only what was lost, for one
round trip (packet conservation), not a share of the rate.

States, as Linux's: STARTUP paces at 2/ln 2 x bw until bw has not grown by a quarter in three
rounds; DRAIN paces below bw until the queue STARTUP built is gone; PROBE_BW cycles through
eight phases of one ``min_rtt`` each (1.25 to probe for more, 0.75 to drain what that
queued, six at 1); PROBE_RTT holds four segments in flight for 200 ms when ``min_rtt`` was
not seen again for 10 s, so the propagation delay is measured without the sender's own queue.

Unlike Linux, the delivery rate is sampled once per round trip (what was delivered, SACKed
included, over the round's duration), not per ACK from per-packet send state: a record per
segment would cost every CUBIC connection too, and a round's average is what the windowed
maximum needs (a per-ACK rate over a few segments reads ACK compression as bandwidth). A
round the application left short (``app_limited``) counts only if it was faster. The window
also holds what ACKs deliver in a burst beyond ``bw`` (Linux's ``extra_acked``): receivers
that read in batches would otherwise leave the sender waiting between them.

This class computes from the numbers it is given (bytes, seconds); ``recovery.py`` feeds it.
"""

from __future__ import annotations

STARTUP, DRAIN, PROBE_BW, PROBE_RTT = 0, 1, 2, 3
STATE_NAMES = ("startup", "drain", "probe_bw", "probe_rtt")
HIGH_GAIN = 2.885  # 2 / ln 2: the rate that doubles what is delivered every round trip
DRAIN_GAIN = 1 / HIGH_GAIN
CWND_GAIN = 2.0
CYCLE = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)  # PROBE_BW's pacing gains, a min_rtt each
BW_ROUNDS = 10  # the bandwidth filter's window, in round trips
MIN_RTT_WINDOW = 10.0  # seconds a min_rtt holds without being seen again
PROBE_RTT_TIME = 0.2
FULL_BW_GROWTH = 1.25  # STARTUP ends when bw grew less than this ...
FULL_BW_ROUNDS = 3  # ... in this many rounds
MIN_SEGMENTS = 4  # the smallest window (and PROBE_RTT's)
INITIAL_SEGMENTS = 10
PACING_MARGIN = 0.99  # pace 1 % below the estimate, as Linux, so no queue builds at gain 1
# ACK aggregation (Linux's bbr_update_ack_aggregation): the most delivered beyond what bw would
# deliver in one epoch, kept over two windows of this many rounds, is added to the window ...
EXTRA_ACKED_ROUNDS = 5
EXTRA_ACKED_MAX = 0.1  # ... up to 100 ms at bw


class Bbr:
    """One connection's BBR state: the path model, the state machine and the window."""

    __slots__ = (
        "app_limited_seq",
        "bw",
        "conservation_end",
        "cwnd_gain",
        "cycle_index",
        "cycle_stamp",
        "delivered",
        "epoch_acked",
        "epoch_start",
        "extra_acked",
        "extra_acked_rounds",
        "full_bw",
        "full_bw_count",
        "full_bw_reached",
        "min_rtt",
        "min_rtt_stamp",
        "mss",
        "pacing_gain",
        "prior_cwnd",
        "probe_rtt_done",
        "probe_rtt_round_done",
        "round_delivered",
        "round_end",
        "round_first",
        "round_sent_from",
        "round_start",
        "rounds",
        "samples",
        "state",
    )

    def __init__(self, mss: int, phase: int = 2) -> None:
        self.mss = mss
        self.state = STARTUP
        self.pacing_gain = HIGH_GAIN
        self.cwnd_gain = HIGH_GAIN
        self.bw = 0.0  # bytes per second: the max of ``samples``
        self.samples: list[tuple[int, float]] = []  # (round, delivery rate) of recent rounds
        self.min_rtt: float | None = None
        self.min_rtt_stamp = 0.0
        self.delivered = 0  # bytes delivered (acknowledged or SACKed) so far
        self.rounds = 0
        self.round_end = -1  # delivery at or past this ends the round (-1: none begun)
        self.round_first = -1  # ... and where its data began
        self.round_sent_from = 0.0  # when the round before began: its data left from then on
        self.round_start = 0.0
        self.round_delivered = 0
        self.app_limited_seq = -1  # the data sent up to here left while the sender was idle
        self.full_bw = 0.0
        self.full_bw_count = 0
        self.full_bw_reached = False
        self.cycle_index = phase % len(CYCLE)  # PROBE_BW's first phase (never the 0.75 one)
        if self.cycle_index == 1:
            self.cycle_index = 2
        self.cycle_stamp = 0.0
        self.probe_rtt_done: float | None = None
        self.probe_rtt_round_done = False
        self.prior_cwnd = 0
        self.conservation_end: int | None = None  # in packet conservation until una reaches it
        self.epoch_start = 0.0  # ACK aggregation: since when ACKs have come faster than bw ...
        self.epoch_acked = 0  # ... and what they delivered
        self.extra_acked = [0, 0]  # the most beyond bw, this window and the one before
        self.extra_acked_rounds = 0

    # --- the model ------------------------------------------------------------------------------

    def bdp(self, gain: float = 1.0) -> int:
        """``gain`` x bw x min_rtt in bytes; the initial window while either is unknown."""
        if not self.bw or self.min_rtt is None:
            return INITIAL_SEGMENTS * self.mss
        return int(gain * self.bw * self.min_rtt)

    def pacing_rate(self, cwnd: int, srtt: float) -> float:
        """Bytes per second to pace at: the gain over bw, or over cwnd / srtt before a round
        was measured (as Linux's ``bbr_init_pacing_rate_from_rtt``)."""
        if self.bw:
            return self.pacing_gain * self.bw * PACING_MARGIN
        return HIGH_GAIN * cwnd / srtt

    def note_app_limited(self, snd_max: int) -> None:
        """The sender ran out of data with room in the window: rounds that deliver what was
        sent before ``snd_max`` say less about the path than about the application."""
        self.app_limited_seq = snd_max

    def _round(self, now: float, una: int, snd_max: int) -> bool:
        """Whether this ACK ends a round trip; if so, take its delivery rate."""
        if una < self.round_end:
            return False
        if self.min_rtt is not None and now - self.round_start < self.min_rtt:
            # what was in flight was delivered sooner than a round trip (a paced sender with
            # little out): the round goes on, so three rounds without growth, which end
            # STARTUP, are three round trips (mini-rounds of a few ms had ended it at 8 Mbit/s)
            return False
        began, first, sent_from = self.round_start, self.round_first, self.round_sent_from
        self.round_first = self.round_end  # the round's data: [round_first, round_end)
        self.round_end = snd_max
        self.round_sent_from = began
        self.round_start = now
        delivered = self.delivered - self.round_delivered
        self.round_delivered = self.delivered
        if first < 0 or now <= began or delivered <= 0:
            return False
        self.rounds += 1
        # over the longer of the round's ACKs and the sending of its data (the round before),
        # as Linux's max(ack_elapsed, send_elapsed): ACKs that come back bunched (a receiver
        # that drains its socket in bursts) would otherwise read as more than was ever sent
        rate = delivered / max(now - began, began - sent_from)
        app_limited = self.app_limited_seq > first  # sent while (or after) the sender idled
        if app_limited and rate < self.bw:
            return True  # a round the application left short: not the path's rate
        samples = self.samples
        samples.append((self.rounds, rate))
        oldest = self.rounds - BW_ROUNDS
        while samples[0][0] <= oldest:
            del samples[0]
        self.bw = max(r for _, r in samples)
        if not self.full_bw_reached and not app_limited:
            if self.bw >= self.full_bw * FULL_BW_GROWTH:
                self.full_bw = self.bw
                self.full_bw_count = 0
            else:
                self.full_bw_count += 1
                self.full_bw_reached = self.full_bw_count >= FULL_BW_ROUNDS
        return True

    def _aggregation(self, acked: int, now: float, new_round: bool, cwnd: int) -> None:
        """How far ACKs run ahead of ``bw`` (a receiver or a path that delivers in batches:
        wireguard-go draining its socket, our own reactor reading a batch at a time): a window
        of 2 BDP on a round trip measured between batches leaves the sender waiting for the
        next one (the funnel at 0 ms: cwnd 363 KB against 2.6 ms of srtt under load)."""
        if new_round:
            self.extra_acked_rounds += 1
            if self.extra_acked_rounds >= EXTRA_ACKED_ROUNDS:
                self.extra_acked_rounds = 0
                self.extra_acked = [0, self.extra_acked[0]]
        expected = self.bw * (now - self.epoch_start)
        if self.epoch_acked <= expected:
            self.epoch_acked, self.epoch_start, expected = 0, now, 0.0
        self.epoch_acked += acked
        extra = min(int(self.epoch_acked - expected), cwnd)
        if extra > self.extra_acked[0]:
            self.extra_acked[0] = extra

    def _rtt(self, rtt: float | None, now: float) -> bool:
        """Take an RTT sample; True when ``min_rtt`` had expired (time for PROBE_RTT)."""
        if self.min_rtt is None:
            if rtt is not None:
                self.min_rtt, self.min_rtt_stamp = rtt, now
            return False
        expired = now > self.min_rtt_stamp + MIN_RTT_WINDOW
        if rtt is not None and (rtt <= self.min_rtt or expired):
            self.min_rtt, self.min_rtt_stamp = rtt, now
        return expired

    # --- the state machine ----------------------------------------------------------------------

    def _enter(self, state: int, now: float) -> None:
        self.state = state
        if state == STARTUP:
            self.pacing_gain = self.cwnd_gain = HIGH_GAIN
        elif state == DRAIN:
            self.pacing_gain, self.cwnd_gain = DRAIN_GAIN, HIGH_GAIN
        elif state == PROBE_BW:
            self.cwnd_gain = CWND_GAIN
            self.pacing_gain = CYCLE[self.cycle_index]
            self.cycle_stamp = now
        else:
            self.pacing_gain = self.cwnd_gain = 1.0
            self.probe_rtt_done = None

    def _next_phase_due(self, now: float, pipe: int, lost: int) -> bool:
        """PROBE_BW: a phase lasts a min_rtt; probing goes on until it queued what it meant to
        (or lost), draining ends early once the queue is gone (Linux's bbr_is_next_cycle_phase)."""
        elapsed = now - self.cycle_stamp > (self.min_rtt or 0.0)
        gain = self.pacing_gain
        if gain > 1:
            return elapsed and (lost > 0 or pipe >= self.bdp(gain))
        if gain < 1:
            return elapsed or pipe <= self.bdp()
        return elapsed

    def _states(self, now: float, pipe: int, lost: int, new_round: bool, expired: bool) -> None:
        if self.state == STARTUP and self.full_bw_reached:
            self._enter(DRAIN, now)
        if self.state == DRAIN and pipe <= self.bdp():
            self._enter(PROBE_BW, now)
        elif self.state == PROBE_BW and self._next_phase_due(now, pipe, lost):
            self.cycle_index = (self.cycle_index + 1) % len(CYCLE)
            self.pacing_gain = CYCLE[self.cycle_index]
            self.cycle_stamp = now
        if expired and self.state != PROBE_RTT:
            self._enter(PROBE_RTT, now)
        if self.state == PROBE_RTT:
            if self.probe_rtt_done is None:
                if pipe <= MIN_SEGMENTS * self.mss:
                    self.probe_rtt_done = now + PROBE_RTT_TIME
                    self.probe_rtt_round_done = False
            else:
                if new_round:
                    self.probe_rtt_round_done = True
                if self.probe_rtt_round_done and now >= self.probe_rtt_done:
                    self.min_rtt_stamp = now
                    self._enter(PROBE_BW if self.full_bw_reached else STARTUP, now)

    # --- what the connection calls --------------------------------------------------------------

    def ack(
        self,
        cwnd: int,
        acked: int,
        lost: int,
        rtt: float | None,
        now: float,
        una: int,
        snd_max: int,
        pipe: int,
        quantum: int,
    ) -> int:
        """An ACK delivered ``acked`` bytes and RACK found ``lost`` more lost: the new window.
        ``una``: the highest sequence number delivered (acknowledged or SACKed); ``quantum``:
        the pacer's burst (pacing.py), three of which the window leaves room for."""
        if acked < 0:
            acked = 0  # (a cumulative ACK over what was SACKed can count less than nothing)
        self.delivered += acked
        new_round = self._round(now, una, snd_max)
        self._aggregation(acked, now, new_round, cwnd)
        expired = self._rtt(rtt, now)
        was_probe_rtt = self.state == PROBE_RTT
        self._states(now, pipe, lost, new_round, expired)
        if self.state == PROBE_RTT and not was_probe_rtt:
            self.prior_cwnd = cwnd
        elif was_probe_rtt and self.state != PROBE_RTT:
            cwnd = max(cwnd, self.prior_cwnd)
        if lost:
            cwnd = max(cwnd - lost, self.mss)
        if self.conservation_end is not None and una >= self.conservation_end:
            self.conservation_end = None
        if self.conservation_end is not None:
            cwnd = max(cwnd, pipe + acked)  # packet conservation: no more than delivered
        else:
            cwnd = self._grow(cwnd, acked, quantum)
        if self.state == PROBE_RTT:
            cwnd = min(cwnd, MIN_SEGMENTS * self.mss)
        return cwnd

    def _grow(self, cwnd: int, acked: int, quantum: int) -> int:
        """Toward the model's window: 2 BDP (2.89 in STARTUP and DRAIN) and three quanta."""
        target = self.bdp(self.cwnd_gain) + 3 * quantum
        if self.full_bw_reached:
            target += min(max(self.extra_acked), int(self.bw * EXTRA_ACKED_MAX))
            cwnd = min(cwnd + acked, target)
        elif cwnd < target or self.delivered < INITIAL_SEGMENTS * self.mss:
            cwnd += acked
        return max(cwnd, MIN_SEGMENTS * self.mss)

    def loss_episode(self, cwnd: int, pipe: int, snd_max: int, timeout: bool = False) -> int:
        """Recovery or a timeout begins; the window to use (the one before is kept for
        :meth:`episode_over`). Recovery keeps what is in flight and for one round sends no
        more than is delivered (packet conservation); after a timeout the window starts
        again from one segment and grows by what is delivered, up to the model's (as
        Linux's BBR in TCP_CA_Loss)."""
        self.prior_cwnd = max(self.prior_cwnd, cwnd) if self.state == PROBE_RTT else cwnd
        if timeout:
            self.conservation_end = None
            return self.mss
        self.conservation_end = snd_max
        return max(pipe, self.mss)

    def episode_over(self, cwnd: int) -> int:
        """Recovery ended: back to the window from before it, if that was larger."""
        self.conservation_end = None
        return max(cwnd, self.prior_cwnd)
