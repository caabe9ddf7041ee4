"""Header prediction's two fast paths (connection.py's ``segment_arrived`` decides when).

Van Jacobson's prediction, as in BSD's tcp_input: the next in-order data of an established
connection that changes no window, and either acknowledges nothing new with nothing of ours in
flight (a download), or acknowledges all we sent while nothing is lost, SACKed or probed (an
answer, or the next request). Every check of the general path holds for such a segment, so
only what that path would do with it is done here: a bulk download spends most of its
segments in these few lines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

from ..owner import Owner


class Prediction:
    """The fast paths of :class:`~.connection.Connection` (a mixin: one object, one state)."""

    if not TYPE_CHECKING:  # (the type checker would hold the mixin to its empty slots)
        __slots__ = ()  # the attributes are the Connection's (connection.py)

    stack: Owner[Self]
    rcv_nxt: int
    snd_una: int
    snd_max: int
    snd_wl1: int
    snd_wl2: int
    last_heard: float
    keepalive_sent: int
    keepalive_idle: float
    probes_out: int
    t_keepalive: float | None
    ack_now: bool
    ack_pending: int
    if TYPE_CHECKING:

        def _receive_data(self, seq: int, payload: bytes, now: float) -> None: ...
        def _all_acked(self, now: float) -> None: ...

    def _in_order_data(self: Self, payload: bytes, now: float) -> None:
        """segment_arrived for a predicted segment (its conditions hold): acceptable, in
        order, within the window, ACK not news, no SACK, no window change."""
        seq = self.rcv_nxt
        self.last_heard = now
        self.keepalive_sent = 0
        self.probes_out = 0
        if self.keepalive_idle:
            self.t_keepalive = now + self.keepalive_idle
        # _process_ack's one effect here: the window update bookkeeping (RFC 9293 3.10.7.4)
        ack = self.snd_una
        if seq > self.snd_wl1 or (seq == self.snd_wl1 and ack >= self.snd_wl2):
            self.snd_wl1, self.snd_wl2 = seq, ack
        self._receive_data(seq, payload, now)
        if self.ack_now or self.ack_pending:
            self.stack.mark_output(self)

    def _in_order_data_acking_all(self: Self, payload: bytes, now: float) -> None:
        """segment_arrived for predicted data that acknowledges everything we sent (the
        conditions of both predictions hold): _process_ack's window bookkeeping and its
        call of the ACK's plain case, then the data, as the general path orders them."""
        seq = self.rcv_nxt
        ack = self.snd_max
        self.last_heard = now
        self.keepalive_sent = 0
        self.probes_out = 0
        if self.keepalive_idle:
            self.t_keepalive = now + self.keepalive_idle
        if seq > self.snd_wl1 or (seq == self.snd_wl1 and ack >= self.snd_wl2):
            self.snd_wl1, self.snd_wl2 = seq, ack
        self._all_acked(now)
        self._receive_data(seq, payload, now)
        if self.ack_now or self.ack_pending:
            self.stack.mark_output(self)
