"""One normalization of a request path, used for routing, access policies and forwarding alike.

If routing decided on one reading of a path and the backend received another, every rule keyed
on the path (a mount, its prefix rewrite, an access policy) could be stepped around with dot
segments or percent-encodings. So a request target is reduced once, here, to a canonical form
(RFC 3986 section 6.2.2): percent-encoded unreserved characters decoded, the remaining escapes
upper-cased, dot segments removed (section 5.2.4) and runs of ``/`` merged (as nginx's
merge_slashes). Forms whose meaning differs between servers are refused instead (HTTP 400): an
encoded ``/`` or ``\\``, NUL or any control character, a raw ``\\``, a broken escape, a dot
segment with parameters (``..;x``, which Tomcat and others read as ``..``), a target that is not
origin-form or absolute-form.

The result keeps every other escape, so it is still a valid path to send to a backend, and two
requests that any RFC-following server would treat alike normalize to the same string.
"""

from __future__ import annotations

import re
from typing import Any

MAX_PATH = 8192  # bytes of a request target's path; beyond it 414

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset(b"0123456789abcdefABCDEF")
# bytes allowed raw in a path: RFC 3986 pchar and "/" (unreserved, sub-delims, ":", "@")
_RAW_OK = _UNRESERVED | frozenset(b"!$&'()*+,;=:@/")
_REFUSED_ESCAPES = {0x2F: "an encoded '/'", 0x5C: "an encoded '\\'"}
_ABSOLUTE = re.compile(rb"\A[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")
# a path already in canonical form, as nearly every request's is: allowed raw bytes only, no
# escape; with no "/." and no "//" in it, it has no dot segment and no empty one either
_PLAIN = re.compile(rb"/[A-Za-z0-9\-._~!$&'()*+,;=:@/]*\Z")


class PathError(ValueError):
    """A request path that must be refused; ``status`` is the HTTP status to answer."""

    def __init__(self, why: str, status: int = 400) -> None:
        super().__init__(why)
        self.status = status


def split_target(target: bytes) -> tuple[bytes, bytes | None]:
    """(path, query or None) of a request target; the fragment, never sent, is refused."""
    if b"#" in target:
        raise PathError("a fragment in the request target")
    path, sep, query = target.partition(b"?")
    return path, (query if sep else None)


def normalize(path: bytes) -> str:
    """The canonical form of a request path (raises PathError).

    ``path`` is the raw path of the request target (no query). Absolute-form
    (``http://host/p``) is reduced to its path; the authority is the Host's business.
    """
    if len(path) > MAX_PATH:
        raise PathError("request path too long", 414)
    if _PLAIN.match(path) is not None and b"/." not in path and b"//" not in path:
        return path.decode("ascii")  # what _canonical would return, in one pass
    return _canonical(path)


def _canonical(path: bytes) -> str:
    """:func:`normalize` byte by byte (``path`` within ``MAX_PATH``)."""
    if not path.startswith(b"/"):
        match = _ABSOLUTE.match(path)
        if match is None:
            raise PathError("the request target is not a path")
        path = path[match.end() :] or b"/"
    out = bytearray()
    i, n = 0, len(path)
    while i < n:
        c = path[i]
        if c == 0x25:  # "%"
            pair = path[i + 1 : i + 3]
            if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
                raise PathError("an invalid percent-encoding in the path")
            value = int(pair, 16)
            if value < 0x20 or value == 0x7F:
                raise PathError("an encoded control character or NUL in the path")
            if value in _REFUSED_ESCAPES:
                raise PathError(f"{_REFUSED_ESCAPES[value]} in the path")
            if value in _UNRESERVED:
                out.append(value)
            else:
                out += b"%" + pair.upper()
            i += 3
            continue
        if c not in _RAW_OK:
            if c == 0x5C:
                raise PathError("a '\\' in the path")
            if c < 0x21 or c == 0x7F:
                raise PathError("a control character, space or NUL in the path")
            out += b"%%%02X" % c  # e.g. raw UTF-8 or '"': escaped, as a client should have
        else:
            out.append(c)
        i += 1
    return _remove_dot_segments(out.decode("ascii"))


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 on an absolute path, merging empty segments on the way."""
    segments = path.split("/")[1:]
    kept: list[str] = []
    for segment in segments:
        if segment.partition(";")[0] in (".", "..") and ";" in segment:
            # "..;x" is ".." to Tomcat and others that strip path parameters first
            raise PathError("a dot segment with parameters in the path")
        if segment == "..":
            if kept:
                kept.pop()
        elif segment not in (".", ""):
            kept.append(segment)
    trailing = segments[-1] in ("", ".", "..") if segments else True
    result = "/" + "/".join(kept)
    if trailing and kept:
        result += "/"
    return result


def request_target(request: Any) -> tuple[str, str]:
    """(normalized path, raw query or "") of a twisted.web request, computed once per request
    so that routing, policies and forwarding all use the same one. Raises PathError."""
    cached: tuple[str, str] | None = getattr(request, "_funnel_target", None)
    if cached is None:
        raw_path, query = split_target(request.uri)
        cached = (normalize(raw_path), (query or b"").decode("utf-8", "surrogateescape"))
        request._funnel_target = cached
    return cached


def decoded_segments(path: str) -> list[str]:
    """The segments of a normalized path, fully percent-decoded (for a file system).

    A normalized path has no encoded ``/``, ``\\`` or NUL and no dot segments, so no decoded
    segment can name a parent or contain a separator; invalid UTF-8 is kept as surrogates.
    """
    from urllib.parse import unquote

    return [unquote(s, errors="surrogateescape") for s in path.split("/") if s]
