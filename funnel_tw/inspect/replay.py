"""Replay: a captured request sent to the mount's handler again, as it was or edited.

The replay does not go through the relay or TLS: the bytes of an HTTP/1.1 request are fed to
an HTTPS site built as the dispatcher builds one, for a flow like the original's (client,
name, port, funnel or tailnet). So it meets the same routing, access policies and proxy as
the original, reaches the backend again, and is captured like any request (marked
``replay_of``). Secrets are kept unmasked in the entry; an edited request whose header still
shows a masked value gets the original value back.

:func:`parse_raw` reads an edited request (text typed in the page, or base64 in the API):
bounded, and a :class:`ReplayError` for anything that is not a plain HTTP/1.1 request.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import address, error
from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from twisted.python.failure import Failure
from zope.interface import implementer

from ..flow import Flow
from ..serve.web import MountRouter, ServeSite
from .render import SECRET_HEADERS, mask_value, replay_refusal
from .store import Entry, Headers

MAX_HEAD = 64 * 1024
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TARGET = re.compile(rb"/[\x21-\x7e]*")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# framing and connection headers: the replay sets its own
_FRAMING = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"te",
        b"expect",
        b"upgrade",
        b"proxy-connection",
        b"trailer",
    }
)


class ReplayError(ValueError):
    """The request cannot be replayed: the text says why."""


def parse_raw(data: bytes) -> tuple[bytes, bytes, Headers, bytes]:
    """(method, target, headers, body) of an edited request; CRLF or LF line ends."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")
    if len(head) > MAX_HEAD:
        raise ReplayError(f"the head is over {MAX_HEAD} bytes")
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    parts = lines[0].split(b" ")
    if len(parts) not in (2, 3) or not _TOKEN.fullmatch(parts[0]):
        raise ReplayError("the first line is not METHOD /PATH [HTTP/1.1]")
    method, target = parts[0], parts[1]
    if not _TARGET.fullmatch(target):
        raise ReplayError("the target is not a path starting with /")
    headers: Headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise ReplayError(f"not a header line: {line[:80]!r}")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise ReplayError(f"header {name.decode()} has a control character")
        headers.append((name, [value]))
    return method, target, headers, body


def unmask(headers: Headers, original: Headers) -> Headers:
    """Secret header values still showing the mask get the original value back."""
    known: dict[tuple[bytes, bytes], bytes] = {}
    for name, values in original:
        if name.lower() in SECRET_HEADERS:
            for value in values:
                known[(name.lower(), mask_value(name, value))] = value
    return [(name, [known.get((name.lower(), v), v) for v in values]) for name, values in headers]


def request_bytes(entry: Entry, edited: bytes | None = None) -> bytes:
    """The HTTP/1.1 request a replay feeds the site: the captured one, or ``edited``."""
    if edited is None:
        refusal = replay_refusal(entry)
        if refusal is not None:
            raise ReplayError(refusal)
        method, target = entry.method, entry.uri
        headers, body = entry.request_headers, bytes(entry.request_body.data)
    else:
        method, target, headers, body = parse_raw(edited)
        headers = unmask(headers, entry.request_headers)
    kept = [(n, vs) for n, vs in headers if n.lower() not in _FRAMING]
    if not any(n.lower() == b"host" for n, _ in kept):
        kept.insert(0, (b"Host", [entry.host.encode("idna")]))
    lines = [b"%s %s HTTP/1.1" % (method, target)]
    lines += [n + b": " + v for n, vs in kept for v in vs]
    if body or method not in (b"GET", b"HEAD", b"OPTIONS", b"DELETE"):
        lines.append(b"Content-Length: %d" % len(body))
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@implementer(ITransport, IConsumer, IPushProducer)
class ReplayTransport:
    """The connection a replayed request arrives on: nothing is sent anywhere (the capture
    records the answer); closed when the site closes it, after the response."""

    disconnecting = False
    connected = True

    def __init__(self, reactor: Any, client: tuple[str, int], replay_of: str) -> None:
        self.reactor = reactor
        self.client = client
        self.replay_of = replay_of  # read by the capture: the new entry is a replay of this
        self.protocol: Any = None
        self.producer: Any = None
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writeSequence(self, data: Any) -> None:
        for chunk in data:
            self.write(chunk)

    def loseConnection(self) -> None:
        if self.disconnecting:
            return
        self.disconnecting = True
        self.reactor.callLater(0, self._lost)

    abortConnection = loseConnection

    def _lost(self) -> None:
        self.connected = False
        if self.producer is not None:
            self.producer.stopProducing()
            self.producer = None
        self.protocol.connectionLost(Failure(error.ConnectionDone()))

    def getPeer(self) -> address.IPv4Address | address.IPv6Address:
        kind = address.IPv6Address if ":" in self.client[0] else address.IPv4Address
        return kind("TCP", self.client[0], self.client[1])

    def getHost(self) -> address.IPv4Address:
        return address.IPv4Address("TCP", "127.0.0.1", 0)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        if not streaming:
            self.reactor.callLater(0, producer.resumeProducing)

    def unregisterProducer(self) -> None:
        self.producer = None

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.loseConnection()


class Replayer:
    """Feeds replays to a site built from the dispatcher's current serve configuration."""

    def __init__(self, dispatcher: Any, request_factory: Any) -> None:
        self.dispatcher = dispatcher
        self.request_factory = request_factory
        self.replays = 0

    def replay(self, entry: Entry, edited: bytes | None = None) -> None:
        data = request_bytes(entry, edited)  # ReplayError before anything is sent
        d = self.dispatcher
        flow = Flow(
            client=entry.client,
            host=entry.host,
            port=entry.port,
            funnel=entry.funnel,
            peer=entry.peer,
        )
        router = MountRouter(d.serve, flow.port, flow, d.proxy_factory, d.count, d.access)
        site = ServeSite(router, d.reactor, timeout=d.http_timeout, limits=d.http_limits)
        site.requestFactory = self.request_factory
        site.on_request, site.flow = d.on_request, flow
        channel = site.buildProtocol(None)
        transport = ReplayTransport(d.reactor, entry.client, entry.id)
        transport.protocol = channel
        channel.makeConnection(transport)
        channel.dataReceived(data)
        self.replays += 1
