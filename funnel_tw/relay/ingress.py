"""The relay's side of ``POST /v0/ingress``: ask a node to take a public connection.

The client end sends the request, waits for exactly ``HTTP/1.1 101 Switching Protocols``
followed by an empty line, and only then lets any client bytes through (the relay must not
send client bytes before the 101). Anything else, or a head larger than a few KiB, closes the
connection.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from ..web import splice
from ..web.hostport import format_host_port

EXPECTED = b"HTTP/1.1 101 Switching Protocols\r\n\r\n"
MAX_ANSWER = 4096


def ingress_request(peerapi_host: str, client: tuple[str, int], target: str) -> bytes:
    return (
        "POST /v0/ingress HTTP/1.1\r\n"
        f"Host: {peerapi_host}\r\n"
        f"Tailscale-Ingress-Src: {format_host_port(*client)}\r\n"
        f"Tailscale-Ingress-Target: {target}\r\n"
        "Content-Length: 0\r\n"
        "\r\n"
    ).encode()


class IngressClientEnd(splice.SpliceEnd):
    """The node-facing end of a funnel connection, until and after the node's 101."""

    def __init__(
        self,
        request: bytes,
        on_accepted: Callable[[IngressClientEnd], None],
        on_refused: Callable[[str], None],
    ) -> None:
        super().__init__("node")
        self.request = request
        self.on_accepted = on_accepted
        self.on_refused = on_refused
        self.answer = b""
        self.accepted = False

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        if self.accepted:
            super().dataReceived(data)
            return
        self.answer += data
        if len(self.answer) < len(EXPECTED) and EXPECTED.startswith(self.answer):
            return
        if not self.answer.startswith(EXPECTED):
            status = self.answer.split(b"\r\n", 1)[0][:100].decode("latin-1", "replace")
            self._refuse(f"node answered {status!r}")
            return
        self.accepted = True
        rest = self.answer[len(EXPECTED) :]
        self.answer = b""
        self.on_accepted(self)
        if rest:
            super().dataReceived(rest)

    def _refuse(self, why: str) -> None:
        callback, self.on_refused = self.on_refused, lambda why: None
        self.transport.loseConnection()
        callback(why)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.accepted:
            callback, self.on_refused = self.on_refused, lambda why: None
            callback(f"connection to the node lost before its answer: {reason.getErrorMessage()}")
        super().connectionLost(reason)
