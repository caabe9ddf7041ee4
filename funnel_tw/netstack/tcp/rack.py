"""Loss detection by time: RACK-TLP (RFC 8985), with D-SACK (RFC 2883) adapting it.

Every segment sent is a :class:`Sent` record with the time it (last) left. A segment is lost
when one sent after it has been delivered (acknowledged or SACKed) and it is itself still
missing a reordering window later: ``xmit + RACK.rtt + reo_wnd <= now``. So a datagram held
back a few milliseconds on the way is not taken for lost, as counting duplicate ACKs would.

The reordering window starts at ``min_rtt / 4`` once reordering has been seen (before that it is
zero as soon as three segments are SACKed, which is RFC 6675's DupThresh), and grows by that
much each round trip in which a D-SACK shows a retransmission was spurious; it falls back after
16 recoveries without one (RFC 8985 6.2). The Tail Loss Probe sends one segment two round trips
after the last one, so a loss at the end of a flight is found by SACK instead of by the RTO.

``in_flight`` holds the records sent and neither delivered nor deemed lost, oldest transmission
first (an OrderedDict: removal and moving to the end are O(1)), so finding the lost ones looks
only at segments that can be.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Self

from ..owner import Owner

INFLIGHT, SACKED, LOST, ACKED = 0, 1, 2, 3
REO_WND_PERSIST = 16  # recoveries a grown reordering window outlives without a new D-SACK
REO_WND_MAX_MULT = 255
WC_DELAYED_ACK = 0.2  # RFC 8985 WCDelAckT: the longest a peer may delay an ACK
MIN_PTO = 0.002  # a PTO never shorter than this (Linux's TCP_TIMEOUT_MIN)
# records still waiting out the reordering window that one loss detection looks at: beyond,
# the timer is set from RACK's own segment (see _rack_detect_loss)
REO_SCAN = 64


class Sent:
    """One segment sent: [start, end) in sequence space (a FIN counts), when it last left,
    whether it was ever retransmitted, and what is known of it (INFLIGHT, SACKED, LOST, ACKED)."""

    __slots__ = ("end", "retrans", "start", "state", "xmit")

    def __init__(self, start: int, end: int, xmit: float) -> None:
        self.start = start
        self.end = end
        self.xmit = xmit
        self.retrans = False
        self.state = INFLIGHT

    def __repr__(self) -> str:
        return f"<Sent {self.start}-{self.end} at {self.xmit} {self.state}{'R' * self.retrans}>"


def sent_after(t1: float, end1: int, t2: float, end2: int) -> bool:
    """RFC 8985 RACK_sent_after: the first segment left after the second."""
    return t1 > t2 or (t1 == t2 and end1 > end2)


class RackSide:
    """RACK-TLP state of :class:`~.connection.Connection` (a mixin: one object, one state)."""

    if not TYPE_CHECKING:  # (the type checker would hold the mixin to its empty slots)
        __slots__ = ()  # the attributes are the Connection's (connection.py)

    stack: Owner[Self]
    mss: int
    srtt: float | None
    snd_una: int
    snd_max: int
    sacked_bytes: int
    lost_bytes: int
    in_recovery: bool
    in_loss: bool
    in_flight: OrderedDict[Sent, None]
    t_rto: float | None
    if TYPE_CHECKING:

        def _mark_lost(self, rec: Sent) -> None: ...

    def _init_rack(self) -> None:
        self.rack_xmit = float("-inf")  # when the most recently sent delivered segment left
        self.rack_end = 0  # ... and where it ends
        self.rack_rtt = 0.0  # the round trip of that segment
        self.rack_fack = 0  # the highest sequence number delivered (acknowledged or SACKed)
        self.min_rtt: float | None = None
        self.reordering_seen = False
        self.reo_wnd_mult = 1
        self.reo_wnd_persist = 0
        self.dsack_round: int | None = None  # one reo_wnd step per round trip
        self.t_reo: float | None = None  # the reordering timer (RFC 8985 6.3)
        # Tail Loss Probe (RFC 8985 7)
        self.t_tlp: float | None = None
        self.tlp_end: int | None = None  # snd_max when the probe went: an episode is open
        self.tlp_retrans = False  # the probe was a retransmission (not new data)

    # --- RFC 8985 6.2, step 2: what a delivered segment tells -----------------------------------

    def _rack_delivered(self, rec: Sent, now: float) -> None:
        """``rec`` was just acknowledged or SACKed (the caller passes the most recently sent
        one of an ACK: only that one can move RACK's reference)."""
        rtt = now - rec.xmit
        if rec.retrans and self.min_rtt is not None and rtt < self.min_rtt:
            return  # too fast to be for the retransmission: the original got there
        self.rack_rtt = rtt
        if sent_after(rec.xmit, rec.end, self.rack_xmit, self.rack_end):
            self.rack_xmit = rec.xmit
            self.rack_end = rec.end

    def _rack_rtt_sample(self, rtt: float) -> None:
        if self.min_rtt is None or rtt < self.min_rtt:
            self.min_rtt = rtt

    # --- step 4: the reordering window ----------------------------------------------------------

    def _rack_dsack_seen(self) -> None:
        """A D-SACK arrived: widen the window, once per round trip (RFC 8985 6.2 step 4)."""
        if self.dsack_round is not None and self.snd_una >= self.dsack_round:
            self.dsack_round = None
        if self.dsack_round is None:
            self.dsack_round = self.snd_max
            self.reo_wnd_mult = min(self.reo_wnd_mult + 1, REO_WND_MAX_MULT)
            self.reo_wnd_persist = REO_WND_PERSIST
            self.reordering_seen = True

    def _rack_recovery_ended(self) -> None:
        self.reo_wnd_persist -= 1
        if self.reo_wnd_persist <= 0:
            self.reo_wnd_mult = 1

    def reo_wnd(self) -> float:
        if not self.reordering_seen:
            if self.in_recovery or self.in_loss:
                return 0.0
            if self.sacked_bytes >= 3 * self.mss:
                return 0.0
        min_rtt = self.min_rtt or 0.0
        return min(self.reo_wnd_mult * min_rtt / 4, self.srtt or min_rtt)

    # --- step 5: detecting losses ---------------------------------------------------------------

    def _rack_detect_loss(self, now: float) -> bool:
        """Mark what RACK deems lost; arm the reordering timer for what may still be. True if
        anything was marked."""
        if self.rack_xmit == float("-inf"):
            return False
        reo = self.reo_wnd()
        horizon = self.rack_rtt + reo
        rack_xmit, rack_end = self.rack_xmit, self.rack_end
        lost: list[Sent] = []
        timeout = 0.0
        waiting = 0
        # in_flight is in order of transmission, so the expired records come first, then those
        # still within the window, and the timeout (RFC 8985: the largest remaining time) is
        # the last of those's. In recovery with reordering seen the window (min_rtt / 4) can
        # hold thousands of records that every ACK would walk again (2 ms of CPU per MB at
        # 50 ms with 24 MiB in flight, issue 12): after REO_SCAN of them the timer is set for
        # a record sent with RACK's own, later than any of them, and no sooner than the RFC's.
        for rec in self.in_flight:
            if not sent_after(rack_xmit, rack_end, rec.xmit, rec.end):
                break  # this one and every later one left after RACK's segment
            remaining = rec.xmit + horizon - now
            if remaining <= 0:
                lost.append(rec)
                continue
            timeout = remaining  # the largest so far: they are in order of transmission
            waiting += 1
            if waiting >= REO_SCAN:
                timeout = rack_xmit + horizon - now
                break
        for rec in lost:
            self._mark_lost(rec)
        self.t_reo = now + timeout if timeout > 0 else None
        return bool(lost)

    # --- Tail Loss Probe (RFC 8985 7) -----------------------------------------------------------

    def _pto(self, now: float, flight_segments: int) -> float:
        """When to probe: two round trips, more when the peer may be holding a lone segment's
        ACK back, never after the RTO would fire."""
        if self.srtt is None:
            pto = 1.0
        else:
            pto = 2 * self.srtt
            if flight_segments <= 1:
                pto = max(pto, 1.5 * self.srtt + WC_DELAYED_ACK)
            pto = max(pto, MIN_PTO)
        deadline = now + pto
        if self.t_rto is not None and self.t_rto < deadline:
            deadline = self.t_rto
        return deadline

    def _tlp_ack(self, ack: int, dsack: bool, advanced: bool, delivered: bool) -> bool:
        """What an ACK says about an open probe episode (as Linux's tcp_process_tlp_ack); True
        if the probe repaired a loss, which calls for a congestion response."""
        end = self.tlp_end
        if end is None or ack < end:
            return False
        if not self.tlp_retrans or dsack:
            self.tlp_end = None  # new data, or a D-SACK: the probe was not needed
            return False
        if ack > end:
            self.tlp_end = None  # the probe was the only copy that got there
            self.stack.count("tcp_tlp_recoveries")
            return True
        if not advanced and not delivered:
            self.tlp_end = None
        return False
