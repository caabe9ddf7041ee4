"""Live events: one page's stream, and what happens when it does not keep up."""

from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from funnel_tw.inspect.replay import request_bytes
from funnel_tw.inspect.server import MAX_EVENT_CLIENTS, PING_SECONDS, InspectRoot
from funnel_tw.inspect.store import Entry, Store

from .test_units import entry


class EventsRequest(DummyRequest):
    def registerProducer(self, producer: object, streaming: bool) -> None:
        self.producer = producer  # (DummyRequest's own calls resumeProducing in a loop)


def events_request() -> DummyRequest:
    request = EventsRequest([b"api", b"events"])
    request.path = b"/api/events"
    request.requestHeaders.setRawHeaders(b"host", [b"127.0.0.1:4040"])
    return request


class EventTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.store = Store(10)
        self.root = InspectRoot(self.store, lambda e, raw: None, False, self.clock)
        self.root.port = 4040

    def written(self, request: DummyRequest) -> bytes:
        return b"".join(request.written)

    def test_events_pings_and_a_slow_page(self) -> None:
        request = events_request()
        self.root.render(request)
        self.assertEqual(len(self.root.events), 1)
        client = self.root.events[0]
        self.store.add(entry())
        self.assertIn(b"event: started\ndata: {", self.written(request))
        self.clock.advance(PING_SECONDS)
        self.assertTrue(self.written(request).endswith(b": ping\n\n"))
        # the transport's buffer is full: events are dropped, not buffered; then one resync
        client.pauseProducing()
        before = len(self.written(request))
        for _ in range(100):
            self.store.add(entry())
        self.clock.advance(PING_SECONDS)
        self.assertEqual(len(self.written(request)), before)
        client.resumeProducing()
        self.assertTrue(self.written(request).endswith(b"event: resync\ndata: {}\n\n"))
        self.assertEqual(self.root.counters["events_resync"], 1)
        # the page goes away: no listener, no timer left
        request.processingFailed(Exception("gone"))  # fires notifyFinish's errback
        self.assertEqual((self.root.events, self.store.listeners), ([], []))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_too_many_pages(self) -> None:
        requests = [events_request() for _ in range(MAX_EVENT_CLIENTS + 1)]
        for request in requests:
            self.root.render(request)
        self.assertEqual(requests[-1].responseCode, 503)
        self.assertEqual(len(self.root.events), MAX_EVENT_CLIENTS)


class HostileAPITests(SynchronousTestCase):
    """Whatever a script POSTs to the replay endpoint: an answer, never an exception."""

    @given(
        st.binary(max_size=600),
        st.sampled_from([b"application/json", b"application/x-www-form-urlencoded", b""]),
    )
    def test_any_body(self, body: bytes, content_type: bytes) -> None:
        store = Store(10)
        known = entry(body=b"{}")
        store.add(known)
        sent: list[bytes] = []

        def replay(e: Entry, raw: bytes | None) -> None:
            sent.append(request_bytes(e, raw))

        root = InspectRoot(store, replay, False, task.Clock())
        root.port = 4040
        for data in (body, body.replace(b"ID", known.id.encode())):
            request = DummyRequest([b"api", b"requests", b"http"])
            request.method = b"POST"
            request.path = b"/api/requests/http"
            request.content = io.BytesIO(data)
            request.requestHeaders.setRawHeaders(b"host", [b"127.0.0.1:4040"])
            if content_type:
                request.requestHeaders.setRawHeaders(b"content-type", [content_type])
            answer = root.render(request)
            code = request.responseCode or 200
            self.assertIn(code, (204, 400, 404, 409), answer)
            self.assertEqual(code == 204, len(sent) > 0)
            sent.clear()

    def test_replay_json_and_form(self) -> None:
        store = Store(10)
        known = entry(body=b"{}")
        store.add(known)
        sent: list[Entry] = []
        root = InspectRoot(store, lambda e, raw: sent.append(e), False, task.Clock())
        root.port = 4040
        for content_type, data in [
            (b"application/json", b'{"id": "%s"}' % known.id.encode()),
            (b"application/x-www-form-urlencoded", b"id=%s" % known.id.encode()),
        ]:
            request = DummyRequest([])
            request.method, request.path = b"POST", b"/api/requests/http"
            request.content = io.BytesIO(data)
            request.requestHeaders.setRawHeaders(b"host", [b"localhost:4040"])
            request.requestHeaders.setRawHeaders(b"content-type", [content_type])
            self.assertEqual((root.render(request), request.responseCode), (b"", 204))
        self.assertEqual(sent, [known, known])
