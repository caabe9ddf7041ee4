"""HTTP byte ranges (RFC 9110 section 14), sans-IO: a ``Range`` header and a size in, the
parts to send out, and the multipart/byteranges framing around them.

A range request must never cost more than the file it asks for. A header with hundreds of
overlapping parts once made Apache send gigabytes for a small file (CVE-2011-3192, "Apache
Killer"); the fixes were a limit on the number of parts (nginx ``max_ranges``, Apache
``MaxRanges``) and merging overlapping parts. So here:

- more than :data:`MAX_PARTS` range-specs: the header is ignored (the whole file, 200), as
  nginx does past ``max_ranges``;
- the satisfiable parts are sorted and overlapping or adjacent ones merged (RFC 9110 14.3
  allows coalescing), so they never add up to more than the file;
- a header that does not parse, or names another unit, is ignored (200); one whose parts are
  all unsatisfiable is :data:`UNSATISFIABLE` (416, ``Content-Range: bytes */size``);
- a suffix range longer than the file is the whole file (14.1.1); numbers of any length are
  read without converting them whole (no ``int()`` of a 5000-digit string).

Any header value gives one of the three results, never an exception.
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_PARTS = 16  # range-specs in one header; more and the header is ignored
MAX_HEADER = 4096  # characters of a Range value; a longer one is ignored
_DIGITS = frozenset("0123456789")
_BIG = 10**18  # stands in for any number of more than 18 digits: beyond every file size
_OWS = " \t"


class Unsatisfiable:
    """No part of the range-set overlaps the representation: 416."""

    def __repr__(self) -> str:
        return "UNSATISFIABLE"


UNSATISFIABLE = Unsatisfiable()

Parts = list[tuple[int, int]]  # (start, stop): stop exclusive, sorted, disjoint, non-empty


def _number(text: str) -> int | None:
    if not text or not set(text) <= _DIGITS:
        return None
    significant = text.lstrip("0")
    return _BIG if len(significant) > 18 else int(significant or "0")


def _spec(spec: str, size: int) -> tuple[int, int] | Unsatisfiable | None:
    """One range-spec: its (start, stop) clamped to the size, UNSATISFIABLE, or None when
    it does not parse (which voids the whole header)."""
    first, dash, last = spec.partition("-")
    if not dash:
        return None
    if first == "":  # suffix-range: the last N bytes
        length = _number(last)
        if length is None:
            return None
        return (max(size - length, 0), size) if length > 0 else UNSATISFIABLE
    start = _number(first)
    if start is None:
        return None
    if last == "":
        stop = size
    else:
        end = _number(last)
        if end is None or end < start:
            return None
        stop = min(end + 1, size)
    return (start, stop) if start < size else UNSATISFIABLE


def parse_range(value: bytes | str | None, size: int) -> Parts | Unsatisfiable | None:
    """The parts of ``size`` bytes that a ``Range`` header asks for.

    None: ignore the header and send the whole representation (no header, another unit, bad
    syntax, too many parts, an empty file). UNSATISFIABLE: answer 416. Otherwise 1 to
    MAX_PARTS (start, stop) pairs, sorted and merged, that together are at most ``size``.
    """
    if value is None or size <= 0:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if len(value) > MAX_HEADER:
        return None
    unit, eq, range_set = value.strip(_OWS).partition("=")
    if not eq or unit.lower() != "bytes":
        return None
    found: list[tuple[int, int]] = []
    specs = 0
    for element in range_set.split(","):
        element = element.strip(_OWS)
        if not element:
            continue  # empty list elements are allowed (RFC 9110 5.6.1)
        specs += 1
        if specs > MAX_PARTS:
            return None
        part = _spec(element, size)
        if part is None:
            return None
        if not isinstance(part, Unsatisfiable):
            found.append(part)
    if specs == 0:
        return None
    if not found:
        return UNSATISFIABLE
    return merge(found)


def merge(parts: Iterable[tuple[int, int]]) -> Parts:
    """Sorted, with overlapping and adjacent parts joined."""
    merged: Parts = []
    for start, stop in sorted(parts):
        if merged and start <= merged[-1][1]:
            if stop > merged[-1][1]:
                merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    return merged


def content_range(start: int, stop: int, size: int) -> bytes:
    """The ``Content-Range`` value of one part."""
    return b"bytes %d-%d/%d" % (start, stop - 1, size)


def unsatisfied_range(size: int) -> bytes:
    """The ``Content-Range`` value of a 416."""
    return b"bytes */%d" % size


def multipart(
    parts: Parts, size: int, content_type: bytes, boundary: bytes
) -> tuple[list[tuple[bytes, int, int]], bytes, int]:
    """The multipart/byteranges framing (RFC 9110 14.6) of ``parts``: for each part the bytes
    to send before its data and its (start, stop); the closing bytes; the body's length."""
    framed: list[tuple[bytes, int, int]] = []
    total = 0
    for i, (start, stop) in enumerate(parts):
        head = (
            (b"\r\n" if i else b"")
            + b"--"
            + boundary
            + b"\r\nContent-Type: "
            + content_type
            + b"\r\nContent-Range: "
            + content_range(start, stop, size)
            + b"\r\n\r\n"
        )
        framed.append((head, start, stop))
        total += len(head) + stop - start
    closing = b"\r\n--" + boundary + b"--\r\n"
    return framed, closing, total + len(closing)
