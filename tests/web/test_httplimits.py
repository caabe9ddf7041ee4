"""funnel_tw/web/httplimits.py in memory (StringTransport, a Clock).

The first class records what Twisted's own HTTPChannel does with a slow or oversized head; if
one of those fails, Twisted changed and the module's overrides must be looked at again. The
second checks the limited channel answers 408/414/431 instead; the third the body's minimum
rate of serve/streaming.py.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import resource, server

from funnel_tw.serve.streaming import StreamingRequest
from funnel_tw.web.httplimits import HTTPLimits, LimitedHTTPChannel, limited_channel

HEAD = b"GET / HTTP/1.1\r\nHost: x\r\n"


class _Ok(resource.Resource):
    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        return b"ok"


class _Site(server.Site):
    def __init__(self, clock: Clock, limits: HTTPLimits, limited: bool) -> None:
        super().__init__(_Ok(), reactor=clock, timeout=None)
        if limited:
            self.protocol = limited_channel  # type: ignore[assignment]
        self.http_limits = limits
        self.refusals: list[tuple[str, str]] = []

    def http_refused(self, transport: Any, counter: str, reason: str) -> None:
        self.refusals.append((counter, reason))


def connect(
    limited: bool = True,
    limits: HTTPLimits | None = None,
    timeout: float | None = None,
    streaming: bool = False,
) -> tuple[Any, StringTransport, Clock, _Site]:
    clock = Clock()
    site = _Site(clock, limits or HTTPLimits(), limited)
    site.timeOut = timeout
    if streaming:
        site.requestFactory = StreamingRequest
    protocol = site.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport, clock, site


class TwistedAloneTests(SynchronousTestCase):
    """What twisted.web does without the module (each is a reason for it)."""

    def test_long_header_line_is_dropped_with_the_producer_still_registered(self) -> None:
        protocol, transport, _, _ = connect(limited=False)
        protocol.dataReceived(HEAD + b"X-Big: " + b"a" * 100_000)
        self.assertEqual(transport.value(), b"")  # no answer
        self.assertTrue(transport.disconnecting)
        # still the transport's producer: a TLS transport's loseConnection waits for it
        self.assertIsNotNone(transport.producer)

    def test_many_headers_are_a_400(self) -> None:
        protocol, transport, _, _ = connect(limited=False)
        protocol.dataReceived(HEAD + b"".join(b"X-%d: a\r\n" % i for i in range(10_000)))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "))

    def test_idle_timeout_restarts_with_every_line(self) -> None:
        protocol, transport, clock, _ = connect(limited=False, timeout=5)
        protocol.dataReceived(b"GET / HTTP/1.1\r\n")
        for i in range(20):
            clock.advance(1)
            protocol.dataReceived(b"X-%d: a\r\n" % i)
        self.assertFalse(transport.disconnecting)  # 20 s into a head, still open


class LimitedChannelTests(SynchronousTestCase):
    def test_the_switch_wraps_a_limited_channel(self) -> None:
        protocol, _, _, _ = connect()
        self.assertIsInstance(protocol._channel, LimitedHTTPChannel)  # Twisted's private switch

    def assertRefused(
        self, transport: StringTransport, site: _Site, status: int, counter: str
    ) -> None:
        self.assertTrue(
            transport.value().startswith(b"HTTP/1.1 %d " % status), transport.value()[:60]
        )
        self.assertIn(b"Connection: close", transport.value())
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(transport.producer)  # unregistered first: a TLS close goes ahead
        self.assertEqual([c for c, _ in site.refusals], [counter])

    def test_long_header_line_is_431(self) -> None:
        protocol, transport, _, site = connect()
        protocol.dataReceived(HEAD + b"X-Big: " + b"a" * 100_000)
        self.assertRefused(transport, site, 431, "head_too_large")

    def test_many_small_headers_are_431(self) -> None:
        protocol, transport, _, site = connect()
        protocol.dataReceived(HEAD + b"".join(b"X-%d: a\r\n" % i for i in range(10_000)))
        self.assertRefused(transport, site, 431, "too_many_headers")

    def test_head_over_its_size_is_431(self) -> None:
        protocol, transport, _, site = connect()
        protocol.dataReceived(HEAD + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 500) for i in range(80)))
        self.assertRefused(transport, site, 431, "head_too_large")

    def test_long_request_line_is_414(self) -> None:
        protocol, transport, _, site = connect()
        protocol.dataReceived(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n")
        self.assertRefused(transport, site, 414, "request_line_too_long")

    def test_request_line_without_end_is_414(self) -> None:
        protocol, transport, _, site = connect()
        protocol.dataReceived(b"GET /" + b"a" * 40_000)
        self.assertRefused(transport, site, 414, "request_line_too_long")

    def test_slow_head_is_408_at_the_deadline(self) -> None:
        protocol, transport, clock, site = connect(timeout=5)
        protocol.dataReceived(b"GET / HTTP/1.1\r\n")
        for i in range(9):
            clock.advance(1)
            protocol.dataReceived(b"X-%d: a\r\n" % i)
        self.assertEqual(transport.value(), b"")
        clock.advance(1)  # 10 s after the head's first byte
        self.assertRefused(transport, site, 408, "head_timeout")
        protocol.dataReceived(b"\r\n")  # nothing more is parsed
        self.assertEqual(transport.value().count(b"HTTP/1.1"), 1)

    def test_complete_heads_and_idle_keepalive_are_not_timed(self) -> None:
        protocol, transport, clock, site = connect()
        protocol.dataReceived(HEAD + b"\r\n")
        self.assertIn(b"200 OK", transport.value())
        clock.advance(60)  # an idle keep-alive connection: the idle timeout's business
        protocol.dataReceived(HEAD + b"\r\n")
        self.assertEqual(transport.value().count(b"200 OK"), 2)
        clock.advance(60)
        self.assertEqual(site.refusals, [])
        self.assertFalse(transport.disconnecting)

    def test_requests_resume_the_connection_only_when_paused(self) -> None:
        """Twisted resumes the connection after every request; on the overlay a resume
        flushes the stack's output, so the channel passes on only real pauses and resumes."""
        protocol, transport, _, _ = connect()
        calls: list[str] = []
        transport.resumeProducing = lambda: calls.append("resume")  # type: ignore[method-assign]
        transport.pauseProducing = lambda: calls.append("pause")  # type: ignore[method-assign]
        for _ in range(3):
            protocol.dataReceived(HEAD + b"\r\n")
        self.assertEqual(transport.value().count(b"200 OK"), 3)
        self.assertEqual(calls, [])
        protocol._channel.pauseProducing()  # the response's consumer is full
        protocol._channel.resumeProducing()
        self.assertEqual(calls, ["pause", "resume"])


class BodyRateTests(SynchronousTestCase):
    """serve/streaming.py: a body below the minimum rate is a 408, whatever the resource."""

    def connect(self) -> tuple[Any, StringTransport, Clock, _Site]:
        limits = HTTPLimits(body_timeout=10, body_min_rate=100)  # 1000 bytes per 10 s
        return connect(limits=limits, streaming=True)

    def test_trickling_body_is_408(self) -> None:
        protocol, transport, clock, site = self.connect()
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(9):
            protocol.dataReceived(b"x" * 100)
            clock.advance(1)
        clock.advance(1)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "), transport.value()[:60])
        self.assertTrue(transport.disconnecting)
        self.assertEqual([c for c, _ in site.refusals], ["body_too_slow"])

    def test_stalled_body_is_408(self) -> None:
        protocol, transport, clock, _ = self.connect()
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        clock.advance(10)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "))

    def test_body_at_the_rate_is_served(self) -> None:
        protocol, transport, clock, site = self.connect()
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
        for _ in range(50):
            protocol.dataReceived(b"x" * 100)  # 100 bytes a second: just the minimum
            clock.advance(1)
        self.assertIn(b"200 OK", transport.value())
        clock.advance(60)
        self.assertEqual(site.refusals, [])
        self.assertFalse(transport.disconnecting)
