"""The daemon log without library chatter, and without debug lines unless asked (``--debug``).

twistd logs every event at every level, Twisted's own "Starting factory ...", "X starting on
PORT" and "(TCP Port N Closed)" included. Those say nothing an operator needs (our own lines
say what listens where), so they are dropped, as are debug events unless the daemon runs with
``--debug``. The filter wraps the observers twistd installed (it is applied in
``privilegedStartService``, after twistd set up its log and before anything listens).
"""

from __future__ import annotations

import re
from typing import Any

from twisted.application.service import Service
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    PredicateResult,
    globalLogPublisher,
)

CHATTER = re.compile(
    r"^(Starting|Stopping) (factory|protocol)\b"
    r"|^\S+( \(TLS\))? starting on \S+"
    r"|^\((TCP|UDP|UNIX|TLS) Port \S+ Closed\)"
)


def _text(event: LogEvent) -> str:
    message = event.get("message")
    if message:
        return " ".join(str(part) for part in message)
    return str(event.get("log_format") or "")


def chatter_filter(debug: bool) -> Any:
    """The predicate: no for Twisted chatter (and for debug events unless ``debug``)."""

    def predicate(event: LogEvent) -> Any:  # a PredicateResult (its constants are untyped)
        if not debug and event.get("log_level") is LogLevel.debug:
            return PredicateResult.no
        if CHATTER.match(_text(event)):
            return PredicateResult.no
        return PredicateResult.maybe

    return predicate


class LogFilterService(Service):
    """Wraps the log observers present at privileged start in the chatter filter."""

    def __init__(self, debug: bool = False, publisher: Any = globalLogPublisher) -> None:
        self.debug = debug
        self.publisher = publisher
        self.wrapped: list[tuple[ILogObserver, ILogObserver]] = []

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        predicate = chatter_filter(self.debug)
        for observer in list(getattr(self.publisher, "_observers", ())):
            filtered = FilteringLogObserver(observer, [predicate])
            self.publisher.removeObserver(observer)
            self.publisher.addObserver(filtered)
            self.wrapped.append((observer, filtered))

    def stopService(self) -> None:
        # keep filtering until the process exits: the last lines of a shutdown are chatter too
        return super().stopService()  # type: ignore[no-any-return]
