"""funnel_tw/serve/http2.py against a real Twisted H2Connection and the node's batched
subclass of it: these fail when Twisted changes the private HTTP/2 internals the proxy relies
on (the stream's connection, its blocked-transport Deferred, and resetting a stream with an
error code)."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import http, server
from twisted.web._http2 import H2Connection  # private on purpose: what the module wraps
from twisted.web.resource import Resource

from funnel_tw.serve.http2 import (
    INTERNAL_ERROR,
    abort_stream,
    connection_blocked,
    h2_connection,
    reset_stream,
    stream_paused,
)
from funnel_tw.web.h2send import BatchedH2Connection


class _Capture(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[server.Request] = []

    def render(self, request: server.Request) -> int:
        self.requests.append(request)
        return server.NOT_DONE_YET


class HTTP2InternalsTests(SynchronousTestCase):
    kind: type = H2Connection

    def setUp(self) -> None:
        root = _Capture()
        site = server.Site(root)
        self.conn = self.kind(Clock())
        self.conn.requestFactory = site.requestFactory
        self.conn.site = site
        self.conn.factory = site
        self.transport = StringTransport()
        self.conn.makeConnection(self.transport)
        self.client = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.client.initiate_connection()
        headers = [(b":method", b"GET"), (b":path", b"/"), (b":authority", b"x")]
        self.client.send_headers(1, [*headers, (b":scheme", b"https")], end_stream=True)
        self.conn.dataReceived(self.client.data_to_send())
        self.assertEqual(len(root.requests), 1)
        self.request = root.requests[0]

    def test_connection_of_a_stream(self) -> None:
        self.assertIs(h2_connection(self.request), self.conn)
        self.assertIs(h2_connection(self.request).transport, self.transport)  # the SNI's

    def test_blocked_while_the_transport_is_full(self) -> None:
        self.assertIsNone(connection_blocked(self.request))
        self.conn.pauseProducing()  # what the transport underneath does when its buffer fills
        blocked = connection_blocked(self.request)
        assert blocked is not None
        self.assertFalse(blocked.called)
        self.conn.resumeProducing()
        self.assertTrue(blocked.called)
        self.assertIsNone(connection_blocked(self.request))

    def test_paused_by_its_stream(self) -> None:
        """The proxy resumes its backend after the connection unblocks only if the stream
        has not paused it too (it would never pause it again: Twisted's flag says paused)."""
        paused: list[bool] = []

        class Producer:
            def pauseProducing(self) -> None:
                paused.append(True)

            def resumeProducing(self) -> None:
                paused.append(False)

            def stopProducing(self) -> None:
                pass

        self.request.registerProducer(Producer(), True)
        self.assertFalse(stream_paused(self.request))
        self.request.channel.flowControlBlocked()
        self.assertEqual((paused, stream_paused(self.request)), ([True], True))
        self.request.channel.windowUpdated()  # the client's window has room
        self.assertEqual((paused, stream_paused(self.request)), ([True, False], False))

    def test_reset_with_an_error_code(self) -> None:
        self.assertIn(1, self.conn.streams)
        self.assertTrue(reset_stream(self.request, INTERNAL_ERROR))
        self.assertNotIn(1, self.conn.streams)
        events = self.client.receive_data(self.transport.value())
        resets = [e for e in events if isinstance(e, h2.events.StreamReset)]
        self.assertEqual([(e.stream_id, e.error_code) for e in resets], [(1, INTERNAL_ERROR)])

    def test_abort_a_stream_with_an_answer(self) -> None:
        lost: list[object] = []
        self.request.notifyFinish().addErrback(lost.append)
        self.assertTrue(abort_stream(self.request, 408, "too slow"))
        self.assertNotIn(1, self.conn.streams)
        self.assertEqual(len(lost), 1)  # the request learns its stream is gone
        events = self.client.receive_data(self.transport.value())
        answers = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
        self.assertEqual(dict(answers[0].headers)[b":status"], b"408")
        ended = [e.stream_id for e in events if isinstance(e, h2.events.StreamEnded)]
        self.assertEqual(ended, [1])  # the client had ended its side: no reset is needed
        self.assertFalse(abort_stream(self.request, 408, "again"))  # gone already

    def test_http1_request_has_none_of_it(self) -> None:
        channel = http.HTTPChannel()
        channel.callLater = Clock().callLater  # its idle timeout, off the global reactor
        channel.makeConnection(StringTransport())
        request = http.Request(channel)
        self.assertIsNone(h2_connection(request))
        self.assertIsNone(connection_blocked(request))
        self.assertFalse(stream_paused(request))
        self.assertFalse(reset_stream(request))
        self.assertFalse(abort_stream(request, 408, "not HTTP/2"))


class BatchedHTTP2InternalsTests(HTTP2InternalsTests):
    """The same on the connection the node uses (funnel_tw/web/h2send.py)."""

    kind = BatchedH2Connection
