"""The capture seam: a twisted.web Request that copies what passes through it.

The dispatcher builds every HTTPS site of the node with the request class it is given
(``Dispatcher.capture``); with the inspector on, that is a subclass of serve's
StreamingRequest made here, else the plain one, so capture costs nothing when off. It sits at
the HTTP server request, not in any handler: proxy, file and text mounts alike, HTTP/1.1 and
HTTP/2 alike, are seen as the client saw them.

What it copies, without holding anything back: the head when it is complete (before access
policies strip credentials), each body chunk up to the limit as it passes on to the handler,
each response chunk up to the limit as it is written, and the status and headers when the
request ends (or the connection is lost). An entry is published once the request is routed
(so ``inspect-mounts`` can skip a mount before it costs anything more) and again when it ends.
"""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.python.failure import Failure
from twisted.web.resource import IResource

from ..serve.notes import request_notes
from ..serve.streaming import StreamingRequest
from ..serve.web import tls_server_name
from .store import Entry, Store


class Capturer:
    """Makes entries for the requests of the node's HTTPS sites and files them in ``store``."""

    def __init__(
        self, store: Store, reactor: Any, body_limit: int, mounts: tuple[str, ...] = ()
    ) -> None:
        self.store = store
        self.reactor = reactor
        self.body_limit = body_limit
        self.mounts = frozenset(mounts)
        self.request_factory: type[StreamingRequest] = type(
            "CapturingRequest", (CapturingRequest,), {"capturer": self}
        )

    def begin(self, request: CapturingRequest, method: bytes, uri: bytes, proto: bytes) -> None:
        site = getattr(request.channel, "site", None)
        flow = getattr(site, "flow", None)
        if flow is None:
            return
        now = self.reactor.seconds()
        request.capture = Entry(
            start=now,
            started=now,
            client=flow.client,
            host=tls_server_name(request) or flow.host,
            port=flow.port,
            funnel=flow.funnel,
            peer=flow.peer,
            method=method,
            uri=uri,
            proto=proto,
            request_headers=[
                (name, list(values)) for name, values in request.requestHeaders.getAllRawHeaders()
            ],
            body_limit=self.body_limit,
        )
        transport = getattr(request.channel, "transport", None)
        request.capture.replay_of = getattr(transport, "replay_of", "")

    def routed(self, request: CapturingRequest, entry: Entry) -> bool:
        """The mount is known: keep the entry (True) unless inspect-mounts leaves it out."""
        mount = request_notes(request).get("mount") or ""
        if self.mounts and mount not in self.mounts:
            return False
        entry.mount = mount
        self.store.add(entry)
        return True

    def end(self, request: CapturingRequest, entry: Entry, result: object) -> None:
        entry.duration = max(0.0, self.reactor.seconds() - entry.started)
        entry.status = request.code
        entry.reason = request.code_message
        entry.response_headers = [
            (name, list(values)) for name, values in request.responseHeaders.getAllRawHeaders()
        ]
        notes = request_notes(request)
        entry.user = str(notes.get("user") or "")
        if isinstance(result, Failure):
            entry.error = str(notes.get("reason") or "connection lost")
        self.store.finished(entry)


class CapturingRequest(StreamingRequest):
    """StreamingRequest, copying what passes. ``capturer`` is set on the subclass a
    :class:`Capturer` makes; ``capture`` is this request's entry while it is captured."""

    capturer: ClassVar[Capturer]
    capture: Entry | None = None
    _begun = False

    def _begin(self, line: tuple[bytes, bytes, bytes] | None) -> None:
        self._begun = True
        if line is not None:
            self.capturer.begin(self, *line)

    def handleContentChunk(self, data: bytes) -> None:
        if not self._begun:
            self._begin(self._request_line())
        if self.capture is not None:
            self.capture.request_body.add(data)
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self._begun:
            self._begin((command, path, version))
        super().requestReceived(command, path, version)

    def render(self, resrc: IResource) -> None:
        entry = self.capture
        if entry is not None and not entry.id:
            if self.capturer.routed(self, entry):
                self.notifyFinish().addBoth(self._ended, entry)
            else:
                self.capture = None
        super().render(resrc)

    def _ended(self, result: object, entry: Entry) -> None:
        self.capturer.end(self, entry, result)

    def write(self, data: bytes) -> None:
        if self.capture is not None and self.method != b"HEAD":  # (a HEAD sends no body)
            self.capture.response_body.add(data)
        super().write(data)
