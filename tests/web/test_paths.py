"""The one path normalization (funnel_tw/web/paths.py): RFC 3986 examples, the refused classes,
and properties over arbitrary bytes (no reactor)."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.web import paths
from funnel_tw.web.paths import (
    MAX_PATH,
    PathError,
    _canonical,
    decoded_segments,
    normalize,
    split_target,
)

UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
CANONICAL = re.compile(r"\A/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-F]{2}|/(?!/))*\Z")


class ExampleTests(SynchronousTestCase):
    def test_dot_segments(self) -> None:
        # RFC 3986 5.2.4 examples and the usual traversal forms
        cases = {
            b"/a/b/c/./../../g": "/a/g",
            b"/mid/content=5/../6": "/mid/6",
            b"/../../etc/passwd": "/etc/passwd",
            b"/a/..": "/",
            b"/a/.": "/a/",
            b"/a/b/..": "/a/",
            b"/.": "/",
            b"/": "/",
            b"/%2e%2e/%2E%2e/x": "/x",
            b"/api/%2e%2e/admin": "/admin",
            b"/a/.%2e/b": "/b",
        }
        for raw, want in cases.items():
            self.assertEqual(normalize(raw), want, raw)

    def test_slashes_merge(self) -> None:
        self.assertEqual(normalize(b"//admin///x//"), "/admin/x/")

    def test_unreserved_decoded_others_kept_upper(self) -> None:
        self.assertEqual(normalize(b"/%41%62%63%7e%2D"), "/Abc~-")
        self.assertEqual(normalize(b"/a%20b%3fc%25d%e2%82%ac"), "/a%20b%3Fc%25d%E2%82%AC")

    def test_raw_bytes_that_must_be_escaped_are(self) -> None:
        self.assertEqual(normalize("/café".encode()), "/caf%C3%A9")
        self.assertEqual(normalize(b'/a"b<c>'), "/a%22b%3Cc%3E")

    def test_absolute_form(self) -> None:
        self.assertEqual(normalize(b"http://example.com/a/../b"), "/b")
        self.assertEqual(normalize(b"https://example.com"), "/")

    def test_refused_classes(self) -> None:
        refused = [
            b"/a%2fb",
            b"/a%2Fb",
            b"/a%5cb",
            b"/a%5C..%5Cb",
            b"/a\\b",
            b"/..\\admin",
            b"/a%00b",
            b"/a\x00b",
            b"/a%0d%0aX-Injected:%201",
            b"/a\rb",
            b"/a b",
            b"/a%7f",
            b"/a%",
            b"/a%4",
            b"/a%zz",
            b"/a%%32%66",
            b"*",
            b"a/b",
            b"",
            b"/..;/admin",
            b"/.;x/admin",
            b"/a/..;jsessionid=1/b",
        ]
        for raw in refused:
            with self.assertRaises(PathError, msg=raw) as caught:
                normalize(raw)
            self.assertEqual(caught.exception.status, 400, raw)

    def test_parameters_on_ordinary_segments_pass(self) -> None:
        self.assertEqual(normalize(b"/a;v=1/b"), "/a;v=1/b")

    def test_too_long(self) -> None:
        with self.assertRaises(PathError) as caught:
            normalize(b"/" + b"a" * MAX_PATH)
        self.assertEqual(caught.exception.status, 414)

    def test_split_target(self) -> None:
        self.assertEqual(split_target(b"/a?b=c?d"), (b"/a", b"b=c?d"))
        self.assertEqual(split_target(b"/a?"), (b"/a", b""))
        self.assertEqual(split_target(b"/a"), (b"/a", None))
        self.assertRaises(PathError, split_target, b"/a#frag")

    def test_decoded_segments(self) -> None:
        self.assertEqual(decoded_segments(normalize(b"/a%20b/caf%C3%A9/")), ["a b", "café"])
        self.assertEqual(decoded_segments(normalize(b"/%ff")), ["\udcff"])


segment = st.text(alphabet=UNRESERVED + "!$&'()*+,=:@", min_size=0, max_size=8).filter(
    lambda s: s not in (".", "..")
)


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=500)
    @given(st.binary(max_size=200))
    def test_any_bytes_give_canonical_or_path_error(self, raw: bytes) -> None:
        try:
            result = normalize(raw)
        except PathError:
            return
        self.assertRegex(result, CANONICAL)
        self.assertNotIn("/./", result + "/")
        self.assertNotIn("/../", result + "/")
        self.assertEqual(normalize(result.encode()), result)  # idempotent

    @settings(max_examples=300)
    @given(
        st.lists(st.one_of(segment, st.sampled_from([".", "..", ""])), max_size=10),
        st.data(),
    )
    def test_encoding_unreserved_changes_nothing(
        self, segments: list[str], data: st.DataObject
    ) -> None:
        plain = "/" + "/".join(segments)
        encoded = "".join(
            f"%{ord(ch):02{data.draw(st.sampled_from(['x', 'X']))}}"
            if ch in UNRESERVED and data.draw(st.booleans())
            else ch
            for ch in plain
        )
        self.assertEqual(normalize(encoded.encode()), normalize(plain.encode()))

    @settings(max_examples=300)
    @given(st.binary(max_size=60), st.sampled_from([b"%2f", b"%2F", b"%5c", b"%00", b"\\"]))
    def test_an_ambiguous_form_anywhere_is_refused(self, tail: bytes, bad: bytes) -> None:
        with self.assertRaises(PathError):
            normalize(b"/x/" + bad + tail)

    @settings(max_examples=300)
    @given(st.lists(segment, max_size=8), st.lists(segment, max_size=8))
    def test_no_escape_above_root(self, a: list[str], b: list[str]) -> None:
        raw = "/" + "/".join(a + [".."] * (len(a) + 3) + b)
        result = normalize(raw.encode())
        want = "/" + "/".join(s for s in b if s)
        self.assertEqual(result.rstrip("/") or "/", want.rstrip("/") or "/")


def _outcome(normalizer: Any, raw: bytes) -> tuple[str, Any]:
    try:
        return ("ok", normalizer(raw))
    except PathError as e:
        return ("refused", (str(e), e.status))


class PlainPathTests(SynchronousTestCase):
    """``normalize`` returns a path already in canonical form as it is, without the byte
    loop: it must answer exactly what the loop (``_canonical``) answers, for every path."""

    # bytes that make a path plain or keep it from being so: separators, dots, escapes,
    # parameters, raw bytes a path may not hold
    near_plain = st.binary(max_size=40).map(
        lambda b: bytes(b"/./a.;%2F5~:@\\ \x00\x7f\xc3"[x % 17] for x in b)
    )

    @settings(max_examples=3000)
    @given(near_plain)
    def test_the_same_answer_as_the_byte_loop(self, raw: bytes) -> None:
        for path in (raw, b"/" + raw):
            self.assertEqual(_outcome(normalize, path), _outcome(_canonical, path), path)

    def test_plain_paths_skip_the_loop_and_others_do_not(self) -> None:
        calls: list[bytes] = []
        self.patch(paths, "_canonical", lambda raw: calls.append(raw) or _canonical(raw))
        for plain in (b"/", b"/small", b"/a/b.html", b"/a/", b"/x;v=1/y", b"/~u/it's"):
            self.assertEqual(normalize(plain), plain.decode())
        self.assertEqual(calls, [])
        others = (b"/a/./b", b"//a", b"/a/../b", b"/.well-known/x", b"/%41", b"/a b", b"x")
        for other in others:
            _outcome(normalize, other)
        self.assertEqual(calls, list(others))
