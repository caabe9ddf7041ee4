"""The sans-IO Range parser: RFC 9110 section 14 examples, the "Apache Killer" class, and
properties over any header value (a bounded list of disjoint parts, None or UNSATISFIABLE;
never an exception, never more bytes than the file)."""

from __future__ import annotations

import email
import email.policy
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.web.ranges import (
    MAX_PARTS,
    UNSATISFIABLE,
    Parts,
    Unsatisfiable,
    merge,
    multipart,
    parse_range,
)

SIZE = 10000


class ExampleTests(SynchronousTestCase):
    def test_rfc_9110_examples(self) -> None:
        cases: dict[str, Parts] = {
            "bytes=0-499": [(0, 500)],
            "bytes=500-999": [(500, 1000)],
            "bytes=-500": [(9500, 10000)],
            "bytes=9500-": [(9500, 10000)],
            "bytes=0-0,-1": [(0, 1), (9999, 10000)],
            "bytes= 0-999, 4500-5499, -1000": [(0, 1000), (4500, 5500), (9000, 10000)],
            "bytes=500-600,601-999": [(500, 1000)],
            "bytes=500-700,601-999": [(500, 1000)],
            "Bytes=0-1": [(0, 2)],
            "bytes=0-1,,  ,2-3": [(0, 4)],  # empty list elements; adjacent parts merged
            "bytes=9000-9999,0-9": [(0, 10), (9000, 10000)],  # sorted
            "bytes=0-99999": [(0, 10000)],  # a last-pos past the end is clamped
            "bytes=9999-": [(9999, 10000)],
            "bytes=20000-,0-0": [(0, 1)],  # the unsatisfiable part is dropped
        }
        for header, want in cases.items():
            self.assertEqual(parse_range(header, SIZE), want, header)
            self.assertEqual(parse_range(header.encode(), SIZE), want, header)

    def test_suffix_longer_than_the_file_is_the_whole_file(self) -> None:
        self.assertEqual(parse_range("bytes=-20000", SIZE), [(0, SIZE)])
        self.assertEqual(parse_range("bytes=-" + "9" * 200, SIZE), [(0, SIZE)])
        self.assertEqual(parse_range("bytes=0-" + "9" * 200, SIZE), [(0, SIZE)])
        self.assertEqual(parse_range("bytes=" + "0" * 4000 + "1-", SIZE), [(1, SIZE)])

    def test_unsatisfiable(self) -> None:
        for header in (
            "bytes=10000-",
            "bytes=-0",
            "bytes=10000-20000,-0",
            "bytes=" + "9" * 99 + "-",
        ):
            self.assertIs(parse_range(header, SIZE), UNSATISFIABLE, header)

    def test_invalid_syntax_is_ignored(self) -> None:
        for header in (
            "bytes=5-3",
            "bytes=abc",
            "items=0-1",
            "bytes=",
            "bytes=,,",
            "bytes=1",
            "bytes=--1",
            "bytes=+1-2",
            "bytes=1-2-3",
            "bytes=0x10-20",
            "bytes = 0-1",
            "bytes=0-1;x",
            "bytes=1 -2",
            "bytes=0-1,5-3",  # one bad spec voids the header
            "bytes=\u0660-\u0661",  # non-ASCII digits
            "",
        ):
            self.assertIsNone(parse_range(header, SIZE), header)
        self.assertIsNone(parse_range(b"bytes=\xff0-1", SIZE))
        self.assertIsNone(parse_range(None, SIZE))

    def test_empty_file_ignores_ranges(self) -> None:
        self.assertIsNone(parse_range("bytes=0-0", 0))
        self.assertIsNone(parse_range("bytes=-5", 0))

    def test_apache_killer_class(self) -> None:
        # hundreds of overlapping whole-file parts: ignored past MAX_PARTS (the whole file once)
        self.assertIsNone(parse_range("bytes=" + ",".join(["0-"] * 300), SIZE))
        self.assertIsNone(parse_range("bytes=" + ",".join(f"{i}-{i}" for i in range(1000)), SIZE))
        self.assertIsNone(parse_range("bytes=" + "0-," * 2000, SIZE))  # too long
        # up to MAX_PARTS overlapping parts: merged into one
        self.assertEqual(parse_range("bytes=" + ",".join(["0-"] * MAX_PARTS), SIZE), [(0, SIZE)])
        many = ",".join(f"{i * 10}-{i * 10}" for i in range(MAX_PARTS))
        self.assertEqual(len(parse_range("bytes=" + many, SIZE) or []), MAX_PARTS)

    def test_merge(self) -> None:
        self.assertEqual(merge([(5, 10), (0, 5), (20, 30), (25, 26)]), [(0, 10), (20, 30)])
        self.assertEqual(merge([]), [])


class MultipartTests(SynchronousTestCase):
    def test_body_parses_as_multipart_byteranges(self) -> None:
        data = bytes(range(256)) * 40
        parts = [(0, 1), (100, 200), (10239, 10240)]
        framed, closing, length = multipart(parts, len(data), b"text/plain", b"B0UND")
        body = b"".join(head + data[start:stop] for head, start, stop in framed) + closing
        self.assertEqual(len(body), length)
        message = email.message_from_bytes(
            b"Content-Type: multipart/byteranges; boundary=B0UND\r\n\r\n" + body,
            policy=email.policy.HTTP,
        )
        got = [
            (p["Content-Range"], p["Content-Type"], p.get_payload(decode=True))
            for p in message.iter_parts()
        ]
        self.assertEqual(
            got,
            [
                ("bytes 0-0/10240", "text/plain", data[0:1]),
                ("bytes 100-199/10240", "text/plain", data[100:200]),
                ("bytes 10239-10239/10240", "text/plain", data[10239:]),
            ],
        )


spec = st.one_of(
    st.tuples(st.integers(0, 3 * SIZE), st.none() | st.integers(0, 3 * SIZE)).map(
        lambda t: f"{t[0]}-{'' if t[1] is None else max(t)}"
    ),
    st.integers(0, 3 * SIZE).map(lambda n: f"-{n}"),
)


def reference(specs: list[str], size: int) -> set[int]:
    """The byte offsets a list of valid range-specs selects, the slow and obvious way."""
    chosen: set[int] = set()
    for s in specs:
        first, _, last = s.partition("-")
        if first == "":
            chosen.update(range(max(size - int(last), 0), size) if int(last) else ())
        else:
            chosen.update(range(int(first), min(int(last) + 1 if last else size, size)))
    return chosen


class PropertyTests(SynchronousTestCase):
    def check_shape(self, result: Parts | Unsatisfiable | None, size: int) -> None:
        if result is None or result is UNSATISFIABLE:
            return
        assert isinstance(result, list)
        self.assertTrue(1 <= len(result) <= MAX_PARTS)
        for start, stop in result:
            self.assertTrue(0 <= start < stop <= size)
        for (_, stop), (start, _) in pairwise(result):
            self.assertLess(stop, start)  # sorted, disjoint, not even adjacent
        self.assertLessEqual(sum(stop - start for start, stop in result), size)

    @settings(max_examples=500)
    @given(st.binary(max_size=300), st.integers(0, 2**64))
    def test_any_bytes(self, value: bytes, size: int) -> None:
        self.check_shape(parse_range(value, size), size)
        self.check_shape(parse_range(b"bytes=" + value, size), size)

    @settings(max_examples=500)
    @given(st.text(alphabet="bytes=0123456789-, \t", max_size=200), st.integers(0, 50000))
    def test_any_range_like_text(self, value: str, size: int) -> None:
        self.check_shape(parse_range(value, size), size)

    @settings(max_examples=500)
    @given(st.lists(spec, min_size=1, max_size=MAX_PARTS + 4), st.integers(1, 2 * SIZE))
    def test_valid_headers_select_what_they_ask_for(self, specs: list[str], size: int) -> None:
        result = parse_range("bytes=" + ", ".join(specs), size)
        self.check_shape(result, size)
        if len(specs) > MAX_PARTS:
            self.assertIsNone(result)
            return
        want = reference(specs, size)
        if not want:
            self.assertIs(result, UNSATISFIABLE)
            return
        assert isinstance(result, list)
        got = {i for start, stop in result for i in range(start, stop)}
        self.assertEqual(got, want)
