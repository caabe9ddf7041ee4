"""A burst of new segments: the send path's hottest loop (``SendSide._send_data`` calls it).

One long method written out for speed (docs/performance.md, levers 16 and 20), in a module
of its own; it reads and writes the connection's send state as send.py's methods do.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Self

from ..owner import Owner
from ..segment import ACK, PSH, PacketBuilder
from .rack import Sent


class Burst:
    """The burst of :class:`~.connection.Connection` (a mixin: one object, one state)."""

    if not TYPE_CHECKING:  # (the type checker would hold the mixin to its empty slots)
        __slots__ = ()  # the attributes are the Connection's (connection.py)

    # What the burst uses of the connection, declared for the type checker only.
    stack: Owner[Self]
    builder: PacketBuilder
    local: tuple[bytes, int]
    remote: tuple[bytes, int]
    snd_una: int
    snd_nxt: int
    snd_max: int
    snd_wnd: int
    sacked_bytes: int
    lost_bytes: int
    reno_sacked: int
    cwnd: int
    rto: float
    pace_rate: float
    pace_tokens: float
    rcv_nxt: int
    rtx: list[Sent]
    in_flight: OrderedDict[Sent, None]
    fin_queued: bool
    t_rto: float | None
    in_recovery: bool
    prr_out: int
    ack_pending: int
    ack_now: bool
    t_delack: float | None
    dsack: tuple[int, int] | None
    last_ack_sent: int
    if TYPE_CHECKING:

        def _pace_blocked(self, now: float) -> bool: ...
        def _segment_bytes(self, seq: int, n: int) -> bytes: ...
        def _run_data(self, seq: int, n: int) -> tuple[bytes | bytearray, int]: ...
        def _advertised(self) -> int: ...
        def _fin_fits(self) -> bool: ...
        def _fin_sent(self, seq: int) -> None: ...
        def _new_segment(self, start: int, end: int, now: float, options: bytes) -> None: ...

    def _send_new(self: Self, now: float, data_end: int, mss: int, options: bytes) -> bool:
        """New segments of at most ``mss`` bytes (the MSS less ``options``, the ACK's) up to
        ``data_end`` while both windows and the pacer allow. Per segment this is
        ``_new_segment`` -> ``_transmit`` -> ``_send_segment`` written out once, with what
        cannot change during the burst read once (the peer's window, cwnd, our advertised
        window, the ports): a download sends ~90,000 segments a second through here. Runs of
        full segments that nothing can stop midway are built in one call (``build_run``), which
        leaves only their records to make one by one. A segment that carries the FIN goes the
        general way."""
        sent = False
        snd_nxt = self.snd_nxt
        # RFC 6675 pipe as _pipe() computes it; each new segment adds its length
        flight_raw = (
            self.snd_max - self.snd_una - self.sacked_bytes - self.lost_bytes - self.reno_sacked
        )
        right_edge = self.snd_una + self.snd_wnd
        cwnd = self.cwnd
        rto = self.rto
        pace_rate = self.pace_rate
        build = self.builder.build
        build_run = self.builder.build_run
        emit = self.stack.emit_packet
        emit_run = self.stack.emit_packets
        sport, dport = self.local[1], self.remote[1]
        rcv_nxt = self.rcv_nxt
        window = -1  # advertised at the first segment (not before: it moves rcv_adv)
        rtx_append = self.rtx.append
        in_flight = self.in_flight
        while snd_nxt < data_end:
            if pace_rate != 0.0 and self.pace_tokens <= 0 and self._pace_blocked(now):
                break
            flight = flight_raw if flight_raw > 0 else 0
            budget = min(right_edge - snd_nxt, cwnd - flight)
            # The full segments from here that this loop would send one by one with nothing
            # changing in between (within both windows, short of data_end, so no PSH or FIN;
            # while pacing tokens last): built in one call, their records made after.
            count = min(budget, data_end - snd_nxt - 1) // mss
            if count > 1 and pace_rate != 0.0:
                tokens = self.pace_tokens
                whole = tokens // mss
                count = min(count, int(whole) + (tokens != whole * mss))
            if count > 1:
                if window < 0:
                    window = self._advertised()
                start = snd_nxt
                snd_nxt += count * mss
                run_data, run_at = self._run_data(start, count * mss)
                emit_run(
                    build_run(
                        sport,
                        dport,
                        start,
                        rcv_nxt,
                        ACK,
                        window,
                        options,
                        run_data,
                        run_at,
                        mss,
                        count,
                    )
                )
                for at in range(start, snd_nxt, mss):
                    rec = Sent(at, at + mss, now)
                    rtx_append(rec)
                    in_flight[rec] = None
                self.snd_nxt = self.snd_max = snd_nxt
                self.pace_tokens -= count * mss
                if self.t_rto is None:
                    self.t_rto = now + rto
                if self.in_recovery:
                    self.prr_out += count * mss
                flight_raw += count * mss
                sent = True
                continue
            n = min(mss, data_end - snd_nxt)
            if budget < n:
                if budget <= 0 or (budget < mss and self.snd_max > self.snd_una):
                    break  # wait for the window rather than send a sliver
                n = budget
            start = snd_nxt
            end = start + n
            if self.fin_queued and end == data_end and self._fin_fits():
                self._fin_sent(end)
                self._new_segment(start, end + 1, now, options)
                return True  # the FIN is the last thing there is to send
            rec = Sent(start, end, now)
            rtx_append(rec)
            in_flight[rec] = None
            self.snd_nxt = self.snd_max = snd_nxt = end
            payload = self._segment_bytes(start, n)
            if window < 0:
                window = self._advertised()  # then the same for the rest of the burst
            emit(
                build(
                    sport,
                    dport,
                    start,
                    rcv_nxt,
                    ACK | PSH if end == data_end else ACK,
                    window,
                    options,  # n <= mss, the MSS less these options: they always fit
                    payload,
                )
            )
            self.pace_tokens -= n
            if self.t_rto is None:
                self.t_rto = now + rto
            if self.in_recovery:
                self.prr_out += n
            flight_raw += n
            sent = True
        if sent:  # what _send_segment notes after any segment with an ACK
            self.last_ack_sent = self.rcv_nxt
            self.ack_pending = 0
            self.ack_now = False
            self.t_delack = None
            if options and self.dsack is not None:
                self.dsack = None
        return sent
