"""The send buffer: what the application wrote, kept as it came until it is acknowledged.

A list of ``bytes`` (``sndq``), found by sequence number with a bisection of where each piece
begins (``sndq_starts``, in stream offsets: bytes written before). A write that does not fit
beside the last piece within 16 KiB is kept as it is, not copied; smaller ones are joined, in
place in a ``bytearray``, so a stream of tiny writes costs each its own bytes and not a copy
of the piece so far. Nothing is copied when the front is acknowledged. (A single ``bytearray``
was grown and compacted, both copying what it held: 0.25 ms per MB at 100 KB buffered and
1.5 ms at 24 MiB, issue 12.) A segment is cut from it when it is sent, and a run of full
segments is built straight from the piece that holds it (most of a 16 KiB TLS record).

How much the application may leave here (``send_limit``), when it is woken again
(``send_low_water``, DRAINED) and when it is told to pause (``over_send_limit``) are here too.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

CHUNK_JOIN = 16384  # a write joins the previous one while both together are this small


class SendQueue:
    """The send buffer of :class:`~.connection.Connection` (a mixin: one object, one state)."""

    if not TYPE_CHECKING:  # (the type checker would hold the mixin to its empty slots)
        __slots__ = ()  # the attributes are the Connection's (connection.py)

    buf_seq: int  # the sequence number of the first byte held (not yet acknowledged)
    cwnd: int
    send_buffer: int
    send_buffer_max: int
    _low_water: int | None
    drained_pending: bool

    def _init_sendq(self) -> None:
        # sndq[i] begins at stream offset sndq_starts[i]; sndq[:sndq_head] are acknowledged
        # (released); buf_off is the offset of the byte at buf_seq, buf_len the end
        self.sndq: list[bytes | bytearray] = []
        self.sndq_starts: list[int] = []
        self.sndq_head = 0
        self.buf_off = 0
        self.buf_len = 0

    @property
    def send_buffered(self) -> int:
        """Bytes written by the application and not yet acknowledged."""
        return self.buf_len - self.buf_off

    @property
    def send_limit(self) -> int:
        """How much unacknowledged data (unsent included) the application should leave with
        us before it pauses: twice the congestion window, at least ``send_buffer``, at most
        ``send_buffer_max`` (as Linux grows ``sk_sndbuf`` with cwnd), so a producer keeps a
        long path full without an idle connection holding more than it wrote."""
        limit = 2 * self.cwnd
        if limit < self.send_buffer:
            return self.send_buffer
        return min(limit, self.send_buffer_max)

    @property
    def send_low_water(self) -> int:
        """DRAINED fires when what is buffered falls below this: 3/4 of the limit, unless set.

        Not half: what is buffered is in flight as well as unsent. Once the limit is at its
        cap and the peer's window is over half of it (a 6 MiB window under an 8 MiB cap),
        what is in flight fell to half the limit before the producer was asked again, each
        time the unsent part ran out (issue 12: a 50 ms funnel download held by "nothing to
        send" 57 % of the time; 86 instead of 120 MiB/s in the sans-IO test). At 3/4, up to
        3/4 of the limit stays in flight, and the producer is woken after each quarter."""
        if self._low_water is not None:
            return self._low_water
        limit = self.send_limit
        return limit - (limit >> 2)

    @send_low_water.setter
    def send_low_water(self, value: int) -> None:
        self._low_water = value

    def over_send_limit(self) -> bool:
        """Whether the application should pause writing: more than ``send_limit`` is
        buffered. If so, DRAINED is owed from now on, and fires after the first ACK that
        brings what is buffered below the low water mark. Owing it only when an output saw
        the buffer at or above the mark was not enough: the overlay's producers write from a
        timed call and the stack's output runs in the next turn, after a poll; ACKs read
        there can drain the buffer below the mark, or grow cwnd and with it the mark above
        the buffer, before any output looks, and a producer paused in between waited for
        ever (a download stalled with nothing in flight: the flaky reload test, issue 12)."""
        if self.send_buffered > self.send_limit:
            self.drained_pending = True
            return True
        return False

    def _queue(self, data: bytes) -> None:
        n = len(data)
        chunks = self.sndq
        if chunks and len(chunks[-1]) + n <= CHUNK_JOIN:
            # many small writes would make many small pieces of a segment: join them
            last = chunks[-1]
            if type(last) is bytes:
                chunks[-1] = last = bytearray(last)  # one copy, then appended to in place
            last += data
        else:
            if type(data) is not bytes:
                data = bytes(data)  # kept as it is: it must not change under us
            chunks.append(data)
            self.sndq_starts.append(self.buf_len)
        self.buf_len += n

    def _data_end(self) -> int:
        return self.buf_seq + self.buf_len - self.buf_off

    def _segment_bytes(self, seq: int, n: int) -> bytes:
        """The ``n`` bytes from sequence number ``seq`` on (held, not yet acknowledged)."""
        data, off = self._run_data(seq, n)
        if type(data) is not bytes:
            return bytes(memoryview(data)[off : off + n])  # a joined piece, still growing
        if off == 0 and len(data) == n:
            return data
        return data[off : off + n]

    def _run_data(self, seq: int, n: int) -> tuple[bytes | bytearray, int]:
        """A buffer and an offset in it where the ``n`` bytes from ``seq`` on are, for
        ``build_run``: the piece written that holds them all, or a copy joined from several."""
        at = self.buf_off + (seq - self.buf_seq)
        starts = self.sndq_starts
        i = bisect.bisect_right(starts, at, self.sndq_head) - 1
        chunk = self.sndq[i]
        off = at - starts[i]
        if off + n <= len(chunk):
            return chunk, off
        return self._gather(i, off, n), 0

    def _gather(self, i: int, off: int, n: int) -> bytes:
        chunks = self.sndq
        pieces = [chunks[i][off : off + n]]
        n -= len(pieces[0])
        while n > 0:
            i += 1
            piece = chunks[i][:n]
            pieces.append(piece)
            n -= len(piece)
        return b"".join(pieces)

    def _data_acked(self, n: int) -> None:
        """``n`` more bytes acknowledged: let go of the writes they complete."""
        self.buf_off += n
        self.buf_seq += n
        if self.buf_off == self.buf_len:
            self._clear_sendq()  # all acknowledged: nothing held (idle), the lists' room too
            return
        chunks, starts, head = self.sndq, self.sndq_starts, self.sndq_head
        last = len(starts) - 1
        off = self.buf_off
        while head < last and starts[head + 1] <= off:
            chunks[head] = b""
            head += 1
        if head >= 64 and head * 2 >= len(starts):  # now and then drop their places too
            del chunks[:head]
            del starts[:head]
            head = 0
        self.sndq_head = head

    def _clear_sendq(self) -> None:
        self.sndq.clear()
        self.sndq_starts.clear()
        self.sndq_head = 0
        self.buf_off = self.buf_len = 0
