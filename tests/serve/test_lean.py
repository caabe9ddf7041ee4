"""serve/lean.py, the fast path for plain proxied GET and HEAD requests, against twisted.web.

In memory, with a fixed clock: one HTTPS site (no TLS: a StringTransport in its place) and a
scripted backend pool. Every request is run through a site with the fast path and through one
without it, and everything observable must match: the head each backend received, the bytes
the client received (Date aside), the access log record, the connection's end. Hypothesis
draws the requests (methods, targets, header names and values, including hostile ones) and
the backend's answers (status, headers, body, failures, silence until the timeout). Other
tests check that the fast path really took what it should, and gave back what it should not.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw import keys
from funnel_tw.config import load_node_config
from funnel_tw.flow import Flow
from funnel_tw.serve.access.guard import Access
from funnel_tw.serve.lean import LeanChannel, parse_request_head
from funnel_tw.serve.model import ServeConfig
from funnel_tw.serve.notes import request_notes
from funnel_tw.serve.proxy import ProxyResource
from funnel_tw.serve.web import MountRouter, ServeSite
from funnel_tw.web.httplimits import HTTPLimits

HOST = "node.example.com"
FLOW = Flow(client=("203.0.113.7", 5555), host=HOST, port=443, funnel=True, peer="relay")
TIMEOUT = 30.0
_DATE = re.compile(rb"\r\nDate: [^\r]*")


def node_config(folder: Path) -> Any:
    relay = keys.encode_key(keys.public_key(keys.generate_private_key()))
    (folder / "node.ini").write_text(f"""[node]
private-key = {keys.encode_key(keys.generate_private_key())}
address = 100.64.0.2/32
hostname = {HOST}
state-dir = state

[peer relay]
public-key = {relay}
allowed-ips = 100.64.0.1/32
funnel-ingress = yes

[serve 443]
funnel = yes
proxy-timeout = {TIMEOUT:g}
/ = text:root
/app/ = http://127.0.0.1:9/base/
/raw/ = http://127.0.0.1:9/raw/
underscores-in-headers /raw/ = yes
/office/ = http://127.0.0.1:9/office/
access /office/ = office

[access office]
allow = 203.0.113.0/24
""")
    return load_node_config(folder / "node.ini")


class Exchange:
    def __init__(self, head: bytes, sink: Any) -> None:
        self.head = head
        self.sink: Any = sink
        self.paused = 0

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        self.paused -= 1

    def stopProducing(self) -> None:
        self.cancel()

    def cancel(self) -> None:
        self.sink = None


class Pool:
    """The backend: records each head, answers only when the test says."""

    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []
        self.fail_at_once = False

    def request(self, head: bytes, body: Any, sink: Any, *, no_body: bool, retry: bool) -> Any:
        exchange = Exchange(head, sink)
        self.exchanges.append(exchange)
        if self.fail_at_once:
            exchange.sink = None
            sink.response_failed("connection refused", False)
        return exchange

    def pool_for(self, target: Any) -> Pool:
        return self

    def endpoint_for(self, target: Any) -> Any:
        return self  # Upgrade requests (twisted.web's path): a backend that never answers

    def connect(self, factory: Any) -> Any:
        return defer.Deferred()


class Node:
    """One connection to the site, the fast path on or off."""

    def __init__(self, config: Any, lean: bool, oidc: bool = False) -> None:
        serve = ServeConfig.from_node_config(config)
        self.clock = task.Clock()
        self.pool = Pool()
        self.logged: list[Any] = []

        def proxy(target: str, prefix: str, flow: Flow, timeout: float, underscores: bool) -> Any:
            return ProxyResource(target, prefix, flow, self.clock, self.pool, timeout, underscores)  # type: ignore[arg-type]

        access = Access(config.access, self.clock)  # as the node has, policies or not
        if oidc:
            access.oidc = {"someone": None}  # type: ignore[dict-item]  # only its presence counts
        self.counters: dict[str, int] = {}

        def count(what: str) -> None:
            self.counters[what] = self.counters.get(what, 0) + 1

        router = MountRouter(serve, 443, FLOW, proxy, count, access)
        self.site = ServeSite(router, self.clock, timeout=300, limits=HTTPLimits())
        self.site.lean = lean
        self.site.on_request = lambda request, flow: self.logged.append(request)
        self.site.flow = FLOW
        self.protocol: Any = self.site.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        if not self.transport.disconnecting:  # as a reactor: nothing is read after a close
            self.protocol.dataReceived(data)

    @property
    def lean(self) -> bool:
        return isinstance(self.protocol._channel, LeanChannel)

    def answer(self, script: tuple[Any, ...]) -> None:
        """Play the backend's part for the oldest exchange still waiting."""
        waiting = [e for e in self.pool.exchanges if e.sink is not None]
        if not waiting:
            return
        exchange = waiting[0]
        kind = script[0]
        if kind == "silent":
            self.clock.advance(TIMEOUT + 1)
            return
        if kind == "refused":
            sink, exchange.sink = exchange.sink, None
            sink.response_failed("connection refused", False)
            return
        _, status, reason, headers, chunks, cut = script
        exchange.sink.response_head(status, reason, headers)
        for chunk in chunks:
            if exchange.sink is None:
                return
            exchange.sink.response_data(chunk)
        if exchange.sink is None:
            return
        sink, exchange.sink = exchange.sink, None
        if cut:
            sink.response_failed("connection lost", True)
        else:
            sink.response_end()

    def observed(self) -> tuple[Any, ...]:
        written = _DATE.sub(b"\r\nDate: -", self.transport.value())
        logged = [
            (r.code, r.method, r.uri, r.sentLength, request_notes(r).get("mount"))
            for r in self.logged
        ]
        return (
            [e.head for e in self.pool.exchanges],
            written,
            logged,
            self.transport.disconnecting,
            getattr(self.transport, "disconnected", False),
        )


# --- what hypothesis draws ---------------------------------------------------------------

BENIGN = st.tuples(
    st.sampled_from([b"Accept", b"accept", b"X-Thing", b"x-thing", b"Cookie", b"User-Agent"]),
    st.sampled_from([b"*/*", b"1", b"a=b; c=d", b" padded\t", b"caf\xc3\xa9", b""]),
)
NAMES = st.sampled_from(
    [
        b"Accept",
        b"accept",
        b"ACCEPT",
        b"X-Thing",
        b"x-thing",
        b"X_Forwarded_For",
        b"X_Custom",
        b"X-Forwarded-For",
        b"X-Real-IP",
        b"Tailscale-User-Login",
        b"Remote-User",
        b"Connection",
        b"Keep-Alive",
        b"TE",
        b"Te",
        b"Proxy-Connection",
        b"Content-Length",
        b"Transfer-Encoding",
        b"Expect",
        b"Upgrade",
        b"Forwarded",
        b"Cookie",
        b"Host",
        b"Bad Name",
        b"",
        b"X\x00",
    ]
)
VALUES = st.one_of(
    st.sampled_from(
        [
            b"1",
            b"close",
            b"keep-alive",
            b"Close",
            b"keep-alive, X-Thing",
            b"chunked",
            b"100-continue",
            b"websocket",
            b" padded\t",
            b"a\x01b",
            b"a\x7fb",
            b"caf\xc3\xa9",
            b"",
        ]
    ),
    st.binary(max_size=12),
)
TARGETS = st.one_of(
    st.sampled_from(
        [
            b"/app/x",
            b"/app/",
            b"/app",
            b"/raw/y?q=1",
            b"/office/z",
            b"/app;p/x",
            b"/app/../secret",
            b"/app/%2e%2e/app/z",
            b"/app/..%2fsecret",
            b"/app/a%00b",
            b"/app/x#frag",
            b"/",
            b"/nothing",
            b"*",
            b"http://node.example.com/app/abs",
            b"/app/caf\xc3\xa9",
            b"/app/a b",
        ]
    ),
    st.binary(min_size=1, max_size=12).map(lambda b: b"/app/" + b),
)
METHODS = st.sampled_from([b"GET"] * 4 + [b"HEAD"] * 2 + [b"POST", b"get", b"OPTIONS", b"GET "])
VERSIONS = st.sampled_from([b"HTTP/1.1"] * 8 + [b"HTTP/1.0", b"HTTP/2.0"])
GOOD_TARGETS = st.sampled_from([b"/app/x", b"/app/", b"/raw/y?q=1", b"/app/a/../b?c=%20"])


@st.composite
def requests(draw: Any) -> bytes:
    # half of them requests the fast path takes, the others with odd parts
    odd = draw(st.booleans())
    method = draw(METHODS) if odd else draw(st.sampled_from([b"GET", b"GET", b"HEAD"]))
    version = draw(VERSIONS) if odd else b"HTTP/1.1"
    target = draw(st.one_of(GOOD_TARGETS, TARGETS) if odd else GOOD_TARGETS)
    headers = [(b"Host", HOST.encode())]
    headers += draw(st.lists(BENIGN, max_size=4))
    if odd:
        headers += draw(st.lists(st.tuples(NAMES, VALUES), max_size=2))
    if draw(st.booleans()):
        headers.reverse()
    lines = [method + b" " + target + b" " + version]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


RESPONSE_HEADERS = st.lists(
    st.sampled_from(
        [
            (b"Content-Type", b"text/plain"),
            (b"content-type", b"application/json"),
            (b"Date", b"Mon, 01 Jan 2024 00:00:00 GMT"),
            (b"Server", b"backend/1"),
            (b"Connection", b"close"),
            (b"Connection", b"X-Gone"),
            (b"X-Gone", b"named by Connection"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Set-Cookie", b"a=1"),
            (b"set-cookie", b"b=2"),
            (b"X-Frame-Options", b"DENY"),
            (b"Www-Authenticate", b"Basic"),
            (b"Content-Length", b"0"),
            (b"Content-Length", b"5"),
        ]
    ),
    max_size=6,
)


@st.composite
def answers(draw: Any) -> tuple[Any, ...]:
    kind = draw(st.sampled_from(["ok", "ok", "ok", "silent", "refused"]))
    if kind != "ok":
        return (kind,)
    status = draw(st.sampled_from([200, 201, 204, 206, 301, 304, 404, 500, 299]))
    reason = draw(st.sampled_from([b"", b"OK", b"Custom Reason"]))
    chunks = draw(st.lists(st.binary(min_size=1, max_size=8), max_size=3))
    return ("ok", status, reason, draw(RESPONSE_HEADERS), chunks, draw(st.booleans()))


class DifferentialTests(SynchronousTestCase):
    def setUp(self) -> None:
        folder = Path(self.mktemp())
        folder.mkdir()
        self.config = node_config(folder)

    def both(self, oidc: bool = False) -> tuple[Node, Node]:
        return Node(self.config, True, oidc), Node(self.config, False, oidc)

    def play(
        self, data: list[bytes], scripts: list[tuple[Any, ...]], oidc: bool = False
    ) -> tuple[Node, Node]:
        fast, reference = self.both(oidc)
        for node in (fast, reference):
            for chunk in data:
                node.send(chunk)
            for script in scripts:
                node.answer(script)
        self.assertEqual(fast.observed(), reference.observed())
        return fast, reference

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(requests(), min_size=1, max_size=3), st.lists(answers(), max_size=4))
    def test_any_requests_any_answers_same_as_twisted_web(
        self, heads: list[bytes], scripts: list[tuple[Any, ...]]
    ) -> None:
        """Pipelined in one read: every observable the same, whichever path took them."""
        self.play([b"".join(heads)], scripts)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(requests(), answers()), min_size=1, max_size=3))
    def test_one_at_a_time_same_as_twisted_web(self, steps: list[tuple[bytes, Any]]) -> None:
        fast, reference = self.both()
        for node in (fast, reference):
            for head, script in steps:
                node.send(head)
                node.answer(script)
        self.assertEqual(fast.observed(), reference.observed())

    # --- the fast path is really taken, and really given back ------------------------------

    GET = b"GET /app/x?y=1 HTTP/1.1\r\nHost: node.example.com\r\nAccept: */*\r\n\r\n"
    OK = ("ok", 200, b"OK", [(b"Content-Length", b"2")], [b"hi"], False)

    def test_plain_get_is_served_by_the_fast_path_with_the_same_bytes(self) -> None:
        fast, reference = self.play([self.GET, self.GET], [self.OK, self.OK])
        self.assertTrue(fast.lean)
        self.assertFalse(reference.lean)
        self.assertEqual(len(fast.pool.exchanges), 2)
        self.assertEqual(
            fast.pool.exchanges[0].head,
            b"GET /base/x?y=1 HTTP/1.1\r\nHost: node.example.com\r\nAccept: */*\r\n"
            b"X-Forwarded-Host: node.example.com\r\nX-Forwarded-Proto: https\r\n"
            b"X-Forwarded-For: 203.0.113.7\r\nTailscale-Funnel-Request: ?1\r\n",
        )
        self.assertEqual(fast.transport.value().count(b"HTTP/1.1 200 OK\r\n"), 2)
        self.assertEqual(fast.counters, {"fast_path": 2})

    def test_the_backends_date_and_server_once_and_hop_by_hop_dropped(self) -> None:
        """Both paths (proxy.passing_response_headers): the backend's Date and Server replace
        the node's, and what is hop-by-hop, or named by any of its Connection headers, stays
        behind."""
        answer = (
            "ok",
            200,
            b"OK",
            [
                (b"Date", b"Mon, 01 Jan 2024 00:00:00 GMT"),
                (b"Server", b"backend/1"),
                (b"Connection", b"X-Gone"),
                (b"X-Gone", b"1"),
                (b"X-Also-Gone", b"1"),
                (b"Connection", b"x-also-gone , X-Third"),  # a second line counts too
                (b"x-third", b"1"),
                (b"Keep-Alive", b"timeout=5"),
                (b"Content-Length", b"2"),
            ],
            [b"hi"],
            False,
        )
        for node in self.both():
            node.send(self.GET)
            node.answer(answer)
            head = node.transport.value().split(b"\r\n\r\n")[0].lower()
            self.assertEqual(head.count(b"\r\ndate: "), 1)
            self.assertIn(b"\r\ndate: mon, 01 jan 2024 00:00:00 gmt", head)
            self.assertEqual(head.count(b"\r\nserver: "), 1)
            self.assertIn(b"\r\nserver: backend/1", head)
            for gone in (b"x-gone", b"x-also-gone", b"x-third", b"keep-alive", b"connection"):
                self.assertNotIn(b"\r\n" + gone + b":", head)

    def test_what_goes_back_to_twisted_web(self) -> None:
        given_back = [
            b"POST /app/x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi",
            b"GET /app/x HTTP/1.0\r\nHost: h\r\n\r\n",
            b"GET /app/x HTTP/1.1\r\n\r\n",  # no Host
            b"GET /app/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET /app/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET /app/x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
            b"GET /app/x HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"GET /app/x HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Thing\r\n\r\n",
            b"GET /app/x HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
            b"GET /app/x HTTP/1.1\r\nHost: h\r\nBad Name: 1\r\n\r\n",
            b"GET /app/x HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",
            b"GET /app/x HTTP/1.1\r\nHost: h\nX: bare-lf\r\n\r\n",
            b"GET /app/..%2fx HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",  # a text mount
            b"GET /nothing HTTP/1.1\r\nHost: h\r\n\r\n",  # no mount: 404
            b"GET /office/x HTTP/1.1\r\nHost: h\r\n\r\n",  # an access policy guards it
            b"GET /office;x/y HTTP/1.1\r\nHost: h\r\n\r\n",  # ";" picks another policy
            b"\r\nGET /app/x HTTP/1.1\r\nHost: h\r\n\r\n",  # a stray CRLF first
            b"GET /app/x HTTP/1.1\r\nHost: h\r\n",  # not complete yet
            b"GET /app/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: h\r\n\r\n",  # 414
            b"GET /app/x HTTP/1.1\r\nHost: h\r\n" + b"X: y\r\n" * 101 + b"\r\n",  # 431
        ]
        for data in given_back:
            fast, _ = self.play([data], [self.OK])
            self.assertFalse(fast.lean, data)

    def test_nothing_while_an_oidc_policy_exists(self) -> None:
        """Its callback paths and its session cookies are twisted.web's business."""
        fast, _ = self.play([self.GET], [self.OK], oidc=True)
        self.assertFalse(fast.lean)

    def test_given_back_between_requests_with_the_bytes_not_yet_read(self) -> None:
        post = b"POST /app/p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
        fast, _ = self.play([self.GET + post + self.GET], [self.OK, self.OK, self.OK])
        self.assertFalse(fast.lean)
        methods = [e.head.split(b" ")[0] for e in fast.pool.exchanges]
        self.assertEqual(methods, [b"GET", b"POST", b"GET"])
        self.assertEqual(fast.counters, {"fast_path": 1, "fast_path_handed_over": 1})
        self.assertEqual(fast.transport.value().count(b"HTTP/1.1 200 OK\r\n"), 3)

    def test_connection_close_is_answered_then_closed(self) -> None:
        close = self.GET.replace(b"Accept", b"Connection: close\r\nAccept")
        fast, _ = self.play([close, self.GET], [self.OK, self.OK])
        self.assertTrue(fast.lean)
        self.assertTrue(fast.transport.disconnecting)
        self.assertEqual(len(fast.pool.exchanges), 1)  # nothing read after it
        self.assertIn(b"\r\nConnection: close\r\n", fast.transport.value())

    def test_timeout_and_refusal(self) -> None:
        fast, _ = self.play([self.GET], [("silent",)])
        self.assertIn(b"HTTP/1.1 504 Gateway Time-out\r\n", fast.transport.value())
        self.assertIsNone(fast.pool.exchanges[0].sink)  # the exchange was given up
        fast, _ = self.play([self.GET], [("refused",)])
        self.assertIn(b"HTTP/1.1 502 Bad Gateway\r\n", fast.transport.value())

    def test_a_refusal_at_once_then_the_next_request(self) -> None:
        for node in self.both():
            node.pool.fail_at_once = True
            node.send(self.GET + self.GET)
            self.assertEqual(node.transport.value().count(b"HTTP/1.1 502 "), 2)

    def test_the_idle_timeout_closes(self) -> None:
        fast, _ = self.play([self.GET], [self.OK])
        fast.clock.advance(299)
        self.assertFalse(fast.transport.disconnecting)
        fast.clock.advance(2)
        self.assertTrue(fast.transport.disconnecting)

    def test_backpressure_pauses_the_backend_and_a_full_buffer_pauses_reading(self) -> None:
        fast = Node(self.config, lean=True)
        fast.send(self.GET)
        exchange = fast.pool.exchanges[0]
        fast.protocol._channel.pauseProducing()  # the client's side is full
        self.assertEqual(fast.transport.producerState, "paused")
        exchange.sink.response_head(200, b"OK", [(b"Content-Length", b"4")])
        self.assertEqual(exchange.paused, 2)  # paused when it began to stream too
        fast.protocol._channel.resumeProducing()
        exchange.sink.response_data(b"data")
        exchange.sink.response_end()
        self.assertEqual(fast.transport.producerState, "producing")
        # pipelined bytes beyond a head's limit while one is answered: stop reading
        fast.send(self.GET)
        fast.send(b"X" * (HTTPLimits().max_head_bytes + 1))
        self.assertEqual(fast.transport.producerState, "paused")

    def test_client_gone_mid_request_cancels_and_logs(self) -> None:
        fast = Node(self.config, lean=True)
        fast.send(self.GET)
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure

        fast.protocol.connectionLost(Failure(ConnectionLost()))
        self.assertIsNone(fast.pool.exchanges[0].sink)
        self.assertEqual(request_notes(fast.logged[0])["reason"], "connection lost")
        self.assertEqual(fast.clock.getDelayedCalls(), [])


class ParseTests(SynchronousTestCase):
    @given(st.binary(max_size=200))
    def test_any_bytes_parse_or_decline(self, data: bytes) -> None:
        parse_request_head(data, 8192, 100)

    def test_limits_decline(self) -> None:
        head = b"GET /x HTTP/1.1\r\nHost: h"
        self.assertIsNotNone(parse_request_head(head, 15, 1))
        self.assertIsNone(parse_request_head(head, 14, 1))
        self.assertIsNone(parse_request_head(head + b"\r\nA: b", 15, 1))
