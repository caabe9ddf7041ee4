"""The peerAPI's refusals, written as Go's http.Error writes them (what clients compare)."""

from __future__ import annotations

from twisted.web.resource import Resource
from twisted.web.server import Request


def plain_error(request: Request, code: int, message: str) -> bytes:
    """Go's http.Error: the message and a newline, as text/plain."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"x-content-type-options", b"nosniff")
    return message.encode() + b"\n"


class Refusal(Resource):
    """A leaf that answers every request with one :func:`plain_error`."""

    isLeaf = True

    def __init__(self, code: int, message: str) -> None:
        super().__init__()
        self.code = code
        self.message = message

    def render(self, request: Request) -> bytes:
        return plain_error(request, self.code, self.message)
