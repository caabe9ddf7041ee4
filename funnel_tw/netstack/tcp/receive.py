"""The receive side of a connection: in-order delivery, reassembly, the advertised window.

Data received in order goes to the application at once (a DATA event) or, while reading is
paused, is held; either way the window shrinks only by what is held or queued out of order.
Out-of-order segments wait in a bounded queue and are reported back in SACK blocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

from ..events import DATA, EOF
from ..owner import Owner
from ..segment import sack_option
from .sequence import MASK

RECEIVE_WSCALE = 7  # offered window scale: windows up to 8 MiB
MAX_OOO_SEGMENTS = 1024
OUT_OF_WINDOW_ACK_INTERVAL = 0.5
ACK_EVERY_SEGMENTS = 32  # within one batch, ACK at least this often (the rest at flush)


class ReceiveSide:
    """The receive half of :class:`~.connection.Connection` (a mixin: one object, one state)."""

    # What this part uses of the rest of the connection, declared for the type checker only.
    # Methods that hand ``self`` to the owner say ``self: Self``: the owner expects the
    # concrete Connection, which this module cannot name (it is built from this one).
    stack: Owner[Self]
    local_mss: int
    sack_ok: bool
    if TYPE_CHECKING:

        def send_ack(self) -> None: ...
        def _fin_arrived(self, now: float) -> None: ...

    def _init_receive(self, receive_buffer: int) -> None:
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_wscale = 0
        self.receive_buffer = receive_buffer
        self.rcv_adv = 0  # right edge of the window we last advertised
        self.ooo: list[tuple[int, bytes]] = []  # out-of-order segments, sorted by start
        self.ooo_bytes = 0
        self.held: list[bytes] = []  # received in order but not delivered (reading paused)
        self.held_bytes = 0
        self.reading_paused = False
        self.ack_pending = 0
        self.ack_now = False
        self.fin_received = False
        self.eof_delivered = False
        self.pending_fin: int | None = None  # a FIN that arrived beyond a gap
        self.last_ooo: tuple[int, int] | None = None  # the out-of-order segment received last
        self.dsack: tuple[int, int] | None = None  # data received twice, for the next ACK
        self._last_oow_ack = float("-inf")
        self.orphaned = False  # the application let go: data is acknowledged and dropped

    # --- application interface -----------------------------------------------------------------

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self: Self) -> None:
        if not self.reading_paused:
            return
        self.reading_paused = False
        held, self.held = self.held, []
        before = self._window()
        self.held_bytes = 0
        for chunk in held:
            self.stack.emit(DATA, self, chunk)
        if self.fin_received and not self.eof_delivered:
            self.eof_delivered = True
            self.stack.emit(EOF, self, None)
        # tell the peer the window opened (receiver-side silly window avoidance)
        if self._window() - before >= min(self.receive_buffer // 2, 2 * self.local_mss) or (
            before == 0
        ):
            self.ack_now = True
            self.stack.mark_output(self)

    # --- the window and what every ACK carries -------------------------------------------------

    def _window(self) -> int:
        return max(0, self.receive_buffer - self.held_bytes - self.ooo_bytes)

    def _advertised(self) -> int:
        window = self._window()
        # never shrink the right edge we already advertised
        window = max(window, self.rcv_adv - self.rcv_nxt)
        scaled = min(window >> self.rcv_wscale, 0xFFFF)
        self.rcv_adv = self.rcv_nxt + (scaled << self.rcv_wscale)
        return scaled

    def _sack_blocks(self) -> list[tuple[int, int]]:
        """Up to three blocks (wire values): a D-SACK first if one is due (RFC 2883), then
        the block holding the segment received last, then the highest ones (RFC 2018)."""
        blocks: list[tuple[int, int]] = []
        for start, data in self.ooo:
            end = start + len(data)
            if blocks and start <= blocks[-1][1]:
                blocks[-1] = (blocks[-1][0], max(blocks[-1][1], end))
            else:
                blocks.append((start, end))
        # RFC 2018: the first block holds the segment received last; then the highest ones
        blocks.reverse()
        if self.last_ooo is not None:
            for i, (s, e) in enumerate(blocks):
                if s <= self.last_ooo[0] and self.last_ooo[1] <= e:
                    blocks.insert(0, blocks.pop(i))
                    break
        if self.dsack is not None:
            blocks.insert(0, self.dsack)
        return [(s & MASK, e & MASK) for s, e in blocks[:3]]

    def _ack_options(self) -> bytes:
        if self.sack_ok and (self.ooo or self.dsack is not None):
            return sack_option(self._sack_blocks())
        return b""

    def _duplicate_data(self, start: int, end: int) -> None:
        """[start, end) arrived again: report it in the next ACK (RFC 2883)."""
        self.stack.count("tcp_dsack_sent")
        if self.sack_ok:
            self.dsack = (start, end)
            self.ack_now = True

    def _out_of_window_ack(self, now: float) -> None:
        """Answer an unacceptable segment, at most every 0.5 s (as Linux does), so two ends
        that disagree cannot bounce ACKs at each other without end."""
        if now - self._last_oow_ack >= OUT_OF_WINDOW_ACK_INTERVAL:
            self._last_oow_ack = now
            self.send_ack()

    # --- segment text --------------------------------------------------------------------------

    def _receive_data(self, seq: int, payload: bytes, now: float) -> None:
        if seq < self.rcv_nxt:  # overlaps what we have: keep only the new part
            self._duplicate_data(seq, min(self.rcv_nxt, seq + len(payload)))
            payload = payload[self.rcv_nxt - seq :]
            seq = self.rcv_nxt
        window_end = self.rcv_nxt + max(self.rcv_adv - self.rcv_nxt, 0)
        if seq + len(payload) > window_end:
            payload = payload[: window_end - seq]
        if not payload:
            self.ack_now = True
            return
        if seq == self.rcv_nxt:
            self._deliver(payload)
            if self.ooo:
                self._drain_ooo()
                self.ack_now = True  # a gap was filled: tell the sender at once
            else:
                self.ack_pending += 1
                if self.ack_pending >= ACK_EVERY_SEGMENTS:
                    self.send_ack()  # inside a large batch: keep the sender's clock ticking
        else:
            self._store_ooo(seq, payload)
            # one duplicate ACK per out-of-order segment, at once (RFC 5681 4.2): a sender
            # without SACK counts them to start a fast retransmit
            self.send_ack()

    def _deliver(self: Self, payload: bytes) -> None:
        self.rcv_nxt += len(payload)
        if self.orphaned:
            return
        if self.reading_paused:
            self.held.append(payload)
            self.held_bytes += len(payload)
        else:
            self.stack.emit(DATA, self, payload)

    def _store_ooo(self, seq: int, payload: bytes) -> None:
        if len(self.ooo) >= MAX_OOO_SEGMENTS:
            self.stack.count("tcp_ooo_overflow")
            return
        end = seq + len(payload)
        for start, data in self.ooo:
            if start <= seq and end <= start + len(data):
                self._duplicate_data(seq, end)  # already have all of it
                self.last_ooo = (seq, end)  # so the block holding it comes second
                return
        self.ooo.append((seq, payload))
        self.ooo.sort(key=lambda item: item[0])
        self.ooo_bytes += len(payload)
        self.last_ooo = (seq, end)

    def _drain_ooo(self) -> None:
        while self.ooo and self.ooo[0][0] <= self.rcv_nxt:
            start, data = self.ooo.pop(0)
            self.ooo_bytes -= len(data)
            end = start + len(data)
            if end > self.rcv_nxt:
                self._deliver(data[self.rcv_nxt - start :])
        if self.pending_fin is not None and self.pending_fin == self.rcv_nxt and not self.ooo:
            self.pending_fin = None
            self._fin_arrived(self.stack.now)
