"""What the inspector keeps: one :class:`Entry` per request, in a ring of ``keep`` entries.

No Twisted here. An entry is filled while its request is served (bodies up to the limit,
the response when it ends) and published to the subscribers (the live page) when it starts
and when it ends. Memory is bounded by ``keep`` entries of at most two bodies of the limit
each, plus heads, which the HTTP limits of the site bound already.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable

Headers = list[tuple[bytes, list[bytes]]]


class Body:
    """A body as it arrives: the first ``limit`` bytes kept, the total counted."""

    __slots__ = ("data", "limit", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]

    @property
    def truncated(self) -> bool:
        return self.size > len(self.data)

    @classmethod
    def of(cls, data: bytes) -> Body:
        body = cls(len(data))
        body.add(data)
        return body


class Entry:
    """One captured request (and its response, once there is one)."""

    __slots__ = (
        "client",
        "duration",
        "error",
        "funnel",
        "host",
        "id",
        "method",
        "mount",
        "peer",
        "port",
        "proto",
        "reason",
        "replay_of",
        "request_body",
        "request_headers",
        "response_body",
        "response_headers",
        "start",
        "started",
        "status",
        "upgrade",
        "uri",
        "user",
    )

    def __init__(
        self,
        *,
        start: float,
        started: float,
        client: tuple[str, int],
        host: str,
        port: int,
        funnel: bool,
        peer: str,
        method: bytes,
        uri: bytes,
        proto: bytes,
        request_headers: Headers,
        body_limit: int,
    ) -> None:
        self.id = ""
        self.start = start  # wall clock (seconds since the epoch)
        self.started = started  # reactor time, for the duration
        self.duration: float | None = None
        self.client = client
        self.host = host
        self.port = port
        self.funnel = funnel
        self.peer = peer
        self.mount = ""
        self.user = ""
        self.method = method
        self.uri = uri
        self.proto = proto
        self.request_headers = request_headers
        self.request_body = Body(body_limit)
        self.status: int | None = None
        self.reason = b""
        self.response_headers: Headers = []
        self.response_body = Body(body_limit)
        self.error = ""
        self.replay_of = ""
        self.upgrade = any(name.lower() == b"upgrade" for name, _ in request_headers)

    @property
    def done(self) -> bool:
        return self.duration is not None

    def header(self, name: bytes) -> bytes | None:
        """The first value of a request header, by name in any case."""
        wanted = name.lower()
        for key, values in self.request_headers:
            if key.lower() == wanted and values:
                return values[0]
        return None


Listener = Callable[[str, "Entry | None"], None]


class Store:
    """The last ``keep`` entries by id, oldest first; listeners hear of ``started``,
    ``finished`` and ``cleared``."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._prefix = secrets.token_hex(4)  # ids stay unique across restarts of the node
        self._next = 0
        self.listeners: list[Listener] = []
        self.evicted = 0

    def add(self, entry: Entry) -> str:
        self._next += 1
        entry.id = f"{self._prefix}{self._next:08x}"
        self._entries[entry.id] = entry
        while len(self._entries) > self.keep:
            self._entries.popitem(last=False)
            self.evicted += 1
        self._publish("started", entry)
        return entry.id

    def finished(self, entry: Entry) -> None:
        if entry.id in self._entries:
            self._publish("finished", entry)

    def get(self, entry_id: str) -> Entry | None:
        return self._entries.get(entry_id)

    def newest(self, limit: int | None = None) -> list[Entry]:
        """Newest first, at most ``limit``."""
        out: list[Entry] = []
        for entry in reversed(self._entries.values()):
            if limit is not None and len(out) >= limit:
                break
            out.append(entry)
        return out

    def clear(self) -> None:
        self._entries.clear()
        self._publish("cleared", None)

    def __len__(self) -> int:
        return len(self._entries)

    def _publish(self, what: str, entry: Entry | None) -> None:
        for listener in list(self.listeners):
            listener(what, entry)
