"""The receive side of a connection: in-order delivery, reassembly, the advertised window.

Data received in order goes to the application at once (a DATA event) or, while reading is
paused, is held; either way the window shrinks only by what is held or queued out of order.
Out-of-order segments wait in a bounded queue and are reported back in SACK blocks.

The window autotunes (as Linux's ``tcp_rcv_space_adjust``, "dynamic right-sizing"): it starts
at ``receive_buffer`` (128 KiB by default) and, once per receiver round trip, grows towards
twice what the application consumed in the last one, up to ``receive_buffer_max``, and as
far as the owner's stack-wide budget for growth allows (``Stack(receive_memory=...)``). The
receiver's round trip is the shortest time seen for a window's worth of data to arrive after
it was advertised (Linux's ``tcp_rcv_rtt_measure`` without timestamps). Nothing is allocated
for the window: data is held only while reading is paused or a gap waits to be filled, so an
idle connection costs no window-sized memory, and a paused one at most its window.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import TYPE_CHECKING, Self

from ..events import DATA, EOF
from ..owner import Owner
from ..segment import sack_option
from .sequence import MASK

RECEIVE_WSCALE = 7  # offered window scale, at least: windows up to 8 MiB
RECEIVE_BUFFER = 128 * 1024  # the window a connection starts with
# what autotuning may grow it to: 8 MiB, as Tailscale's netstack (Linux's tcp_rmem max is 6 MiB),
# ~650 Mbit/s at 100 ms (issue 12)
RECEIVE_BUFFER_MAX = 8 << 20
MAX_WSCALE = 14  # RFC 7323


class Block:
    """Out-of-order data received without a gap: [start, end), as the segments that came."""

    __slots__ = ("chunks", "end", "start")

    def __init__(self, start: int, end: int, chunks: list[bytes]) -> None:
        self.start = start
        self.end = end
        self.chunks = chunks

    def __repr__(self) -> str:
        return f"<Block {self.start}-{self.end} in {len(self.chunks)}>"


def _block_start(block: Block) -> int:
    return block.start


def wscale_for(window: int) -> int:
    """The window scale we offer: enough for ``window`` to within one unit (so 8 MiB takes
    7, as 16-bit windows of 128 bytes reach 8 MiB - 128), never less than 7."""
    scale = RECEIVE_WSCALE
    while scale < MAX_WSCALE and 0x10000 << scale < window:
        scale += 1
    return scale


MAX_OOO_SEGMENTS = 1024  # holes (blocks) held out of order; segments: at least this many
OUT_OF_WINDOW_ACK_INTERVAL = 0.5
ACK_EVERY_SEGMENTS = 32  # within one batch, ACK at least this often (the rest at flush)
DUPACKS_AT_ONCE = 3  # out-of-order segments ACKed one by one while rcv_nxt stays (DupThresh)


class ReceiveSide:
    """The receive half of :class:`~.connection.Connection` (a mixin: one object, one state)."""

    if not TYPE_CHECKING:  # (the type checker would hold the mixin to its empty slots)
        __slots__ = ()  # the attributes are the Connection's (connection.py)

    # What this part uses of the rest of the connection, declared for the type checker only.
    # Methods that hand ``self`` to the owner say ``self: Self``: the owner expects the
    # concrete Connection, which this module cannot name (it is built from this one).
    stack: Owner[Self]
    local_mss: int
    sack_ok: bool
    ts_ok: bool
    if TYPE_CHECKING:

        def send_ack(self) -> None: ...
        def _ts_option(self) -> bytes: ...
        def _fin_arrived(self, now: float) -> None: ...

    def _init_receive(self, receive_buffer: int, receive_buffer_max: int) -> None:
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_wscale = 0
        self.receive_buffer = receive_buffer  # the window now (autotuned)
        self.receive_buffer_max = max(receive_buffer_max, receive_buffer)
        self.window_granted = 0  # growth beyond the first window, from the owner's budget
        # the receiver's round trip: a window advertised, the time until its end arrived
        self.rcv_rtt = 0.0  # the shortest seen (0: none yet)
        self.rcv_rtt_seq = 0  # the measurement ends when rcv_nxt reaches this
        self.rcv_rtt_time: float | None = None  # ... and started then (None: not started)
        # what the application consumed since rcvq_time (from sequence number rcvq_seq on)
        self.rcvq_space = 0  # the most consumed in one round trip so far
        self.rcvq_seq = 0
        self.rcvq_time = 0.0
        self.rcv_adv = 0  # the furthest right edge we advertised: data up to it is taken
        self.rcv_edge = 0  # the right edge the buffer allows (exact; never moves back)
        # out-of-order data, as blocks without a gap, sorted (few: one per hole), so storing a
        # segment and building SACK blocks do not walk every segment of a large window
        self.ooo: list[Block] = []
        self.ooo_bytes = 0
        self.ooo_count = 0  # segments held out of order
        self.held: list[bytes] = []  # received in order but not delivered (reading paused)
        self.held_bytes = 0
        self.reading_paused = False
        self.ack_pending = 0
        self.ack_now = False
        self.fin_received = False
        self.eof_delivered = False
        self.pending_fin: int | None = None  # a FIN that arrived beyond a gap
        self.last_ooo: tuple[int, int] | None = None  # the out-of-order segment received last
        self.ooo_dup_nxt = 0  # the rcv_nxt that ooo_dupacks duplicate ACKs went out for
        self.ooo_dupacks = 0
        self.dsack: tuple[int, int] | None = None  # data received twice, for the next ACK
        self._last_oow_ack = float("-inf")
        self.orphaned = False  # the application let go: data is acknowledged and dropped

    # --- application interface -----------------------------------------------------------------

    def pause_reading(self) -> None:
        self.reading_paused = True

    def hold(self, data: bytes) -> None:
        """Give back delivered data the application did not take: it paused while DATA events
        for it were queued, or partway through a large one. It is held (in order: nothing is
        held while reading runs) and still counts against the window."""
        if self.orphaned or not data:
            return
        self.held.append(data)
        self.held_bytes += len(data)

    def resume_reading(
        self: Self, take: Callable[[bytes], bytes] | None = None, join_up_to: int = 0
    ) -> None:
        """Reading runs again: the held data goes to the application, then the EOF if one
        came. Without ``take`` it leaves as DATA events. With it, the owner takes each chunk
        at once (``take(chunk)`` returns what it did not take: the reader paused again), and
        the rest stays held: a reader that keeps pausing after each 64 KiB costs per chunk
        it takes, not per chunk held (a full 8 MiB window is ~6,000 of them). With
        ``join_up_to``, consecutive held chunks are handed over joined, up to that many
        bytes a call (a read's size): one call per read, not one per segment held."""
        if not self.reading_paused:
            return
        self.reading_paused = False
        before = self._window()
        if take is None:
            held, self.held = self.held, []
            self.held_bytes = 0
            for chunk in held:
                self.stack.emit(DATA, self, chunk)
        else:
            self._take_held(take, join_up_to)
        if (
            self.fin_received
            and not self.eof_delivered
            and not self.held
            and not self.reading_paused
        ):
            self.eof_delivered = True
            self.stack.emit(EOF, self, None)
        # tell the peer the window opened (receiver-side silly window avoidance)
        if self._window() - before >= min(self.receive_buffer // 2, 2 * self.local_mss) or (
            before == 0 and self._window() > 0
        ):
            self.ack_now = True
            self.stack.mark_output(self)

    def _take_held(self, take: Callable[[bytes], bytes], join_up_to: int) -> None:
        """Hand held chunks to ``take``, oldest first, until it stops taking: each alone, or
        as many as fit in ``join_up_to`` bytes joined. They leave ``held`` before they are
        handed over, so ``held`` is always what was not delivered: a pause and resume inside
        ``take`` goes on from the next chunk, an abort or orphan inside it empties the list
        and ends the loop."""
        held = self.held
        while held and not self.reading_paused and held is self.held:
            n, size = 1, len(held[0])
            while n < len(held) and size + len(held[n]) <= join_up_to:
                size += len(held[n])
                n += 1
            chunk = held[0] if n == 1 else b"".join(held[:n])
            del held[:n]  # one move of the list per call, not one per chunk
            self.held_bytes -= size
            rest = take(chunk)
            if rest:
                if held is self.held and not self.orphaned:
                    held.insert(0, rest)
                    self.held_bytes += len(rest)
                return

    # --- autotuning -----------------------------------------------------------------------------

    def _autotune_start(self, now: float) -> None:
        """At establishment: the first round trip's consumption is measured from here."""
        self.rcvq_space = min(self.receive_buffer, 10 * self.local_mss)
        self.rcvq_seq = self.rcv_nxt
        self.rcvq_time = now

    def _rcv_rtt_measure(self, now: float) -> None:
        """rcv_nxt reached the end of the window advertised when the last measurement began:
        that took (at least) a round trip. Keep the shortest, start the next."""
        started = self.rcv_rtt_time
        if started is not None:
            sample = now - started
            if sample > 0 and (not self.rcv_rtt or sample < self.rcv_rtt):
                self.rcv_rtt = sample
        self.rcv_rtt_seq = self.rcv_nxt + max(self.rcv_adv - self.rcv_nxt, 1)
        self.rcv_rtt_time = now

    def _grant_window(self: Self, want: int) -> int:
        """Grow the receive buffer by up to ``want`` bytes, as far as the stack's budget
        grants (given back when the connection closes): how much it grew."""
        granted = self.stack.grow_window(self, want) if want > 0 else 0
        self.receive_buffer += granted
        self.window_granted += granted
        return granted

    def _rcv_space_adjust(self: Self, now: float) -> None:
        """A receiver round trip has passed: if the application consumed more than ever in
        one, grow the window to twice that, plus more if it is growing fast (Linux's DRS)."""
        consumed_seq = self.rcv_nxt - self.held_bytes
        copied = consumed_seq - self.rcvq_seq
        space = self.rcvq_space
        if copied > space and not self.orphaned:
            window = 2 * copied + 16 * self.local_mss
            if space > 0:
                window += 2 * (window * (copied - space) // space)
            want = min(window, self.receive_buffer_max) - self.receive_buffer
            granted = self._grant_window(want)
            if granted > 0:
                self.stack.count("tcp_rcvbuf_grown")
            if granted >= want:
                self.rcvq_space = copied  # else: ask again next round (the budget may free)
        self.rcvq_seq = consumed_seq
        self.rcvq_time = now

    # --- the window and what every ACK carries -------------------------------------------------

    def _window(self) -> int:
        return max(0, self.receive_buffer - self.held_bytes - self.ooo_bytes)

    def _advertised(self) -> int:
        """The window field of the next segment. The edge the buffer allows (``rcv_edge``)
        never moves back, and the field is its distance rounded *up* to the scale's unit:
        rounded down, the edge crept back by up to a unit an ACK while a paused reader held
        data, and a sender that had used the window we gave saw what it sent past the new
        edge dropped (a hole, then an RTO, in issue 12's 50 ms funnel). Rounding up may put
        the field's edge up to a unit - 1 past ``rcv_edge``, and the next field's back by as
        much (RFC 7323 appendix F: the sender must allow it); ``rcv_adv`` keeps the furthest
        edge ever sent, and all data up to it is taken. Since ``rcv_edge`` moves only as the
        buffer allows, tiny segments cannot push the edge forward a unit at a time (the
        creep Linux's ``tcp_shrink_window`` is about): a reader that stops holds at most the
        window and a unit less a byte."""
        ws = self.rcv_wscale
        edge = max(self.rcv_nxt + (self._window() >> ws << ws), self.rcv_edge)
        edge = min(edge, self.rcv_nxt + (0xFFFF << ws))
        self.rcv_edge = edge
        scaled = -(-(edge - self.rcv_nxt) >> ws)
        right = self.rcv_nxt + (scaled << ws)
        if right > self.rcv_adv:
            self.rcv_adv = right
        return scaled

    def _sack_blocks(self) -> list[tuple[int, int]]:
        """Up to three blocks (wire values): a D-SACK first if one is due (RFC 2883), then
        the block holding the segment received last, then the highest ones (RFC 2018)."""
        blocks: list[tuple[int, int]] = []
        if self.dsack is not None:
            blocks.append(self.dsack)
        ooo = self.ooo
        latest: Block | None = None
        if self.last_ooo is not None:
            i = bisect.bisect_right(ooo, self.last_ooo[0], key=_block_start) - 1
            if i >= 0 and self.last_ooo[1] <= ooo[i].end:
                latest = ooo[i]
                blocks.append((latest.start, latest.end))
        for block in reversed(ooo):  # then the highest (looks at three at most)
            if len(blocks) >= 3:
                break
            if block is not latest:
                blocks.append((block.start, block.end))
        return [(s & MASK, e & MASK) for s, e in blocks[:3]]

    def _ack_options(self) -> bytes:
        ts = self._ts_option() if self.ts_ok else b""
        if self.sack_ok and (self.ooo or self.dsack is not None):
            return ts + sack_option(self._sack_blocks())
        return ts

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
            if self.rcv_nxt >= self.rcv_rtt_seq:
                self._rcv_rtt_measure(now)
            if self.rcv_rtt and now - self.rcvq_time >= self.rcv_rtt:
                self._rcv_space_adjust(now)
            if self.ooo:
                self._drain_ooo()
                self.ack_now = True  # a gap was filled: tell the sender at once
            else:
                self.ack_pending += 1
                if self.ack_pending >= ACK_EVERY_SEGMENTS:
                    self.send_ack()  # inside a large batch: keep the sender's clock ticking
        else:
            self._store_ooo(seq, payload)
            self._ooo_ack()

    def _ooo_ack(self) -> None:
        """A duplicate ACK per out-of-order segment, at once (RFC 5681 4.2), as far as the
        sender needs them: the first three for one ``rcv_nxt`` (what starts a fast
        retransmit), every one for a sender without SACK (it counts them). Past that, with
        SACK, one ACK at the end of the batch (or every 32 segments) carries the latest
        blocks, as Linux compresses SACKs (``tcp_comp_sack_nr``): where 3 % of the datagrams
        are held 5 ms there is nearly always a hole open, and an ACK per segment was 30 times
        the ACKs of a clean path, for both ends and wireguard-go to carry."""
        if self.ooo_dup_nxt != self.rcv_nxt:
            self.ooo_dup_nxt, self.ooo_dupacks = self.rcv_nxt, 0
        if self.ooo_dupacks < DUPACKS_AT_ONCE or not self.sack_ok:
            self.ooo_dupacks += 1
            self.send_ack()
            return
        self.ack_now = True
        self.ack_pending += 1
        if self.ack_pending >= ACK_EVERY_SEGMENTS:
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

    def _ooo_limit(self) -> int:
        """Segments held out of order: enough for two windows of full segments, so one loss
        in a large window does not overflow the queue; at least ``MAX_OOO_SEGMENTS``."""
        return max(MAX_OOO_SEGMENTS, 2 * self.receive_buffer // self.local_mss)

    def _store_ooo(self, seq: int, payload: bytes) -> None:
        end = seq + len(payload)
        first, last = seq, end
        blocks = self.ooo
        i = bisect.bisect_right(blocks, seq, key=_block_start)  # blocks[i - 1].start <= seq
        prev = blocks[i - 1] if i else None
        if prev is not None and seq < prev.end:
            if end <= prev.end:
                self._duplicate_data(seq, end)  # already have all of it
                self.last_ooo = (seq, end)  # so the block holding it comes second
                return
            payload = payload[prev.end - seq :]  # keep what is new
            seq = prev.end
        nxt = blocks[i] if i < len(blocks) else None
        rest = b""
        if nxt is not None and end > nxt.start:
            if end > nxt.end:
                rest = payload[nxt.end - seq :]  # beyond the next block: stored after it
            payload = payload[: nxt.start - seq]
            end = nxt.start
            if not payload and not rest:
                self._duplicate_data(first, last)  # held already, in two blocks
                return
        if payload:
            if self.ooo_count >= self._ooo_limit():
                self.stack.count("tcp_ooo_overflow")
                return
            self.ooo_count += 1
            self.ooo_bytes += len(payload)
            if prev is not None and prev.end == seq:
                prev.chunks.append(payload)
                prev.end = end
                if nxt is not None and nxt.start == end:  # a hole filled: one block
                    prev.chunks += nxt.chunks
                    prev.end = nxt.end
                    del blocks[i]
            elif nxt is not None and nxt.start == end:
                nxt.chunks.insert(0, payload)
                nxt.start = seq
            elif len(blocks) >= MAX_OOO_SEGMENTS:  # holes: a SACK walk stays short
                self.ooo_count -= 1
                self.ooo_bytes -= len(payload)
                self.stack.count("tcp_ooo_overflow")
                return
            else:
                blocks.insert(i, Block(seq, end, [payload]))
            self.last_ooo = (seq, end)
        if rest and nxt is not None:
            self._store_ooo(nxt.end, rest)

    def _drain_ooo(self) -> None:
        blocks = self.ooo
        while blocks and blocks[0].start <= self.rcv_nxt:
            block = blocks.pop(0)
            self.ooo_bytes -= block.end - block.start
            self.ooo_count -= len(block.chunks)
            if block.end <= self.rcv_nxt:
                continue
            at = block.start
            for chunk in block.chunks:
                chunk_end = at + len(chunk)
                if chunk_end > self.rcv_nxt:
                    self._deliver(chunk[self.rcv_nxt - at :] if at < self.rcv_nxt else chunk)
                at = chunk_end
        if self.pending_fin is not None and self.pending_fin == self.rcv_nxt and not self.ooo:
            self.pending_fin = None
            self._fin_arrived(self.stack.now)
