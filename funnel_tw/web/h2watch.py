"""A sans-IO watch over the frames an HTTP/2 client sends, in front of the h2 library.

It reads only the 9-byte frame headers of the plaintext stream (never buffers a payload) and
stops, before h2 sees the bytes, what h2 and Twisted bound too loosely or not at all:

- a header block (HEADERS without END_HEADERS, then CONTINUATION) over ``max_header_block``
  bytes or ``max_continuations`` frames: the CVE-2024-27316 class. h2 alone allows 64 frames
  of up to 16 KiB (1 MiB per connection), and after its own error keeps appending CONTINUATION
  frames to a list that is never cleared;
- floods of frames that cost the node work but carry no request: PING and SETTINGS (each is
  answered), PRIORITY (each may add a stream to Twisted's priority tree), RST_STREAM (rapid
  reset), empty DATA without END_STREAM, empty CONTINUATION, unknown frame types. One token
  bucket (``flood_burst`` frames, refilled at ``flood_rate`` a second) covers them all;
- the time a header block stays open (the caller arms the deadline from :attr:`block_since`).

A violation is returned once, with the GOAWAY frame to send (last stream id: the highest the
client opened) and a counter name; the caller closes the connection.
"""

from __future__ import annotations

import struct

import attrs

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0, 1, 2, 3, 4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 5, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4

PROTOCOL_ERROR = 0x1
ENHANCE_YOUR_CALM = 0xB


@attrs.frozen
class H2Limits:
    max_header_block: int = 65536  # encoded bytes; SETTINGS_MAX_HEADER_LIST_SIZE bounds decoded
    max_continuations: int = 16
    flood_burst: int = 500
    flood_rate: float = 100.0  # cheap frames a second, sustained


@attrs.frozen
class Violation:
    counter: str
    reason: str
    error_code: int
    goaway: bytes


def goaway_frame(last_stream_id: int, error_code: int) -> bytes:
    payload = struct.pack(">II", last_stream_id & 0x7FFFFFFF, error_code)
    return struct.pack(">I", len(payload))[1:] + bytes([GOAWAY, 0]) + b"\0\0\0\0" + payload


class H2Watch:
    """Fed the client's plaintext bytes in order; :meth:`feed` returns a Violation or None."""

    def __init__(self, limits: H2Limits, now: float) -> None:
        self.limits = limits
        self._preface = len(PREFACE)
        self._header = b""  # a partial frame header (under 9 bytes)
        self._skip = 0  # payload bytes of the current frame still to pass
        self.block_since: float | None = None  # a header block is open since then
        self._block_bytes = 0
        self._block_frames = 0
        self.last_stream_id = 0
        self._tokens = float(limits.flood_burst)
        self._refilled = now
        self.violation: Violation | None = None

    def feed(self, data: bytes, now: float) -> Violation | None:
        if self.violation is not None:
            return self.violation
        view = memoryview(data)
        if self._preface:
            taken = min(self._preface, len(view))
            view = view[taken:]
            self._preface -= taken
        while view:
            if self._skip:
                taken = min(self._skip, len(view))
                view = view[taken:]
                self._skip -= taken
                continue
            need = 9 - len(self._header)
            self._header += bytes(view[:need])
            view = view[need:]
            if len(self._header) < 9:
                break
            length = int.from_bytes(self._header[:3], "big")
            kind, flags = self._header[3], self._header[4]
            stream = int.from_bytes(self._header[5:9], "big") & 0x7FFFFFFF
            self._header = b""
            self._skip = length
            found = self._frame(kind, flags, stream, length, now)
            if found is not None:
                self.violation = found
                return found
        return None

    def _frame(
        self, kind: int, flags: int, stream: int, length: int, now: float
    ) -> Violation | None:
        limits = self.limits
        if kind == HEADERS and stream % 2 == 1:
            self.last_stream_id = max(self.last_stream_id, stream)
        if kind == HEADERS and not flags & END_HEADERS:
            self.block_since, self._block_bytes, self._block_frames = now, length, 0
        elif kind == CONTINUATION and self.block_since is not None:
            self._block_bytes += length
            self._block_frames += 1
            if flags & END_HEADERS:
                self.block_since = None
        if self.block_since is not None:
            if self._block_bytes > limits.max_header_block:
                return self._violate(
                    "h2_header_block_too_large",
                    f"header block over {limits.max_header_block} bytes",
                    ENHANCE_YOUR_CALM,
                )
            if self._block_frames > limits.max_continuations:
                return self._violate(
                    "h2_header_block_too_large",
                    f"more than {limits.max_continuations} CONTINUATION frames",
                    ENHANCE_YOUR_CALM,
                )
        if self._cheap(kind, flags, length):
            self._tokens = min(
                float(limits.flood_burst), self._tokens + (now - self._refilled) * limits.flood_rate
            )
            self._refilled = now
            self._tokens -= 1
            if self._tokens < 0:
                return self._violate(
                    "h2_flood",
                    f"frames without requests over {limits.flood_burst} "
                    f"(+{limits.flood_rate:g}/s); last was type {kind}",
                    ENHANCE_YOUR_CALM,
                )
        return None

    @staticmethod
    def _cheap(kind: int, flags: int, length: int) -> bool:
        if kind in (PING, SETTINGS):
            return not flags & ACK
        if kind in (PRIORITY, RST_STREAM):
            return True
        if kind == DATA:
            return length == 0 and not flags & END_STREAM
        if kind == CONTINUATION:
            return length == 0
        return kind > CONTINUATION  # unknown types are ignored by h2, but cost a parse

    def timed_out(self, seconds: float) -> Violation:
        """The open header block passed its deadline."""
        self.violation = self._violate(
            "h2_head_timeout", f"header block not complete after {seconds:g} s", PROTOCOL_ERROR
        )
        return self.violation

    def _violate(self, counter: str, reason: str, code: int) -> Violation:
        return Violation(counter, reason, code, goaway_frame(self.last_stream_id, code))
