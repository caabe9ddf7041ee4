"""The optional plain-HTTP port: every request gets 308 to the same URL over https."""

from __future__ import annotations

from twisted.web import resource, server


class RedirectToHTTPS(resource.Resource):
    isLeaf = True

    def __init__(self, https_port: int) -> None:
        super().__init__()
        self.https_port = https_port

    def render(self, request: server.Request) -> bytes:
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if not name or any(c in name for c in "/\\\r\n @"):
            request.setResponseCode(400)
            return b"missing or bad Host\n"
        port = "" if self.https_port == 443 else f":{self.https_port}"
        location = f"https://{name}{port}{request.uri.decode('latin-1')}"
        request.setResponseCode(308)
        request.setHeader(b"location", location.encode("latin-1"))
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return f"{location}\n".encode("latin-1")


def redirect_site(https_port: int) -> server.Site:
    site = server.Site(RedirectToHTTPS(https_port))
    site.displayTracebacks = False
    site.noisy = False  # no "Starting factory" line
    return site
