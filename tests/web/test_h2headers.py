"""funnel_tw/web/h2headers.py held to h2's own checks: generated request header blocks (valid
ones, and ones with each kind of fault h2 refuses) give the same list or both a
ProtocolError; its h2 connection builds streams as h2's does and answers a bad block with the
same GOAWAY."""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
from h2.exceptions import ProtocolError
from h2.utilities import HeaderValidationFlags, normalize_inbound_headers, validate_headers
from hpack.struct import HeaderTuple, NeverIndexedHeaderTuple
from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.web import h2headers
from funnel_tw.web.h2send import BatchedH2Connection

REQUEST = HeaderValidationFlags(
    is_client=False, is_trailer=False, is_response_header=False, is_push_promise=False
)
GOOD = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":path", b"/"),
    (b":authority", b"x.test"),
    (b"user-agent", b"h2load"),
]


def reference(headers: list[Any]) -> Any:
    """h2's own: what it returns, or that it refuses."""
    try:
        return list(validate_headers(normalize_inbound_headers(headers, REQUEST), REQUEST))
    except ProtocolError:
        return ProtocolError


def ours(headers: list[Any]) -> Any:
    try:
        return h2headers.request_headers(headers)
    except ProtocolError:
        return ProtocolError


def shape(result: Any) -> Any:
    if result is ProtocolError:
        return result
    return [(type(h), h[0], h[1]) for h in result]


NAMES = [
    b":method", b":scheme", b":path", b":authority", b":protocol", b":status", b":bogus", b":",
    b"::path", b"host", b"cookie", b"te", b"connection", b"keep-alive", b"upgrade",
    b"transfer-encoding", b"proxy-connection", b"user-agent", b"Host", b"x-y", b"", b"a:b",
    b"a b", b"a\x7f", b"\xc3\xa9", b"content-length", b"~!#$%&'*+-.^_`|",
]  # fmt: skip
VALUES = [
    b"", b"GET", b"CONNECT", b"POST", b"/", b"/a?b", b"https", b"x.test", b"y.test",
    b"websocket", b"trailers", b"TrailerS", b"gzip", b" a", b"a ", b"\ta", b"a\t", b"a b",
    b"a\x00", b"a\r\nb", b"a\nb", b"\xff", b"a;", b"; ", b" ",
]  # fmt: skip

names = st.one_of(st.sampled_from(NAMES), st.binary(max_size=5))
values = st.one_of(st.sampled_from(VALUES), st.binary(max_size=5))
kinds = st.sampled_from([tuple, lambda p: HeaderTuple(*p), lambda p: NeverIndexedHeaderTuple(*p)])


@st.composite
def header_blocks(draw: st.DrawFn) -> list[Any]:
    """Often a valid request with a few changes, else anything."""
    if draw(st.booleans()):
        pairs = list(GOOD)
        for _ in range(draw(st.integers(0, 3))):
            at = draw(st.integers(0, len(pairs)))
            op = draw(st.sampled_from(["insert", "drop", "replace"]))
            if op == "insert" or not pairs:
                pairs.insert(at, (draw(names), draw(values)))
            elif op == "drop":
                pairs.pop(min(at, len(pairs) - 1))
            else:
                pairs[min(at, len(pairs) - 1)] = (draw(names), draw(values))
    else:
        pairs = draw(st.lists(st.tuples(names, values), max_size=10))
    return [draw(kinds)(pair) for pair in pairs]


class RequestHeadersTests(SynchronousTestCase):
    @settings(max_examples=3000, deadline=None)
    @given(header_blocks())
    @example([*GOOD, (b"cookie", b"a"), (b"cookie", b"b=c")])
    @example([(b"cookie", b"a"), *GOOD])  # cookies are moved last: not "before" the pseudo ones
    @example([*GOOD, (b"cookie", b"a"), (b"cookie", b"")])  # joined "a; " ends in a space
    @example([*GOOD, (b"cookie", b"")])
    @example([(b":method", b"CONNECT"), (b":authority", b"x.test")])
    @example([(b":method", b"CONNECT"), (b":authority", b"x"), (b":path", b"/")])
    @example([*GOOD, (b":protocol", b"websocket")])
    @example([(b":method", b"CONNECT"), (b":protocol", b"websocket"), *GOOD[1:]])
    @example([*GOOD[:3], (b"host", b"x.test")])
    @example([*GOOD, (b"host", b"y.test")])
    @example([*GOOD[:3], (b"host", b"x.test"), (b"host", b"x.test")])
    @example([*GOOD, (b"te", b"TrailerS")])
    def test_as_h2(self, headers: list[Any]) -> None:
        expected, got = reference(headers), ours(headers)
        self.assertEqual(shape(got), shape(expected))
        if got is not ProtocolError:  # the same header objects, not copies
            self.assertTrue(
                all(a is b for a, b in zip(got, expected, strict=True) if a[0] != b"cookie")
            )

    def test_a_plain_request_passes_unchanged(self) -> None:
        block = [HeaderTuple(*pair) for pair in GOOD]
        self.assertEqual(h2headers.request_headers(block), block)


def client_bytes(headers: list[tuple[bytes, bytes]], trailers: Any = None) -> bytes:
    """A client connection's preface and one request, its headers not checked by the client."""
    config = h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
    )
    client = h2.connection.H2Connection(config)
    client.initiate_connection()
    client.send_headers(1, headers, end_stream=trailers is None)
    if trailers is not None:
        client.send_headers(1, trailers, end_stream=True)
    return client.data_to_send()


def server(installed: bool) -> h2.connection.H2Connection:
    config = h2.config.H2Configuration(client_side=False, header_encoding=None)
    conn = h2headers.connection(config) if installed else h2.connection.H2Connection(config)
    conn.initiate_connection()
    conn.data_to_send()
    return conn


def answer(installed: bool, data: bytes) -> tuple[Any, bytes]:
    conn = server(installed)
    try:
        events = conn.receive_data(data)
    except ProtocolError:
        return ProtocolError, conn.data_to_send()
    return [type(e) for e in events], conn.data_to_send()


def frame_types(data: bytes) -> list[int]:
    types, at = [], 0
    while at + 9 <= len(data):
        types.append(data[at + 3])
        at += 9 + int.from_bytes(data[at : at + 3], "big")
    return types


class ConnectionTests(SynchronousTestCase):
    def test_installed_streams_use_it(self) -> None:
        conn = server(True)
        events = conn.receive_data(client_bytes(GOOD))
        self.assertIsInstance(events[1], h2.events.RequestReceived)
        self.assertIsInstance(conn.streams[1], h2headers._Stream)
        self.assertEqual(events[1].headers, GOOD)
        twisted_h2 = BatchedH2Connection()
        self.assertIsInstance(twisted_h2.conn, h2headers._Connection)

    def test_streams_built_as_h2_builds_them(self) -> None:
        # _begin_new_stream is a copy of h2's: the same stream state, the same connection state
        data = client_bytes(GOOD)
        ours_, h2s = server(True), server(False)
        ours_.receive_data(data)
        h2s.receive_data(data)
        mine, theirs = ours_.streams[1], h2s.streams[1]
        self.assertIs(type(mine), h2headers._Stream)
        self.assertEqual(sorted(vars(mine)), sorted(vars(theirs)))
        for name in ("stream_id", "max_outbound_frame_size"):
            self.assertEqual(getattr(mine, name), getattr(theirs, name), name)
        self.assertEqual(mine.outbound_flow_control_window, theirs.outbound_flow_control_window)
        self.assertEqual(mine.inbound_flow_control_window, theirs.inbound_flow_control_window)
        self.assertEqual(ours_.highest_inbound_stream_id, h2s.highest_inbound_stream_id)
        self.assertEqual(sorted(vars(ours_)), sorted(vars(h2s)))
        for bad_id in (1, 2):  # not above the highest; even (the server's)
            with self.assertRaises(ProtocolError):
                ours_._begin_new_stream(bad_id, h2.connection.AllowedStreamIDs.ODD)
            with self.assertRaises(ProtocolError):
                h2s._begin_new_stream(bad_id, h2.connection.AllowedStreamIDs.ODD)

    def test_a_refused_block_answered_as_h2_answers_it(self) -> None:
        for bad in (
            [*GOOD, (b"connection", b"close")],
            [*GOOD, (b"X-Up", b"a")],
            [(b"user-agent", b"a"), *GOOD],
            GOOD[1:],
            [*GOOD, (b"x", b" padded")],
        ):
            data = client_bytes(bad)
            ours_ = answer(True, data)
            self.assertEqual(ours_, answer(False, data), bad)
            self.assertIs(ours_[0], ProtocolError)
            self.assertIn(7, frame_types(ours_[1]))  # GOAWAY

    def test_trailers_are_h2s_own(self) -> None:
        # a pseudo-header in trailers: h2's trailer rules, not the request's
        data = client_bytes(GOOD, trailers=[(b":path", b"/x")])
        self.assertIs(answer(True, data)[0], ProtocolError)
        ok = client_bytes(GOOD, trailers=[(b"x-sum", b"1")])
        self.assertEqual(answer(True, ok), answer(False, ok))
