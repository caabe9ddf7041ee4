"""Access logs: one line per request or connection, as JSON or in a combined-style text line.

``access-log = PATH`` (appended to, created 0640) or ``-`` (standard output). Each line is one
``os.write`` of a whole line to a descriptor opened with O_APPEND, so lines never interleave
and a crash loses at most the line being written. :meth:`AccessLog.reopen` (SIGUSR1) opens the
path again: after logrotate has moved the file, new lines go to a fresh file.

The daemons build the records (node/observe.py, relay/observe.py); this module only writes
them. A record is a dict whose keys are the JSON keys, in order; the combined format picks
fields by name.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

log = Logger()

STDOUT = Path("-")
FILE_MODE = 0o640  # readable by the log group (adm), never by others
_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC

Record = Mapping[str, Any]


_second: list[tuple[int, str]] = [(-1, "")]  # the last whole second formatted, reused


def iso_time(seconds: float) -> str:
    """``2025-01-02T03:04:05.678Z``: UTC, milliseconds, what log shippers parse."""
    whole = int(seconds)
    cached, text = _second[0]
    if cached != whole:
        text = datetime.datetime.fromtimestamp(whole, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _second[0] = (whole, text)
    return f"{text}{int((seconds - whole) * 1000):03d}Z"


def clf_time(seconds: float) -> str:
    """``[02/Jan/2025:03:04:05 +0000]``, the Common Log Format's time."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("[%d/%b/%Y:%H:%M:%S +0000]")


def _quoted(value: Any) -> str:
    """A field between double quotes, with quotes, backslashes and control bytes escaped."""
    text = "-" if value is None else str(value)
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _plain(value: Any) -> str:
    """A field without quotes: no spaces or control bytes in it (``-`` when absent)."""
    if value is None or value == "":
        return "-"
    text = str(value)
    return "".join(ch if 0x20 < ord(ch) < 0x7F or ord(ch) > 0x9F else "_" for ch in text)


def json_line(record: Record) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


def http_combined_line(record: Record) -> str:
    """Apache/nginx combined: ``client - user [time] "METHOD URI PROTO" status bytes "referer"
    "user-agent"``, then our own fields (host, duration, mount, funnel, reason) in the
    ``key=value`` tail that log parsers ignore or read as extras."""
    request = f"{record['method']} {record['uri']} {record.get('protocol', 'HTTP/1.1')}"
    return (
        f"{_plain(record['client'])} - {_plain(record['user'])} {clf_time(record['_time'])} "
        f"{_quoted(request)} {record['status']} {record['bytes_sent']} "
        f"{_quoted(record.get('referer'))} {_quoted(record.get('user_agent'))} "
        f"host={_plain(record['host'])} duration={record['duration']:.3f} "
        f"mount={_plain(record['mount'])} funnel={record['funnel']} "
        f"reason={_quoted(record['reason'])}\n"
    )


def fields_line(record: Record) -> str:
    """The text form of a non-HTTP record: ``client [time]`` then ``key=value`` fields."""
    rest = " ".join(
        f"{key}={_quoted(value) if key == 'reason' else _plain(value)}"
        for key, value in record.items()
        if key not in ("time", "client") and not key.startswith("_")
    )
    return f"{_plain(record['client'])} {clf_time(record['_time'])} {rest}\n"


class AccessLog:
    """One access log file (or standard output), in one format."""

    def __init__(self, path: Path, format: str = "json") -> None:
        if format not in ("json", "combined"):
            raise ValueError(f"unknown access log format {format!r}")
        self.path = path
        self.format = format
        self.fd: int | None = None
        self.errors = 0  # lines lost to a write error (disk full, ...)
        self._error_logged = False

    def open(self) -> None:
        """Open (or create, 0640) the file; OSError says why it cannot be."""
        if self.path == STDOUT:
            self.fd = 1
            return
        self.fd = os.open(self.path, _FLAGS, FILE_MODE)

    def reopen(self) -> None:
        """Open the path again (after logrotate moved it); keep the old file on failure."""
        if self.path == STDOUT or self.fd is None:
            return
        try:
            fd = os.open(self.path, _FLAGS, FILE_MODE)
        except OSError as e:
            log.warn(
                "access log {path}: cannot reopen ({why}); still writing to the old file",
                path=str(self.path),
                why=e.strerror or e,
            )
            return
        old, self.fd = self.fd, fd
        os.close(old)
        self._error_logged = False

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None and fd != 1:
            os.close(fd)

    def write(self, record: dict[str, Any], text: Callable[[Record], str]) -> None:
        """Write ``record`` as JSON (without its ``_time``, the raw time for the text forms), or
        as ``text(record)``."""
        if self.fd is None:
            return
        if self.format == "json":
            record.pop("_time", None)
            line = json_line(record)
        else:
            line = text(record)
        try:
            os.write(self.fd, line.encode("utf-8", "backslashreplace"))
        except OSError as e:
            self.errors += 1
            if not self._error_logged:  # once until the next reopen: not once per request
                self._error_logged = True
                log.error(
                    "access log {path}: write failed ({why}); lines are being lost",
                    path=str(self.path),
                    why=e.strerror or e,
                )


class AccessLogService(Service):
    """Opens the access log when the daemon starts (after twistd dropped privileges) and
    closes it on stop; a file that cannot be opened is one clear line at start."""

    def __init__(self, access_log: AccessLog, where: str) -> None:
        self.access_log = access_log
        self.where = where  # "FILE: [section] access-log", for the error line

    def startService(self) -> None:
        try:
            self.access_log.open()
        except OSError as e:
            raise SystemExit(
                f"funnel-tw: {self.where} = {self.access_log.path}: cannot open ({e.strerror or e})"
            ) from None
        super().startService()

    def stopService(self) -> None:
        self.access_log.close()
        return super().stopService()  # type: ignore[no-any-return]
