"""The relay's side of ``POST /v0/ingress``: ask a node to take a public connection.

The client end sends the request, waits for exactly ``HTTP/1.1 101 Switching Protocols``
followed by an empty line, and only then lets any client bytes through (the relay must not
send client bytes before the 101). Anything else closes the connection; a refusal's status
line and the first line of its body (the node's reason) are read, at most ``MAX_ANSWER``
bytes, for the relay's log. The wait itself is bounded by the relay's ingress timeout.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from ..web import splice
from ..web.hostport import format_host_port

EXPECTED = b"HTTP/1.1 101 Switching Protocols\r\n\r\n"
MAX_ANSWER = 4096
# Sent when the ClientHello offers ALPN acme-tls/1 (a tls-alpn-01 validation): a node of a pool
# without a pending challenge for the name declines (peerapi/ingress.py), so the relay tries
# the node that ordered the certificate. Tailscale's nodes ignore the header.
ACME_HEADER = "Funnel-Ingress-ALPN: acme-tls/1\r\n"


def ingress_request(
    peerapi_host: str, client: tuple[str, int], target: str, acme: bool = False
) -> bytes:
    return (
        "POST /v0/ingress HTTP/1.1\r\n"
        f"Host: {peerapi_host}\r\n"
        f"Tailscale-Ingress-Src: {format_host_port(*client)}\r\n"
        f"Tailscale-Ingress-Target: {target}\r\n"
        + (ACME_HEADER if acme else "")
        + "Content-Length: 0\r\n"
        "\r\n"
    ).encode()


def printable(raw: bytes, limit: int = 200) -> str:
    """Node-supplied text for a log line: one line, no control characters, bounded."""
    text = raw[:limit].decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in text).strip()


def answer_status(head: bytes) -> int:
    """The status code of an answer's head (0 if it has none)."""
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() and len(parts[1]) == 3 else 0


def describe_refusal(head: bytes, body: bytes) -> str:
    """``403 Forbidden: denied`` from a refusal's status line and its body's first line."""
    status = printable(head.split(b"\r\n", 1)[0].removeprefix(b"HTTP/1.1 "), 100)
    reason = printable(body.split(b"\n", 1)[0])
    return f"node answered {status}" + (f": {reason}" if reason else "")


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
        self.refusing = False
        self.status = 0  # the status of a refusal (0: the connection ended before an answer)

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        if self.accepted:
            super().dataReceived(data)
            return
        self.answer = (self.answer + data)[:MAX_ANSWER]
        if self.refusing:
            self._maybe_refusal_done()
            return
        if len(self.answer) < len(EXPECTED) and EXPECTED.startswith(self.answer):
            return
        if not self.answer.startswith(EXPECTED):
            self.refusing = True
            self._maybe_refusal_done()
            return
        self.accepted = True
        rest = self.answer[len(EXPECTED) :]
        self.answer = b""
        self.on_accepted(self)
        if rest:
            super().dataReceived(rest)

    def _maybe_refusal_done(self, lost: bool = False) -> None:
        """Refuse once the answer's head and the first line of its body are in (or the
        connection ended, or MAX_ANSWER bytes came)."""
        head, sep, body = self.answer.partition(b"\r\n\r\n")
        if not lost and len(self.answer) < MAX_ANSWER and not (sep and b"\n" in body):
            return
        self._refuse(describe_refusal(head, body), answer_status(head))

    def _refuse(self, why: str, status: int) -> None:
        callback, self.on_refused = self.on_refused, lambda why: None
        self.status = status
        self.transport.loseConnection()
        callback(why)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.refusing:
            self._maybe_refusal_done(lost=True)
        elif not self.accepted:
            callback, self.on_refused = self.on_refused, lambda why: None
            callback(f"connection to the node lost before its answer: {reason.getErrorMessage()}")
        super().connectionLost(reason)
