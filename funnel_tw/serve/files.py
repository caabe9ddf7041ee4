"""File mounts (``/static/ = /srv/www``): files below a root, and never anything else.

Containment is decided on the file actually opened, not on the name asked for, for every way a
file is reached (a path, a directory's index): the name's real path (every symbolic link in
the chain resolved) must lie below the root's real path; the file is opened without following
a final link and without blocking; ``fstat`` of the open descriptor must show the very file
that was checked (same device and inode) and, where ``/proc/self/fd`` exists, the descriptor's
own path must still lie below the root. A name swapped for a link between the check and the
open is refused, not followed.

Only regular files are served. Directories answer their index (``index.html``, then
``index.htm``, each checked like any file) and never a listing; FIFOs, sockets and devices are
refused without being opened (an open FIFO would block the node). Dot segments (``.git``,
``.env``, ``.htpasswd``) are refused in the request path and in the real path below the root,
except ``.well-known`` (RFC 8615 makes it public). Every refusal is a 404, logged with the
client, the host:port and the reason, and counted (``refused_file``).

Bodies are streamed from the descriptor (no file is ever held in memory); ranges are parsed by
:mod:`funnel_tw.web.ranges` (at most 16 parts, merged, never more bytes than the file).
``ETag``/``Last-Modified`` with ``If-None-Match``/``If-Modified-Since``/``If-Range``, ``HEAD``,
``Content-Type`` from the extension and ``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

import errno
import mimetypes
import os
import secrets
import stat
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

from twisted.internet.interfaces import IPullProducer
from twisted.logger import Logger
from twisted.web import http, resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from ..web.paths import PathError, decoded_segments, request_target
from ..web.ranges import (
    UNSATISFIABLE,
    content_range,
    multipart,
    parse_range,
    unsatisfied_range,
)
from .http2 import reset_stream

log = Logger()

INDEX_NAMES = ("index.html", "index.htm")
PUBLIC_DOT_NAMES = frozenset({".well-known"})  # RFC 8615: meant to be fetched
CHUNK = 64 * 1024
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOCTTY", 0)
)
_PROC_FD = "/proc/self/fd"
_ENCODED_TYPES = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
}
_BUSY = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})


class Refused(Exception):
    """Why a name is not served (answered 404, logged and counted)."""


class NotFound(Refused):
    """Nothing by that name (answered 404, not a refusal)."""


def below(root: str, real: str) -> bool:
    """Whether the real path ``real`` is ``root`` or lies below it."""
    prefix = root if root.endswith(os.sep) else root + os.sep
    return real == root or real.startswith(prefix)


def hidden(name: str) -> bool:
    """A dot segment that is not served (``.git``, ``.env``; not ``.well-known``)."""
    return name.startswith(".") and name not in PUBLIC_DOT_NAMES


def open_below(root: str, path: str) -> tuple[int, os.stat_result]:
    """Open ``path`` (a regular file or a directory) for reading if, and only if, what is
    opened lies below ``root`` (a real path). Raises Refused, or OSError for a busy node."""
    real = os.path.realpath(path)
    if not below(root, real):
        raise Refused("a symbolic link out of the root")
    if real != root and any(hidden(p) for p in os.path.relpath(real, root).split(os.sep)):
        raise Refused("a dot name (reached through a symbolic link)")
    try:
        before = os.lstat(real)
    except (FileNotFoundError, NotADirectoryError):
        raise NotFound("no such file") from None
    except (OSError, ValueError) as e:
        raise Refused(_why(e)) from None
    if not (stat.S_ISREG(before.st_mode) or stat.S_ISDIR(before.st_mode)):
        raise Refused("not a regular file (a FIFO, socket, device or link)")
    try:
        fd = os.open(real, _OPEN_FLAGS)
    except OSError as e:
        if e.errno in _BUSY:
            raise
        raise Refused(_why(e)) from None
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            raise Refused("the file changed while it was opened")
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise Refused("not a regular file")
        if os.path.isdir(_PROC_FD):
            opened = os.readlink(f"{_PROC_FD}/{fd}")
            if not below(root, opened):
                raise Refused("the opened file is outside the root")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _why(e: OSError | ValueError) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return "an unusable name"


def content_type(name: str) -> bytes:
    """From the extension; a compressed file is served as what it is, never with a
    Content-Encoding a browser would undo."""
    kind, encoding = mimetypes.guess_type(name, strict=False)
    if encoding is not None:
        kind = _ENCODED_TYPES.get(encoding, "application/octet-stream")
    return (kind or "application/octet-stream").encode("ascii", "replace")


def _http_date(value: bytes) -> int | None:
    try:
        return int(parsedate_to_datetime(value.decode("latin-1")).timestamp())
    except (ValueError, TypeError, OverflowError, IndexError):
        return None


def _tags(value: bytes) -> list[bytes]:
    return [t.strip() for t in value.split(b",") if t.strip()]


class FileMount(resource.Resource):
    """One request for a file mount: ``path`` is the request's normalized path, ``rest`` the
    part below the mount prefix; ``client`` and ``site`` (ip:port, host:port) name the
    request in the log; ``count`` counts refusals."""

    isLeaf = True

    def __init__(
        self,
        root: str,
        path: str,
        rest: str,
        client: str,
        site: str,
        count: Callable[[str], None] = lambda what: None,
    ) -> None:
        super().__init__()
        self.root = root
        self.path = path
        self.segments = decoded_segments(rest)
        self.directory = path.endswith("/")
        self.client = client
        self.site = site
        self.count = count

    def refused(self, request: Request, why: str, counter: str = "refused_file") -> None:
        self.count(counter)
        log.info(
            "refused {method} {path} from {client} for {site}: {why}",
            method=request.method.decode("ascii", "replace"),
            path=self.path,
            client=self.client,
            site=self.site,
            why=why,
        )

    def render(self, request: Request) -> Any:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return self._error(request, http.NOT_ALLOWED, "only GET and HEAD")
        try:
            found = self._find(request)
        except OSError as e:
            log.warn("cannot open a file for {path}: {why}", path=self.path, why=e)
            return self._error(request, http.SERVICE_UNAVAILABLE, "busy")
        if found is None:
            return self._error(request, http.NOT_FOUND, "no such file")
        if isinstance(found, bytes):
            request.setResponseCode(http.MOVED_PERMANENTLY)
            request.setHeader(b"location", found)
            return self._error(request, http.MOVED_PERMANENTLY, "a directory")
        fd, st, name = found
        try:
            return self._serve(request, fd, st, name)
        except BaseException:
            os.close(fd)
            raise

    def _find(self, request: Request) -> tuple[int, os.stat_result, str] | bytes | None:
        """The open file to serve and its name, a redirect's Location, or None (refused)."""
        for segment in self.segments:
            if segment in ("", ".", "..") or "/" in segment or "\0" in segment:
                self.refused(request, "an impossible path segment")
                return None
            if hidden(segment):
                self.refused(request, "a dot segment")
                return None
        root = os.path.realpath(self.root)
        try:
            fd, st = open_below(root, os.path.join(root, *self.segments))
        except NotFound:
            return None
        except Refused as e:
            self.refused(request, str(e))
            return None
        if stat.S_ISREG(st.st_mode):
            if self.directory:  # "/a.txt/"
                os.close(fd)
                return None
            return fd, st, self.segments[-1] if self.segments else ""
        os.close(fd)
        if not self.directory:
            try:
                _, query = request_target(request)
            except PathError:
                query = ""
            if not all("!" <= c <= "~" for c in query):
                query = ""  # nothing odd is echoed into a header
            return (self.path + "/" + ("?" + query if query else "")).encode("ascii")
        directory = os.path.join(root, *self.segments)
        for name in INDEX_NAMES:
            if not os.path.lexists(os.path.join(directory, name)):
                continue
            try:
                fd, st = open_below(root, os.path.join(directory, name))
            except NotFound:
                continue
            except Refused as e:
                self.refused(request, f"index {name}: {e}")
                continue
            if stat.S_ISREG(st.st_mode):
                return fd, st, name
            os.close(fd)
        return None  # no listings: a directory without an index is not shown

    def _serve(self, request: Request, fd: int, st: os.stat_result, name: str) -> Any:
        size = st.st_size
        mtime = int(st.st_mtime)
        etag = b'"%x-%x"' % (st.st_mtime_ns, size)
        kind = content_type(name)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"accept-ranges", b"bytes")
        request.setHeader(b"etag", etag)
        request.setHeader(b"last-modified", http.datetimeToString(mtime))
        if self._not_modified(request, etag, mtime):
            os.close(fd)
            request.setResponseCode(http.NOT_MODIFIED)
            return b""
        ranges = None
        header = request.getHeader(b"range")
        if header is not None and self._range_applies(request, etag, mtime):
            ranges = parse_range(header, size)
            if ranges is None and size > 0:
                self.refused(
                    request, "Range ignored (bad syntax or too many parts)", "file_range_ignored"
                )
        if ranges is UNSATISFIABLE:
            os.close(fd)
            request.setHeader(b"content-range", unsatisfied_range(size))
            return self._error(request, http.REQUESTED_RANGE_NOT_SATISFIABLE, "no such range")
        pieces: list[tuple[bytes, int, int]]
        closing = b""
        if ranges is None:
            pieces, length = [(b"", 0, size)], size
            request.setHeader(b"content-type", kind)
        elif isinstance(ranges, list) and len(ranges) == 1:
            (start, stop) = ranges[0]
            pieces, length = [(b"", start, stop)], stop - start
            request.setResponseCode(http.PARTIAL_CONTENT)
            request.setHeader(b"content-type", kind)
            request.setHeader(b"content-range", content_range(start, stop, size))
        else:
            assert isinstance(ranges, list)
            boundary = secrets.token_hex(16).encode()
            pieces, closing, length = multipart(ranges, size, kind, boundary)
            request.setResponseCode(http.PARTIAL_CONTENT)
            request.setHeader(b"content-type", b"multipart/byteranges; boundary=" + boundary)
        request.setHeader(b"content-length", b"%d" % length)
        if request.method == b"HEAD" or length == 0:
            os.close(fd)
            return b""
        FileBody(request, fd, pieces, closing).start()
        return NOT_DONE_YET

    @staticmethod
    def _not_modified(request: Request, etag: bytes, mtime: int) -> bool:
        """If-None-Match (weak comparison), else If-Modified-Since (RFC 9110 13.2.2)."""
        none_match = request.getHeader(b"if-none-match")
        if none_match is not None:
            tags = _tags(none_match)
            return b"*" in tags or any(t.removeprefix(b"W/") == etag for t in tags)
        since = request.getHeader(b"if-modified-since")
        when = None if since is None else _http_date(since)
        return when is not None and mtime <= when

    @staticmethod
    def _range_applies(request: Request, etag: bytes, mtime: int) -> bool:
        """If-Range: the ranges only if the validator matches exactly (strong ETag or date)."""
        validator = request.getHeader(b"if-range")
        if validator is None:
            return True
        validator = validator.strip()
        if validator.startswith((b'"', b"W/")):
            return validator == etag
        return _http_date(validator) == mtime

    @staticmethod
    def _error(request: Request, code: int, detail: str) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return f"{code} {http.RESPONSES.get(code, b'').decode()}: {detail}\n".encode()


@implementer(IPullProducer)
class FileBody:
    """Writes ``pieces`` (bytes to send first, then a range of the descriptor) and ``closing``
    to ``request`` one chunk per call of the transport: the file is never in memory, and a
    slow client holds one chunk. A file that shrinks under it cuts the response short."""

    def __init__(
        self, request: Request, fd: int, pieces: list[tuple[bytes, int, int]], closing: bytes
    ) -> None:
        self.request = request
        self.fd: int | None = fd
        self.pieces = pieces[::-1]  # popped from the end
        self.closing = closing
        self.position = -1  # within the current piece; -1: its head is not sent yet

    def start(self) -> None:
        self.request.notifyFinish().addBoth(lambda _: self._close())
        self.request.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self.fd is None:
            return
        if not self.pieces:
            self._close()
            if self.closing:
                self.request.write(self.closing)
            self.request.unregisterProducer()
            self.request.finish()
            return
        head, start, stop = self.pieces[-1]
        if self.position < 0:
            self.position = start
            if head:
                self.request.write(head)
                return
        try:
            data = os.pread(self.fd, min(CHUNK, stop - self.position), self.position)
        except OSError as e:
            data = b""
            log.warn("reading a served file failed: {why}", why=e)
        if not data:
            log.warn("a served file shrank while it was sent; the response is cut short")
            self._close()
            self.request.unregisterProducer()
            _abort(self.request)
            return
        self.position += len(data)
        if self.position >= stop:
            self.pieces.pop()
            self.position = -1
        self.request.write(data)

    def stopProducing(self) -> None:
        self._close()

    def _close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


def _abort(request: Request) -> None:
    """Tell the client the body is incomplete: reset the HTTP/2 stream or drop the
    HTTP/1.1 connection (the length was promised)."""
    if reset_stream(request):
        return
    transport = getattr(request.channel, "transport", None)
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()
