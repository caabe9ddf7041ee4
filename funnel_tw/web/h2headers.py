"""An HTTP/2 request's header block checked in one pass, with h2's rules and h2's answer.

h2 checks a received header block (RFC 9113 8.2-8.3) through a chain of seven generators,
each header passing through all of them, then joins split ``cookie`` fields: 9.4 µs for the
six headers of a small request (docs/performance.md, lever 26). :func:`request_headers` does
the same checks in one loop (3.9 µs), a name's and a value's characters with one regular
expression each: the same headers accepted, the same list returned (the same tuple
objects; joined cookies last, never indexed, as h2 makes them), and for everything h2 refuses
a ``ProtocolError``, raised where h2 raises its own, so h2 answers it as before (GOAWAY with
PROTOCOL_ERROR, the connection closed). tests/web/test_h2headers.py holds it to h2's own
functions on generated header blocks.

Only request header blocks on a server with h2's default checks are taken; trailers, other
encodings and other configurations go to h2's own code. :func:`connection` makes an h2
connection whose streams use it. h2 has no hook for it: the connection's ``_begin_new_stream``
is h2's, building a subclass of h2's stream that only overrides ``_process_received_headers``.
(Swapping an existing object's ``__class__`` instead would be shorter, but CPython then
reads every attribute of that object through its dict, twice as slow.)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import h2.connection
import h2.stream
from h2.config import H2Configuration
from h2.exceptions import ProtocolError, StreamIDTooLowError
from h2.utilities import HeaderValidationFlags
from hpack.struct import NeverIndexedHeaderTuple

__all__ = ["connection", "request_headers"]

# a field name: no 0x00-0x20, A-Z, 0x7f-0xff, and a colon only first (RFC 9113 8.2.1)
_NAME = re.compile(rb":?[\x21-\x39\x3b-\x40\x5b-\x7e]+").fullmatch
# a field value: no NUL, CR or LF; nor SP or HTAB first or last (what strip(_EDGE) removes)
_CONTROL = re.compile(rb"[\x00\r\n]").search
_EDGE = b" \t"

_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path", b":protocol", b":status"))
_CONNECTION = frozenset(
    (b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade")
)
_COLON = ord(":")


def request_headers(headers: Iterable[Any]) -> list[Any]:
    """h2's ``validate_headers(normalize_inbound_headers(headers))`` for a request, as a list."""
    out: list[Any] = []
    cookies: list[bytes] | None = None
    pseudo: set[bytes] = set()
    regular = False
    method = authority = host = None
    for header in headers:
        name = header[0]
        value = header[1]
        if name == b"cookie":  # joined and moved last, then checked as one field
            if cookies is None:
                cookies = []
            cookies.append(value)
            continue
        if _NAME(name) is None:
            raise ProtocolError(f"Illegal header name: {name!r}")
        if value and (_CONTROL(value) is not None or value.strip(_EDGE) != value):
            raise ProtocolError(f"Illegal header value: {value!r}")
        if name[0] == _COLON:
            if name in pseudo or regular or name not in _PSEUDO:
                raise ProtocolError(f"Received pseudo-header field out of place: {name!r}")
            pseudo.add(name)
            if name == b":method":
                method = value
            elif name == b":authority":
                authority = value
            elif name == b":path" and not value:
                raise ProtocolError("An empty :path header is forbidden")
        else:
            regular = True
            if name in _CONNECTION:
                raise ProtocolError(f"Connection-specific header field present: {name!r}.")
            if name == b"te" and value.lower() != b"trailers":
                raise ProtocolError(f"Invalid value for TE header: {value!r}")
            if name == b"host":
                if host is not None:
                    raise ProtocolError("Request header block has multiple Host headers.")
                host = value
        out.append(header)
    if cookies is not None:
        joined = b"; ".join(cookies)
        if joined and (_CONTROL(joined) is not None or joined.strip(_EDGE) != joined):
            raise ProtocolError(f"Illegal header value: {joined!r}")
        out.append(NeverIndexedHeaderTuple(b"cookie", joined))
    _check_pseudo(pseudo, method)
    if authority is None and host is None:
        raise ProtocolError("Request header block does not have an :authority or Host header.")
    if authority is not None and host is not None and authority != host:
        raise ProtocolError("Request header block has mismatched :authority and Host headers")
    return out


def _check_pseudo(pseudo: set[bytes], method: bytes | None) -> None:
    """The pseudo-header fields a request needs and may not have (RFC 9113 8.3, RFC 8441)."""
    if b":method" not in pseudo:
        raise ProtocolError("Header block missing mandatory b':method' header")
    if b":status" in pseudo:
        raise ProtocolError("Encountered response-only headers {b':status'}")
    connect = method == b"CONNECT"
    if connect and b":protocol" not in pseudo:  # ordinary CONNECT
        if b":scheme" in pseudo or b":path" in pseudo:
            raise ProtocolError("Ordinary CONNECT MUST NOT include :scheme or :path")
        return
    for needed in (b":scheme", b":path"):
        if needed not in pseudo:
            raise ProtocolError(f"Header block missing mandatory {needed!r} header")
    if not connect and b":protocol" in pseudo:
        raise ProtocolError("Encountered connect-request-only headers {b':protocol'}")


class _Stream(h2.stream.H2Stream):
    """h2's stream, with a request's header block checked by :func:`request_headers`."""

    def _process_received_headers(
        self,
        headers: Iterable[Any],
        header_validation_flags: HeaderValidationFlags,
        header_encoding: bool | str | None,
    ) -> list[Any]:
        config = self.config
        if (
            header_encoding is None
            and config.validate_inbound_headers
            and config.normalize_inbound_headers
            and not header_validation_flags.is_client
            and not header_validation_flags.is_trailer
            and not header_validation_flags.is_response_header
            and not header_validation_flags.is_push_promise
        ):
            return request_headers(headers)
        result: list[Any] = super()._process_received_headers(
            headers, header_validation_flags, header_encoding
        )
        return result


class _Connection(h2.connection.H2Connection):
    """h2's connection, its streams built as :class:`_Stream`."""

    def _begin_new_stream(self, stream_id: int, allowed_ids: Any) -> h2.stream.H2Stream:
        # h2 4.4's, less its debug logging, the stream built as a _Stream
        outbound = self._stream_id_is_outbound(stream_id)
        highest = self.highest_outbound_stream_id if outbound else self.highest_inbound_stream_id
        if stream_id <= highest:
            raise StreamIDTooLowError(stream_id, highest)
        if (stream_id % 2) != int(allowed_ids):
            raise ProtocolError("Invalid stream ID for peer.")
        stream = _Stream(
            stream_id,
            config=self.config,
            inbound_window_size=self.local_settings.initial_window_size,
            outbound_window_size=self.remote_settings.initial_window_size,
        )
        stream.max_outbound_frame_size = self.max_outbound_frame_size
        self.streams[stream_id] = stream
        if outbound:
            self.highest_outbound_stream_id = stream_id
        else:
            self.highest_inbound_stream_id = stream_id
        return stream


def connection(config: H2Configuration) -> h2.connection.H2Connection:
    """An h2 connection whose requests' header blocks are checked by :func:`request_headers`."""
    return _Connection(config=config)
