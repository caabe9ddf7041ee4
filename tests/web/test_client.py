"""The reverse proxy's HTTP/1.1 backend client (funnel_tw/web/client.py) against scripted
backends on in-memory transports: framing, reuse, the refusals that keep a pooled connection
from being desynchronised, bodies both ways, retries of stale connections, timeouts."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.iweb import UNKNOWN_LENGTH

from funnel_tw.web.client import MAX_HEAD, STREAM_READ, BackendConnection, BackendPool
from funnel_tw.web.sendnow import SMALL
from tests._support import eventually

HEAD = b"GET /x HTTP/1.1\r\nHost: app\r\n"


class Sink:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.body = b""

    def response_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.events.append(("head", status, reason, headers))

    def response_data(self, data: bytes) -> None:
        self.body += data

    def response_end(self) -> None:
        self.events.append(("end",))

    def response_failed(self, why: str, started: bool) -> None:
        self.events.append(("failed", why, started))

    @property
    def status(self) -> int:
        return int(self.events[0][1])

    @property
    def last(self) -> tuple[Any, ...]:
        return tuple(self.events[-1])


class Endpoint:
    """Connects at once, on a StringTransport; keeps every connection made."""

    def __init__(self) -> None:
        self.made: list[tuple[BackendConnection, StringTransport]] = []

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.made.append((proto, transport))
        return defer.succeed(proto)


class Producer:
    """A streaming request body like serve/streaming.py's BodySource."""

    def __init__(self, length: object) -> None:
        self.length = length
        self.consumer: Any = None
        self.done: defer.Deferred[None] = defer.Deferred()
        self.state = "new"

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        self.consumer = consumer
        self.state = "producing"
        return self.done

    def pauseProducing(self) -> None:
        self.state = "paused"

    def resumeProducing(self) -> None:
        self.state = "producing"

    def stopProducing(self) -> None:
        self.state = "stopped"


class ClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = Endpoint()
        self.pool = BackendPool(self.clock, self.endpoint, max_idle=2, idle_timeout=30)

    def send(
        self, body: Any = None, head: bytes = HEAD, **kw: Any
    ) -> tuple[Sink, BackendConnection, StringTransport]:
        sink = Sink()
        self.pool.request(head, body, sink, **kw)
        self.clock.advance(0)  # the end of the reactor turn: small requests go out then
        proto, transport = self.endpoint.made[-1]
        return sink, proto, transport

    def answer(self, proto: BackendConnection, data: bytes, step: int = 0) -> None:
        if not step:
            proto.dataReceived(data)
            return
        for i in range(0, len(data), step):
            proto.dataReceived(data[i : i + step])

    def refused(self, response: bytes, why: str) -> None:
        sink, proto, transport = self.send()
        self.answer(proto, response)
        self.assertEqual(sink.last[0], "failed", sink.events)
        self.assertIn(why, sink.last[1])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.pool.idle, [])

    # --- framing --------------------------------------------------------------------------

    def test_content_length_byte_by_byte_and_reuse(self) -> None:
        sink, proto, transport = self.send()
        self.assertEqual(transport.value(), HEAD + b"\r\n")
        self.answer(proto, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A:  b \r\n\r\nhello", 1)
        self.assertEqual(sink.events[0][:3], ("head", 200, b"OK"))
        self.assertIn((b"X-A", b"b"), sink.events[0][3])
        self.assertEqual((sink.body, sink.last), (b"hello", ("end",)))
        self.assertEqual(self.pool.idle, [proto])
        second, _, _ = self.send()
        self.assertEqual(len(self.endpoint.made), 1)  # the same connection
        self.answer(proto, b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertEqual((second.status, second.last), (204, ("end",)))

    def test_chunked_with_extensions_and_trailers(self) -> None:
        response = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n1 ; x\r\n \r\n6\r\nworld!\r\n0\r\nTrailer: x\r\n\r\n"
        )
        for step in (0, 1, 7):
            sink, proto, _ = self.send()
            self.answer(proto, response, step)
            self.assertEqual((sink.body, sink.last), (b"hello world!", ("end",)), step)
            self.assertIn(proto, self.pool.idle)

    def test_read_until_close(self) -> None:
        sink, proto, _ = self.send()
        self.answer(proto, b"HTTP/1.1 200 OK\r\n\r\nsome")
        self.answer(proto, b" more")
        self.assertEqual(len(sink.events), 1)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((sink.body, sink.last), (b"some more", ("end",)))
        self.assertEqual(self.pool.idle, [])

    def test_head_request_has_no_body(self) -> None:
        sink, proto, _ = self.send(no_body=True)
        self.answer(proto, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        self.assertEqual(sink.last, ("end",))
        self.assertIn((b"Content-Length", b"1000"), sink.events[0][3])
        self.assertEqual(self.pool.idle, [proto])

    def test_interim_responses_are_dropped(self) -> None:
        sink, proto, _ = self.send()
        self.answer(
            proto,
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
            3,
        )
        self.assertEqual([e[0] for e in sink.events], ["head", "end"])
        self.assertEqual((sink.status, sink.body), (201, b"ok"))

    def test_not_reused_after_close_or_http10(self) -> None:
        for response in (
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        ):
            sink, proto, transport = self.send()
            self.answer(proto, response)
            self.assertEqual(sink.last, ("end",))
            self.assertTrue(transport.disconnecting)
            self.assertEqual(self.pool.idle, [])

    def test_bytes_after_the_response_close_the_connection(self) -> None:
        sink, proto, transport = self.send()
        self.answer(proto, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 200 OK\r\n")
        self.assertEqual((sink.body, sink.last), (b"x", ("end",)))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.pool.idle, [])

    # --- refusals ---------------------------------------------------------------------------

    def test_length_and_chunked_together_refused(self) -> None:
        self.refused(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "both Content-Length and Transfer-Encoding",
        )

    def test_bad_content_lengths_refused(self) -> None:
        for value in (b"3, 4", b"-1", b"+3", b"0x10", b"1 2", b""):
            self.refused(
                b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\n", "Content-Length"
            )
        sink, proto, _ = self.send()  # the same value twice is one value
        self.answer(proto, b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok")
        self.assertEqual((sink.body, sink.last), (b"ok", ("end",)))

    def test_malformed_heads_refused(self) -> None:
        self.refused(b"HTTP/1.1 200 OK\r\nX-A: b\nX-B: c\r\n\r\n", "bare CR or LF")
        self.refused(b"HTTP/1.1 200 OK\r\nX-A: b\rX-B: c\r\n\r\n", "bare CR or LF")
        self.refused(b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n", "malformed header")
        self.refused(b"HTTP/1.1 200 OK\r\nX-A: b\r\n folded\r\n\r\n", "malformed header")
        self.refused(b"HTTP/2 200 OK\r\n\r\n", "status line")
        self.refused(b"HTTP/1.1 20 OK\r\n\r\n", "status line")
        self.refused(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "101")

    def test_bad_chunks_refused(self) -> None:
        for size in (b"0x5", b"-5", b" 5", b"5 5", b"g", b"1234567890abcdef0"):
            self.refused(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\n",
                "chunk size",
            )
        self.refused(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n", "CRLF")
        self.refused(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 5000, "too long"
        )

    def test_head_too_large_refused(self) -> None:
        self.refused(b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * MAX_HEAD, "too large")

    def test_unsolicited_bytes_on_an_idle_connection_drop_it(self) -> None:
        _, proto, transport = self.send()
        self.answer(proto, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.answer(proto, b"HTTP/1.1 200 OK\r\n")
        self.assertTrue(transport.disconnecting)

    # --- request bodies ---------------------------------------------------------------------

    def test_buffered_body_is_sent_with_its_length(self) -> None:
        _, _, transport = self.send(b"abc", head=b"POST / HTTP/1.1\r\n")
        self.assertEqual(transport.value(), b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")

    def test_streamed_body_of_unknown_length_is_chunked(self) -> None:
        body = Producer(UNKNOWN_LENGTH)
        _, proto, transport = self.send(body, head=b"POST / HTTP/1.1\r\n")
        self.assertIs(transport.producer, body)  # the backend's socket pauses the upload
        body.consumer.write(b"hello")
        body.consumer.write(b"")
        body.done.callback(None)
        self.assertEqual(
            transport.value(),
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        self.assertIsNone(transport.producer)
        self.answer(proto, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(self.pool.idle, [proto])

    def test_streamed_body_longer_than_its_length_fails(self) -> None:
        body = Producer(3)
        sink, _, transport = self.send(body, head=b"POST / HTTP/1.1\r\n")
        body.consumer.write(b"abcd")
        self.assertEqual(sink.last[0], "failed")
        self.assertTrue(transport.disconnecting)

    def test_answer_before_the_body_is_sent_stops_it(self) -> None:
        body = Producer(10)
        sink, proto, transport = self.send(body, head=b"POST / HTTP/1.1\r\n")
        body.consumer.write(b"abc")
        self.answer(proto, b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual((sink.status, sink.last), (413, ("end",)))
        self.assertEqual(body.state, "stopped")
        self.assertTrue(transport.disconnecting)  # half a body in it: never reused
        self.assertEqual(self.pool.idle, [])

    # --- the pool ----------------------------------------------------------------------------

    def test_stale_connection_retried_once_for_idempotent_requests(self) -> None:
        _, proto, _ = self.send(retry=True)
        self.answer(proto, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        sink, _, _ = self.send(retry=True)  # reuses proto
        self.assertEqual(len(self.endpoint.made), 1)
        proto.connectionLost(Failure(ConnectionDone()))  # it had been closed meanwhile
        self.assertEqual(len(self.endpoint.made), 2)
        fresh, transport = self.endpoint.made[-1]
        self.clock.advance(0)
        self.assertEqual(transport.value(), HEAD + b"\r\n")
        fresh.connectionLost(Failure(ConnectionDone()))  # a fresh one is not retried
        self.assertEqual(sink.last[0], "failed")
        self.assertEqual(len(self.endpoint.made), 2)

    def test_a_turns_small_requests_leave_together_at_its_end(self) -> None:
        sinks = [Sink() for _ in range(3)]
        for sink in sinks:
            self.pool.request(HEAD, b"x" if sink is sinks[2] else None, sink)
        transports = [t for _, t in self.endpoint.made]
        self.assertEqual([t.value() for t in transports], [b"", b"", b""])  # not yet
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # one timed call for all
        self.clock.advance(0)
        self.assertEqual(
            [t.value() for t in transports],
            [HEAD + b"\r\n", HEAD + b"\r\n", HEAD + b"Content-Length: 1\r\n\r\nx"],
        )

    def test_a_request_cancelled_before_the_turns_end_is_not_sent(self) -> None:
        exchange = self.pool.request(HEAD, None, Sink())
        exchange.cancel()
        self.clock.advance(0)
        _, transport = self.endpoint.made[-1]
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)

    def test_a_large_buffered_body_is_written_at_once(self) -> None:
        body = b"b" * (SMALL + 1)
        self.pool.request(b"POST / HTTP/1.1\r\n", body, Sink())
        _, transport = self.endpoint.made[-1]  # before the turn's end
        self.assertEqual(
            transport.value(),
            b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
        )

    def test_stale_connection_not_retried_for_other_requests(self) -> None:
        _, proto, _ = self.send()
        self.answer(proto, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        sink, _, _ = self.send(b"x", head=b"POST / HTTP/1.1\r\n", retry=False)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((sink.last[0], sink.last[2]), ("failed", False))
        self.assertEqual(len(self.endpoint.made), 1)

    def test_lost_mid_body_fails_started(self) -> None:
        sink, proto, _ = self.send()
        self.answer(proto, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        proto.connectionLost(Failure(ConnectionLost()))
        self.assertEqual((sink.last[0], sink.last[2]), ("failed", True))

    def test_idle_limits(self) -> None:
        made = []
        sinks = [Sink() for _ in range(3)]
        for sink in sinks:  # three at once: three connections
            self.pool.request(HEAD, None, sink)
            made.append(self.endpoint.made[-1])
        for proto, _ in made:
            self.answer(proto, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(len(self.pool.idle), 2)  # max_idle
        self.assertTrue(made[2][1].disconnecting)
        self.clock.advance(31)  # idle_timeout
        self.assertTrue(all(t.disconnecting for _, t in made))
        self.assertEqual(self.pool.idle, [])

    def test_cancel_and_pause(self) -> None:
        sink = Sink()
        exchange = self.pool.request(HEAD, None, sink)
        proto, transport = self.endpoint.made[-1]
        self.answer(proto, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        exchange.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        exchange.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        exchange.cancel()
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(sink.events), 1)  # the head only: nothing after the cancel
        exchange.pauseProducing()  # no longer holds a connection: nothing happens


class Backend(protocol.Protocol):
    """Answers each request head with an empty 200, keeping the connection."""

    def dataReceived(self, data: bytes) -> None:
        self.factory.received.append(data)  # type: ignore[attr-defined]
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")  # type: ignore[union-attr]


class BigBackend(protocol.Protocol):
    """Answers each request with a body of ``factory.size`` bytes, written at once."""

    def dataReceived(self, data: bytes) -> None:
        size = self.factory.size  # type: ignore[attr-defined]
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)  # type: ignore[union-attr]
        self.transport.write(bytes(size))  # type: ignore[union-attr]


class SizedSink(Sink):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[int] = []

    def response_data(self, data: bytes) -> None:
        self.reads.append(len(data))
        super().response_data(data)


class RealSocketTests(TestCase):
    async def answered(self, pool: BackendPool) -> None:
        sink = Sink()
        pool.request(HEAD, None, sink)
        self.assertTrue(await eventually(lambda: sink.events[-1:] == [("end",)], 5), sink.events)

    async def test_requests_never_register_the_socket_for_writing(self) -> None:
        # each request goes out by a send at the end of its turn: the backend socket is never
        # handed to epoll for writability (Twisted's write does that for every request)
        factory = protocol.Factory.forProtocol(Backend)
        factory.received = []  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        pool = BackendPool(reactor, endpoint)
        self.addCleanup(pool.close)
        await self.answered(pool)  # the connection made (and its first request)
        (connection,) = pool.idle
        transport: Any = connection.transport
        registered: list[object] = []
        start = transport.startWriting

        def start_writing() -> None:
            registered.append(transport)
            start()

        transport.startWriting = start_writing
        await self.answered(pool)
        await self.answered(pool)
        self.assertEqual(factory.received, [HEAD + b"\r\n"] * 3)  # type: ignore[attr-defined]
        self.assertEqual((pool.connections_made, registered), (1, []))

    async def test_a_streaming_body_is_read_in_larger_pieces(self) -> None:
        """64 KiB a reactor turn (Twisted's read size) held a node's download to ~127 MB/s
        at 50 ms (issue 12): once a read fills it, the connection reads STREAM_READ a turn.
        A small answer leaves the read size alone."""
        factory = protocol.Factory.forProtocol(BigBackend)
        factory.size = 100  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pool = BackendPool(reactor, TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port))
        self.addCleanup(pool.close)
        small = SizedSink()
        pool.request(HEAD, None, small)
        self.assertTrue(await eventually(lambda: small.events[-1:] == [("end",)], 5))
        (connection,) = pool.idle
        transport: Any = connection.transport
        self.assertEqual(transport.bufferSize, 65536)
        factory.size = 16 << 20  # type: ignore[attr-defined]
        big = SizedSink()
        pool.request(HEAD, None, big)
        self.assertTrue(await eventually(lambda: big.events[-1:] == [("end",)], 10))
        self.assertEqual(len(big.body), 16 << 20)
        self.assertEqual(transport.bufferSize, STREAM_READ)
        self.assertGreater(max(big.reads), 65536)
        self.assertLessEqual(max(big.reads), STREAM_READ)
