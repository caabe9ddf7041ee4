"""The inspector's parts without a reactor: the ring, bodies, masking, the ngrok shape, and
the parser of edited requests (fed any bytes)."""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.inspect.render import entry_json, mask_value, replay_refusal, request_raw
from funnel_tw.inspect.replay import ReplayError, parse_raw, request_bytes, unmask
from funnel_tw.inspect.store import Body, Entry, Store


def entry(
    headers: list[tuple[bytes, list[bytes]]] | None = None,
    body: bytes = b"",
    limit: int = 1024,
    method: bytes = b"POST",
) -> Entry:
    e = Entry(
        start=1_700_000_000.0,
        started=5.0,
        client=("203.0.113.9", 50123),
        host="node.example.com",
        port=443,
        funnel=True,
        peer="relay",
        method=method,
        uri=b"/hooks/a?x=1&y=two",
        proto=b"HTTP/1.1",
        request_headers=headers
        if headers is not None
        else [
            (b"Host", [b"node.example.com"]),
            (b"Authorization", [b"Bearer s3cret-token"]),
            (b"Cookie", [b"a=1; __Host-funnel-tw-office=SESSION"]),
            (b"Content-Length", [str(len(body)).encode()]),
            (b"Content-Type", [b"application/json"]),
        ],
        body_limit=limit,
    )
    e.request_body.add(body)
    return e


class BodyTests(SynchronousTestCase):
    def test_keeps_the_first_limit_bytes_and_counts_all(self) -> None:
        body = Body(5)
        for chunk in (b"abc", b"defg", b"hij"):
            body.add(chunk)
        self.assertEqual((bytes(body.data), body.size, body.truncated), (b"abcde", 10, True))
        whole = Body(5)
        whole.add(b"abcde")
        self.assertFalse(whole.truncated)
        nothing = Body(0)
        nothing.add(b"x" * 100)
        self.assertEqual((bytes(nothing.data), nothing.size), (b"", 100))

    @given(st.lists(st.binary(max_size=300), max_size=20), st.integers(0, 1000))
    def test_never_more_than_the_limit(self, chunks: list[bytes], limit: int) -> None:
        body = Body(limit)
        for chunk in chunks:
            body.add(chunk)
        whole = b"".join(chunks)
        self.assertEqual(bytes(body.data), whole[:limit])
        self.assertEqual(body.size, len(whole))


class StoreTests(SynchronousTestCase):
    def test_ring_keeps_the_newest(self) -> None:
        store = Store(3)
        heard: list[tuple[str, str]] = []
        store.listeners.append(lambda what, e: heard.append((what, e.id if e else "")))
        ids = [store.add(entry()) for _ in range(5)]
        self.assertEqual(len(store), 3)
        self.assertEqual(store.evicted, 2)
        self.assertEqual([e.id for e in store.newest()], ids[:1:-1])
        self.assertEqual([e.id for e in store.newest(2)], [ids[4], ids[3]])
        self.assertIsNone(store.get(ids[0]))
        self.assertEqual(len(set(ids)), 5)
        gone = Entry.__new__(Entry)
        gone.id = ids[0]
        store.finished(gone)  # evicted: nobody hears of it
        store.clear()
        self.assertEqual(len(store), 0)
        self.assertEqual(heard[-1], ("cleared", ""))
        self.assertEqual([w for w, _ in heard], ["started"] * 5 + ["cleared"])


class MaskTests(SynchronousTestCase):
    def test_secret_headers(self) -> None:
        self.assertEqual(mask_value(b"Authorization", b"Bearer abc"), b"Bearer [masked]")
        self.assertEqual(mask_value(b"authorization", b"opaque"), b"[masked]")
        self.assertEqual(mask_value(b"Proxy-Authorization", b"Basic dXNlcjpw"), b"Basic [masked]")
        self.assertEqual(
            mask_value(b"Cookie", b"a=1; __Host-funnel-tw-office=SESSION; flag"),
            b"a=[masked]; __Host-funnel-tw-office=[masked]; flag=[masked]",
        )
        self.assertEqual(
            mask_value(b"Set-Cookie", b"sid=xyz; Path=/; HttpOnly"),
            b"sid=[masked]; Path=/; HttpOnly",
        )
        self.assertEqual(mask_value(b"X-Other", b"shown"), b"shown")

    def test_json_and_raw_hide_secrets_unless_shown(self) -> None:
        e = entry(body=b'{"a": 1}')
        e.status, e.reason, e.duration = 200, b"OK", 0.0025
        e.response_headers = [(b"Set-Cookie", [b"sid=xyz; Path=/"])]
        e.response_body.add(b"done")
        for show in (False, True):
            data = entry_json(e, show)
            raw = base64.b64decode(data["request"]["raw"])
            shown = b"s3cret-token" in raw or "s3cret-token" in str(data)
            self.assertEqual(shown, show)
            self.assertEqual(b"SESSION" in raw, show)
            self.assertEqual("xyz" in str(data["response"]), show)
        data = entry_json(e, False)
        self.assertEqual(data["request"]["headers"]["Authorization"], ["Bearer [masked]"])
        self.assertEqual(data["duration"], 2_500_000)  # nanoseconds, as ngrok
        self.assertEqual(data["remote_addr"], "203.0.113.9")
        self.assertEqual(data["client"], "203.0.113.9:50123")
        self.assertEqual(data["uri"], f"/api/requests/http/{e.id}")
        self.assertEqual(data["response"]["status"], "200 OK")
        self.assertEqual(data["response"]["status_code"], 200)
        self.assertTrue(base64.b64decode(data["response"]["raw"]).endswith(b"\r\n\r\ndone"))
        self.assertEqual(base64.b64decode(data["request"]["body"]["data"]), b'{"a": 1}')
        self.assertTrue(request_raw(e, True).startswith(b"POST /hooks/a?x=1&y=two HTTP/1.1\r\n"))
        summary = entry_json(e, False, full=False)
        self.assertNotIn("raw", summary["request"])
        self.assertNotIn("headers", summary["request"])
        self.assertNotIn("data", summary["request"]["body"])
        pending = entry(body=b"x")
        self.assertIsNone(entry_json(pending, False)["response"])


class ReplayBytesTests(SynchronousTestCase):
    def test_captured_request_framed_again(self) -> None:
        e = entry(
            headers=[
                (b"Host", [b"node.example.com"]),
                (b"Transfer-Encoding", [b"chunked"]),
                (b"Connection", [b"keep-alive"]),
                (b"X-A", [b"1", b"2"]),
            ],
            body=b"hello",
        )
        self.assertEqual(
            request_bytes(e),
            b"POST /hooks/a?x=1&y=two HTTP/1.1\r\nHost: node.example.com\r\nX-A: 1\r\nX-A: 2"
            b"\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        )
        h2 = entry(headers=[], body=b"", method=b"GET")  # no Host: the captured name
        self.assertEqual(
            request_bytes(h2),
            b"GET /hooks/a?x=1&y=two HTTP/1.1\r\nHost: node.example.com\r\n"
            b"Connection: close\r\n\r\n",
        )

    def test_refused(self) -> None:
        cut = entry(body=b"x" * 20, limit=10)
        self.assertIn("truncated (10 of 20 bytes kept)", replay_refusal(cut) or "")
        self.assertRaises(ReplayError, request_bytes, cut)
        ws = entry(headers=[(b"Upgrade", [b"websocket"])], method=b"GET")
        self.assertRaises(ReplayError, request_bytes, ws)
        self.assertFalse(entry_json(ws, False)["replayable"])

    def test_edited_request_gets_masked_secrets_back(self) -> None:
        e = entry(body=b"{}")
        shown = request_raw(e, False).decode()
        self.assertIn("Bearer [masked]", shown)
        edited = shown.replace("/hooks/a?x=1&y=two", "/hooks/b").replace("\r\n\r\n{}", "\n\nnew")
        data = request_bytes(e, edited.encode())
        self.assertTrue(data.startswith(b"POST /hooks/b HTTP/1.1\r\n"))
        self.assertIn(b"Authorization: Bearer s3cret-token\r\n", data)
        self.assertIn(b"Cookie: a=1; __Host-funnel-tw-office=SESSION\r\n", data)
        self.assertIn(b"Content-Length: 3\r\n", data)
        self.assertTrue(data.endswith(b"\r\n\r\nnew"))
        # a value the user typed is kept as typed
        typed = unmask([(b"Authorization", [b"Bearer other"])], e.request_headers)
        self.assertEqual(typed, [(b"Authorization", [b"Bearer other"])])


_token = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1)
_value = st.text("abcdefghijklmnopqrstuvwxyz0123456789 ;=,/:", max_size=30).map(str.strip)


class ParseRawTests(SynchronousTestCase):
    @given(st.binary(max_size=2000))
    def test_any_bytes_parse_or_refuse(self, data: bytes) -> None:
        try:
            _method, target, headers, body = parse_raw(data)
        except ReplayError:
            return
        self.assertTrue(target.startswith(b"/"))
        for name, values in headers:
            self.assertNotIn(b"\n", b"".join(values))
            self.assertNotIn(b":", name)
        framed = request_bytes(entry(), data)  # whatever parsed frames as one request
        self.assertEqual(framed.count(b"\r\n\r\n") >= 1, True)
        self.assertTrue(framed.endswith(b"\r\n\r\n" + body))

    @given(
        _token,
        st.lists(st.text("abcdefghij/._-~0123456789", max_size=20), max_size=4),
        st.lists(st.tuples(_token, _value), max_size=6),
        st.binary(max_size=200),
        st.booleans(),
    )
    def test_round_trip(
        self,
        method: str,
        segments: list[str],
        headers: list[tuple[str, str]],
        body: bytes,
        crlf: bool,
    ) -> None:
        end = "\r\n" if crlf else "\n"
        target = "/" + "/".join(segments)
        head = f"{method} {target} HTTP/1.1" + "".join(f"{end}{n}: {v}" for n, v in headers)
        parsed = parse_raw(head.encode() + (end * 2).encode() + body)
        self.assertEqual(parsed[0], method.encode())
        self.assertEqual(parsed[1], target.encode())
        self.assertEqual(parsed[2], [(n.encode(), [v.encode()]) for n, v in headers])
        self.assertEqual(parsed[3], body)

    def test_errors(self) -> None:
        for bad, why in [
            (b"GET\r\n\r\n", "first line"),
            (b"GET http://x/ HTTP/1.1\r\n\r\n", "target"),
            (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", "not a header"),
            (b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", "control"),
            (b"GET / HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", "over 65536"),
        ]:
            with self.assertRaises(ReplayError) as caught:
                parse_raw(bad)
            self.assertIn(why, str(caught.exception))
