"""Twisted's HTTP/2 connection with a sending loop that sends what is ready, per reactor turn.

Twisted's ``H2Connection`` sends one frame per reactor turn and connection, each written on
its own: a small response costs three writes in three turns (HEADERS at once, then DATA, then
an empty DATA frame for END_STREAM), so three TLS records and three TCP segments, and with many
streams in flight every frame waits a whole turn behind the others. Here the loop is woken for
the end of the turn, not run inside the write that woke it, and then sends every ready frame of
every stream in priority order, up to :data:`BATCH_BYTES` or :data:`BATCH_FRAMES`, as one write; the
last DATA frame of a response carries END_STREAM; response headers go out with that write. A
stream whose flow-control window is exhausted is blocked in the priority tree until a
WINDOW_UPDATE (Twisted's loop polls it every turn instead).

Streams take turns frame by frame (:class:`RoundRobin`), in place of Twisted's RFC 7540
priority tree: RFC 9113 5.3.2 deprecates that scheme and lets a server ignore it, and the tree
cost ~9 µs a request (insert, block, unblock, next, block, remove). PRIORITY frames are still
accepted and bounded as before (1,000 streams the scheduler knows at most).

Each stream's queue of response data is bounded (:data:`STREAM_QUEUE`): Twisted pauses a
stream's producer only when the queue reaches the client's flow-control window, which a client
may open to 2 GiB. Everything else (flow control, producers, control-frame buffering, timeouts)
is Twisted's. The loop is private Twisted API (twisted.web._http2); tests/web/test_h2send.py
pins what it needs.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import h2.exceptions
import priority  # type: ignore[import-untyped]
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web._http2 import _END_STREAM_SENTINEL, H2Connection

from ..turn import Soon, end_of_turn
from . import h2headers

__all__ = ["BATCH_BYTES", "BATCH_FRAMES", "BatchedH2Connection"]

BATCH_BYTES = 65536  # DATA payload a connection sends per reactor turn, at most
BATCH_FRAMES = 64  # frames (DATA, or END_STREAM alone) per turn, at most
# DATA a stream may have queued to send before its producer (the backend) is paused; resumed
# once the queue is under half of it. Twisted pauses a stream's producer only when the queue
# reaches the client's flow-control window, which the client chooses (curl opens 1 GiB): a
# backend faster than the loop, or a client that reads slowly, made the node queue up to
# that much per stream (a 1 GiB HTTP/2 download peaked at 812 MiB RSS).
STREAM_QUEUE = 256 * 1024


class RoundRobin:
    """The streams of a connection taking turns, with the part of ``priority.PriorityTree``'s
    interface Twisted's HTTP/2 uses and the same errors: a stream is active (its turn comes)
    or blocked; ``next`` gives the next active one and keeps it in the rotation, or raises
    ``DeadlockError`` when none is active. Weights and dependencies are accepted and ignored."""

    def __init__(self, maximum_streams: int = 1000) -> None:
        self.maximum_streams = maximum_streams
        self._turn: dict[int, int] = {}  # stream -> its ticket in the rotation, 0 if blocked
        self._rotation: deque[tuple[int, int]] = deque()  # (stream, ticket); stale ones skipped
        self._tickets = 0

    def __iter__(self) -> RoundRobin:
        return self

    def __next__(self) -> int:
        turn, rotation = self._turn, self._rotation
        while rotation:
            entry = rotation.popleft()
            stream, ticket = entry
            if turn.get(stream) == ticket:
                rotation.append(entry)
                return stream
        raise priority.DeadlockError("no stream is active")

    def _known(self, stream_id: int) -> None:
        if stream_id == 0:
            raise priority.PseudoStreamError("stream 0 is the connection")
        if stream_id not in self._turn:
            raise priority.MissingStreamError(f"stream {stream_id} is not known")

    def _activate(self, stream_id: int) -> None:
        self._tickets += 1
        self._turn[stream_id] = self._tickets
        self._rotation.append((stream_id, self._tickets))
        if len(self._rotation) > 64 + 4 * len(self._turn):  # stale entries: compact
            self._rotation = deque(e for e in self._rotation if self._turn.get(e[0]) == e[1])

    def insert_stream(self, stream_id: int, **ignored: object) -> None:
        """Add an active stream (its ``depends_on``, ``weight``, ``exclusive`` ignored)."""
        if stream_id == 0 or stream_id in self._turn:  # the tree's root is stream 0
            raise priority.DuplicateStreamError(f"stream {stream_id} already known")
        if len(self._turn) >= self.maximum_streams:
            raise priority.TooManyStreamsError(f"more than {self.maximum_streams} streams")
        self._activate(stream_id)

    def remove_stream(self, stream_id: int) -> None:
        self._known(stream_id)
        del self._turn[stream_id]

    def block(self, stream_id: int) -> None:
        self._known(stream_id)
        self._turn[stream_id] = 0

    def unblock(self, stream_id: int) -> None:
        self._known(stream_id)
        if not self._turn[stream_id]:
            self._activate(stream_id)

    def reprioritize(self, stream_id: int, **ignored: object) -> None:
        """Nothing to change but for a stream not known (the tree's error)."""
        self._known(stream_id)


class BatchedH2Connection(H2Connection):
    """``H2Connection`` whose responses leave in as few writes as the transport allows (and
    whose requests' header blocks are checked by :mod:`funnel_tw.web.h2headers`)."""

    _send_call: IDelayedCall | Soon | None = None

    def __init__(self, reactor: Any = None) -> None:
        super().__init__(reactor)
        self.conn = h2headers.connection(self.conn.config)  # before anything used Twisted's
        self.priority = RoundRobin()

    # --- waking the loop -------------------------------------------------------------------

    def _schedule(self, _: object = None) -> None:
        """Run the loop at the end of this reactor turn (once, however often it is woken),
        in the turn's drain (funnel_tw.turn): its write reaches TLS and the wire in the same
        drain."""
        if self._send_call is None and self._stillProducing:
            self._send_call = end_of_turn(self._reactor).soon(self._sendPrioritisedData)

    def _continue(self) -> None:
        """Run the loop again in the next turn: after the other connections' work and a poll."""
        if self._send_call is None and self._stillProducing:
            self._send_call = self._reactor.callLater(0, self._sendPrioritisedData)

    # Twisted's writeDataToStream and endRequest fire ``_sendingDeferred``, which the loop
    # arms with _schedule: a body written or ended wakes the loop for the end of the turn.

    def _wake(self) -> None:
        """A stream has something to send: if the loop waits for work, have it run."""
        waiting = self._sendingDeferred
        if waiting is not None:
            self._sendingDeferred = None
            waiting.callback(None)

    def _handleWindowUpdate(self, event: Any) -> None:
        super()._handleWindowUpdate(event)  # unblocks streams with data waiting
        self._wake()
        # Twisted resumed every producer with room in its window: those whose queue is
        # still full are paused again at once (no read happens in between)
        ids = [event.stream_id] if event.stream_id else list(self.streams)
        for stream_id in ids:
            stream = self.streams.get(stream_id)
            if (
                stream is not None
                and stream._producerProducing
                and stream.producer
                and self._queued(stream_id) > STREAM_QUEUE
            ):
                stream.flowControlBlocked()

    def _queued(self, stream: int) -> int:
        return sum(
            len(chunk)
            for chunk in self._outboundStreamQueues[stream]
            if chunk is not _END_STREAM_SENTINEL
        )

    def writeDataToStream(self, streamID: int, data: bytes) -> None:
        super().writeDataToStream(streamID, data)
        stream = self.streams.get(streamID)
        if stream is not None and self._queued(streamID) > STREAM_QUEUE:
            stream.flowControlBlocked()  # pauses its producer (windowUpdated resumes it)

    def writeHeaders(
        self, version: bytes, code: bytes, reason: bytes, headers: Any, streamID: int
    ) -> None:
        headers.insert(0, (b":status", code))
        try:
            self.conn.send_headers(streamID, headers)
        except h2.exceptions.StreamClosedError:
            return  # the client closed the stream: as Twisted, drop the response quietly
        # the headers wait in h2's buffer for the loop's write, with the body if it is ready
        if self._sendingDeferred is not None:
            self._wake()
        else:
            self._schedule()

    def connectionLost(
        self, reason: Failure = connectionDone, _cancelTimeouts: bool = True
    ) -> None:
        if self._send_call is not None and self._send_call.active():
            self._send_call.cancel()
        self._send_call = None
        super().connectionLost(reason, _cancelTimeouts)

    # --- the loop --------------------------------------------------------------------------

    def _sendPrioritisedData(self, *args: object) -> None:
        self._send_call = None
        if not self._stillProducing:
            return
        payload = frames = 0
        try:
            while payload < BATCH_BYTES and frames < BATCH_FRAMES:
                if self._consumerBlocked is not None:
                    self._consumerBlocked.addCallback(self._schedule)
                    return
                try:
                    stream = next(self.priority)
                except priority.DeadlockError:
                    if self._sendingDeferred is None:
                        self._sendingDeferred = Deferred()
                        self._sendingDeferred.addCallback(self._schedule)
                    return
                frames += 1
                payload += self._send_frame(stream)
            self._continue()  # more may be ready: after the other connections' turn
        finally:
            if frames:
                self.resetTimeout()
                self._write_pending()
            else:
                # heads and control frames alone: Twisted's own path, which holds them while
                # the transport is full and aborts a client that lets them pile up (~17 KiB)
                self._tryToWriteControlData()

    def _write_pending(self) -> None:
        """Write what h2 has buffered (this run's DATA among it), in h2's order: behind
        Twisted's held control frames if there are any (taken from the same buffer earlier).
        DATA is made only while the transport takes data, so this is not a way around the
        held frames' bound."""
        pending = self.conn.data_to_send()
        if not pending or not self._stillProducing:
            return
        if self._bufferedControlFrames:
            self._bufferedControlFrames.append(pending)
            self._bufferedControlFrameBytes += len(pending)
        elif self.transport is not None:
            self.transport.write(pending)

    def _send_frame(self, stream: int) -> int:
        """Put ``stream``'s next frame in h2's buffer; return its DATA payload's size."""
        queue = self._outboundStreamQueues[stream]
        data = queue.popleft()
        if data is _END_STREAM_SENTINEL:
            self.conn.end_stream(stream)
            self._requestDone(stream)
            return 0
        room = min(self.conn.max_outbound_frame_size, self.conn.local_flow_control_window(stream))
        if room <= 0:  # window exhausted: wait for the client's WINDOW_UPDATE
            queue.appendleft(data)
            self.priority.block(stream)
            return 0
        if len(data) > room:
            # the rest waits as a view: a large chunk sent a frame at a time is copied once,
            # not once per frame
            view = memoryview(data)
            queue.appendleft(view[room:])
            data = view[:room]
        if isinstance(data, memoryview):
            data = data.tobytes()
        if queue and queue[0] is _END_STREAM_SENTINEL:
            queue.popleft()
            self.conn.send_data(stream, data, end_stream=True)
            self._requestDone(stream)
            return len(data)
        if data:
            self.conn.send_data(stream, data)
        if not queue:
            self.priority.block(stream)
        queued = self._queued(stream)
        h2stream = self.streams[stream]
        if self.conn.local_flow_control_window(stream) - queued <= 0:
            h2stream.flowControlBlocked()
        elif queued <= STREAM_QUEUE // 2 and not h2stream._producerProducing:
            h2stream.windowUpdated()  # resumes a producer paused for the queue or the window
        return len(data)
