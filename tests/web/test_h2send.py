"""funnel_tw/web/h2send.py in memory: a real h2 client against the batched connection, a Clock
for the reactor's turns, a transport that records each write.

Twisted's own H2Connection (the reference in the first test) writes a small response in three
turns and three writes; these tests fail on it, and they fail if Twisted changes the private
sending loop the module replaces."""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import priority  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import server
from twisted.web._http2 import H2Connection  # private on purpose: the reference
from twisted.web.resource import Resource

from funnel_tw.web.h2send import BATCH_BYTES, STREAM_QUEUE, BatchedH2Connection, RoundRobin
from funnel_tw.web.httplimits import LimitedHTTPChannel, limited_channel

REQUEST = [(b":method", b"GET"), (b":path", b"/"), (b":authority", b"x"), (b":scheme", b"https")]


class _Body(Resource):
    """Answers every request with ``size`` bytes at once, or holds it (``hold``)."""

    isLeaf = True

    def __init__(self, size: int, hold: bool = False) -> None:
        super().__init__()
        self.size, self.hold = size, hold
        self.held: list[server.Request] = []

    def render(self, request: server.Request) -> Any:
        if self.hold:
            self.held.append(request)
            return server.NOT_DONE_YET
        return b"b" * self.size


class _Writes(StringTransport):
    """Keeps each write apart: how many TLS records and TCP segments a response costs."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


class _Producer:
    """A push producer that records whether it is asked to produce."""

    def __init__(self) -> None:
        self.producing = True

    def pauseProducing(self) -> None:
        self.producing = False

    def resumeProducing(self) -> None:
        self.producing = True

    def stopProducing(self) -> None:
        self.producing = False


class _Pair:
    """A server connection of ``kind`` and an h2 client speaking to it through memory."""

    def __init__(self, kind: type, resource: Resource, window: int | None = None) -> None:
        self.clock = Clock()
        site = server.Site(resource)
        self.server = kind(self.clock)
        self.server.requestFactory = site.requestFactory
        self.server.site = site
        self.server.factory = site
        self.server.callLater = self.clock.callLater
        self.transport = _Writes()
        self.server.makeConnection(self.transport)
        self.client = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.client.initiate_connection()
        if window is not None:
            self.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.send()
        self.events: list[h2.events.Event] = []
        self.take()

    def send(self) -> None:
        self.server.dataReceived(self.client.data_to_send())

    def take(self) -> list[bytes]:
        """What the server wrote since the last take, write by write; fed to the client."""
        writes = self.transport.writes[:]
        self.transport.writes.clear()
        self.transport.clear()
        for data in writes:
            self.events += self.client.receive_data(data)
        self.send()  # the client's ACKs and WINDOW_UPDATEs
        return writes

    def request(self, stream_id: int) -> None:
        self.client.send_headers(stream_id, REQUEST, end_stream=True)
        self.send()

    def turns(self, count: int = 1) -> None:
        for _ in range(count):
            self.clock.advance(0)

    def body(self, stream_id: int) -> bytes:
        return b"".join(
            e.data
            for e in self.events
            if isinstance(e, h2.events.DataReceived) and e.stream_id == stream_id
        )

    def ended(self, stream_id: int) -> bool:
        return any(
            isinstance(e, h2.events.StreamEnded) and e.stream_id == stream_id for e in self.events
        )


class BatchedSendingTests(SynchronousTestCase):
    def test_twisted_sends_a_small_response_in_three_writes(self) -> None:
        """The reference: why the module exists (fails if Twisted batches one day)."""
        pair = _Pair(H2Connection, _Body(100))
        pair.request(1)
        pair.take()  # HEADERS, written at once
        pair.turns(3)
        self.assertEqual(len(pair.take()), 2)  # DATA, then END_STREAM, a turn each
        self.assertTrue(pair.ended(1))

    def test_a_small_response_leaves_in_one_write(self) -> None:
        """As the proxy answers: the head, the body and the end in one later callback."""
        resource = _Body(0, hold=True)
        pair = _Pair(BatchedH2Connection, resource)
        pair.request(1)
        pair.take()
        (request,) = resource.held
        request.write(b"b" * 100)
        request.finish()
        self.assertEqual(pair.transport.writes, [])  # nothing inside the answer's own turn
        pair.turns()
        writes = pair.take()
        self.assertEqual(len(writes), 1)
        self.assertEqual(pair.body(1), b"b" * 100)
        self.assertTrue(pair.ended(1))
        # END_STREAM rode on the DATA frame: exactly one DATA frame for the stream
        data = [e for e in pair.events if isinstance(e, h2.events.DataReceived)]
        self.assertEqual(len(data), 1)
        self.assertIsNotNone(data[0].stream_ended)
        self.assertEqual(pair.clock.getDelayedCalls(), [])  # idle: the loop waits for work

    def test_many_streams_share_one_write(self) -> None:
        resource = _Body(0, hold=True)
        pair = _Pair(BatchedH2Connection, resource)
        for stream_id in range(1, 40, 2):
            pair.client.send_headers(stream_id, REQUEST, end_stream=True)
        pair.send()
        pair.take()
        for request in resource.held:
            request.write(b"b" * 50)
            request.finish()
        pair.turns()
        self.assertEqual(len(pair.take()), 1)
        for stream_id in range(1, 40, 2):
            self.assertEqual(pair.body(stream_id), b"b" * 50)
            self.assertTrue(pair.ended(stream_id))

    def test_a_large_response_is_bounded_per_write(self) -> None:
        """Each run of the loop writes at most BATCH_BYTES of DATA, then yields to the other
        connections (Clock.advance runs the runs it schedules; a reactor, one per turn)."""
        size = 3 * BATCH_BYTES + 1000
        pair = _Pair(BatchedH2Connection, _Body(size), window=2**31 - 1)
        pair.client.increment_flow_control_window(2**30)
        pair.request(1)
        pair.take()
        pair.turns()
        sizes = [len(w) for w in pair.take()]
        self.assertEqual(pair.body(1), b"b" * size)
        self.assertTrue(pair.ended(1))
        self.assertEqual(len(sizes), 4, sizes)
        frame_headers = 9 * (BATCH_BYTES // 16384)
        self.assertEqual(sizes[:3], [BATCH_BYTES + frame_headers] * 3)

    def test_an_exhausted_window_waits_without_polling(self) -> None:
        """Twisted's loop runs every turn while a stream has data and no window; ours blocks
        the stream until the client's WINDOW_UPDATE."""
        pair = _Pair(BatchedH2Connection, _Body(5000), window=1000)
        pair.request(1)
        pair.turns()
        pair.take()
        self.assertEqual(len(pair.body(1)), 1000)
        pair.turns(2)
        self.assertEqual(pair.take(), [])
        self.assertEqual(pair.clock.getDelayedCalls(), [])  # waiting, not polling
        pair.client.increment_flow_control_window(10000, stream_id=1)
        pair.send()
        pair.turns()
        pair.take()
        self.assertEqual(pair.body(1), b"b" * 5000)
        self.assertTrue(pair.ended(1))

    def test_a_paused_transport_holds_the_data(self) -> None:
        resource = _Body(0, hold=True)
        pair = _Pair(BatchedH2Connection, resource)
        pair.request(1)
        (request,) = resource.held
        pair.server.pauseProducing()  # as a full transport does
        request.write(b"x" * 1000)
        request.finish()
        pair.turns(3)
        self.assertEqual(pair.body(1), b"")
        self.assertEqual(b"".join(pair.take()).count(b"x"), 0)
        pair.server.resumeProducing()
        pair.turns()
        pair.take()
        self.assertEqual(pair.body(1), b"x" * 1000)
        self.assertTrue(pair.ended(1))

    def test_a_streams_queue_is_bounded_whatever_the_window(self) -> None:
        """Twisted pauses a stream's producer only when its queue reaches the client's
        window, which the client picks (1 GiB, as curl opens): a client that
        does not read, or a backend faster than the loop, had the node queue that much
        per stream. The producer is paused above STREAM_QUEUE, stays paused when a
        WINDOW_UPDATE comes while the queue is full, and is resumed once it drained."""
        resource = _Body(0, hold=True)
        pair = _Pair(BatchedH2Connection, resource, window=1 << 30)
        pair.client.increment_flow_control_window(1 << 30)
        pair.send()
        pair.request(1)
        (request,) = resource.held
        producer = _Producer()
        request.registerProducer(producer, True)
        pair.server.pauseProducing()  # the transport underneath is full (a client not reading)
        chunk = b"y" * (64 * 1024)
        for _ in range(200):  # a backend writing whenever it is not paused
            if producer.producing:
                request.write(chunk)
        queued = pair.server._queued(1)
        self.assertLessEqual(queued, STREAM_QUEUE + len(chunk))
        self.assertFalse(producer.producing)
        pair.client.increment_flow_control_window(1 << 20, stream_id=1)
        pair.send()  # Twisted resumes producers on a WINDOW_UPDATE: not this one
        self.assertFalse(producer.producing)
        pair.server.resumeProducing()
        for _ in range(20):
            pair.turns()
            pair.take()
        self.assertTrue(producer.producing)
        self.assertEqual(len(pair.body(1)), queued)

    def test_headers_alone_are_sent(self) -> None:
        """A response whose body is not ready still sends its head in the next turn."""
        resource = _Body(0, hold=True)
        pair = _Pair(BatchedH2Connection, resource)
        pair.request(1)
        (request,) = resource.held
        request.setResponseCode(200)
        request.write(b"")  # the head alone
        pair.turns()
        pair.take()
        heads = [e for e in pair.events if isinstance(e, h2.events.ResponseReceived)]
        self.assertEqual(len(heads), 1)
        self.assertFalse(pair.ended(1))
        request.write(b"late")
        request.finish()
        pair.turns()
        pair.take()
        self.assertEqual(pair.body(1), b"late")
        self.assertTrue(pair.ended(1))

    def test_held_control_frames_keep_their_order(self) -> None:
        """What waits behind a paused transport leaves first, then the loop's frames: h2's
        buffer (HPACK state included) is written in the order it was made."""
        resource = _Body(0, hold=True)
        pair = _Pair(BatchedH2Connection, resource)
        pair.request(1)
        pair.request(3)
        first, second = resource.held
        pair.server.pauseProducing()
        # Twisted's own HEADERS, held while paused:
        first.channel._respondToBadRequestAndDisconnect()
        second.write(b"y" * 10)
        second.finish()
        pair.turns()
        pair.server.resumeProducing()
        pair.turns()
        pair.take()  # the client fails on any HPACK or frame order error
        heads = [e.stream_id for e in pair.events if isinstance(e, h2.events.ResponseReceived)]
        self.assertEqual(heads, [1, 3])  # the order they were made in
        self.assertEqual(pair.body(3), b"y" * 10)
        self.assertTrue(pair.ended(3))

    def test_heads_for_a_client_that_does_not_read_are_bounded(self) -> None:
        """While the transport is full, response heads wait in Twisted's held control frames,
        which abort the connection past their bound (~17 KiB); they are not written to the
        full transport without end."""
        resource = _Body(0, hold=True)
        pair = _Pair(BatchedH2Connection, resource)
        pair.server.pauseProducing()  # the client stopped reading
        before = len(pair.transport.value())
        for stream_id in range(1, 2 * 90, 2):
            pair.client.send_headers(stream_id, REQUEST, end_stream=True)
            pair.send()
            request = resource.held[-1]
            for i in range(8):  # ~300 bytes of head each, HPACK or not
                request.setHeader(b"x-filler-%d" % i, b"%d-" % stream_id + b"v" * 24)
            request.write(b"")
            pair.turns()
            if pair.transport.disconnecting:
                break
        self.assertTrue(pair.transport.disconnecting)
        self.assertFalse(pair.server._stillProducing)
        self.assertLess(len(pair.transport.value()) - before, 4096)  # held, not written
        self.flushLoggedErrors()

    def test_a_reset_stream_leaves_the_others_going(self) -> None:
        """The client resets a stream whose body waits for window: its queue is dropped,
        the other stream's answer still leaves, and nothing raises in the loop."""
        resource = _Body(0, hold=True)
        pair = _Pair(BatchedH2Connection, resource, window=1000)
        pair.request(1)
        pair.request(3)
        first, second = resource.held
        first.write(b"a" * 5000)  # 1,000 leave, 4,000 wait for the window
        second.write(b"c" * 500)
        second.finish()
        pair.turns()
        pair.take()
        pair.client.reset_stream(1)
        pair.send()
        pair.client.increment_flow_control_window(100_000)  # the connection's window
        pair.send()
        pair.turns(3)
        pair.take()
        self.assertEqual(len(pair.body(1)), 1000)
        self.assertEqual(pair.body(3), b"c" * 500)
        self.assertTrue(pair.ended(3))
        self.assertNotIn(1, pair.server.streams)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_connection_lost_with_a_run_scheduled(self) -> None:
        resource = _Body(0, hold=True)
        pair = _Pair(BatchedH2Connection, resource)
        pair.request(1)
        (request,) = resource.held
        pair.turns()  # Twisted's first run of the loop: it now waits for work
        request.write(b"x" * 10)  # schedules the loop for the next turn
        self.assertTrue(pair.clock.getDelayedCalls())
        pair.server.connectionLost(Failure(ConnectionLost("gone")))
        self.assertFalse(
            any(c.func == pair.server._sendPrioritisedData for c in pair.clock.getDelayedCalls())
        )
        pair.turns(2)  # nothing is written to the closed transport
        self.assertEqual(pair.transport.writes, [])


class SwitchTests(SynchronousTestCase):
    def _switched(self, alpn: bytes) -> Any:
        site = server.Site(_Body(1))
        switch = limited_channel()
        switch.requestFactory = site.requestFactory
        switch.site = site
        switch.factory = site
        transport = StringTransport()
        transport.negotiatedProtocol = alpn  # type: ignore[attr-defined]
        switch.makeConnection(transport)
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        data = client.data_to_send() if alpn == b"h2" else b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        switch.dataReceived(data)
        return switch._channel

    def test_h2_gets_the_batched_connection(self) -> None:
        channel = self._switched(b"h2")
        self.assertIsInstance(channel, BatchedH2Connection)
        self.assertIsNotNone(channel.transport)
        channel.connectionLost(None)

    def test_http11_keeps_the_limited_channel(self) -> None:
        self.assertIsInstance(self._switched(b"http/1.1"), LimitedHTTPChannel)


OPS = st.lists(
    st.tuples(
        st.sampled_from(["insert", "remove", "block", "unblock", "reprioritize", "next"]),
        st.sampled_from([0, 1, 3, 5, 7]),
    ),
    max_size=60,
)


class RoundRobinTests(SynchronousTestCase):
    """The scheduler that replaces Twisted's priority tree: the same errors for the same
    operations, an active stream from ``next`` whenever the tree would give one, and turns."""

    @settings(max_examples=500, deadline=None)
    @given(OPS)
    def test_same_answers_as_the_priority_tree(self, ops: list[tuple[str, int]]) -> None:
        ours, tree = RoundRobin(), priority.PriorityTree()
        active: set[int] = set()
        for op, stream in ops:
            results = []
            for scheduler in (ours, tree):
                try:
                    if op == "next":
                        results.append(("ok", next(scheduler) in active))
                    else:
                        getattr(scheduler, op + "_stream" if op in ("insert", "remove") else op)(
                            stream
                        )
                        results.append(("ok", None))
                except Exception as e:
                    results.append((type(e).__name__, None))
            self.assertEqual(results[0], results[1], (op, stream))
            if results[0][0] == "ok":
                if op in ("insert", "unblock"):
                    active.add(stream)
                elif op in ("remove", "block"):
                    active.discard(stream)

    def test_turns(self) -> None:
        rr = RoundRobin()
        for stream in (1, 3, 5):
            rr.insert_stream(stream)
        self.assertEqual([next(rr) for _ in range(6)], [1, 3, 5, 1, 3, 5])
        rr.block(3)
        self.assertEqual([next(rr) for _ in range(4)], [1, 5, 1, 5])
        rr.unblock(3)  # back at the end of the rotation
        self.assertEqual([next(rr) for _ in range(3)], [1, 5, 3])
        for stream in (1, 3, 5):
            rr.block(stream)
        self.assertRaises(priority.DeadlockError, next, rr)

    def test_bounded(self) -> None:
        rr = RoundRobin(maximum_streams=3)
        for stream in (1, 3, 5):
            rr.insert_stream(stream)
        self.assertRaises(priority.TooManyStreamsError, rr.insert_stream, 7)
        for _ in range(10_000):  # churn without a turn: stale entries do not pile up
            rr.block(1)
            rr.unblock(1)
        self.assertLessEqual(len(rr._rotation), 64 + 4 * 3 + 1)
        self.assertEqual(sorted(next(rr) for _ in range(3)), [1, 3, 5])

    def test_used_by_the_connection(self) -> None:
        self.assertIsInstance(BatchedH2Connection().priority, RoundRobin)
