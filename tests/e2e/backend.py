"""A tiny sample backend for the end-to-end tests: ``python -m tests.e2e.backend TEXT PORTFILE``.

It listens on 127.0.0.1 (a free port), writes the port number to PORTFILE (atomically) and
answers every GET or POST with a small HTML page carrying TEXT, the request path, the request
body, the request headers and a script that adds a line to the DOM (so a browser test can tell
the page was run, not just fetched). It runs until killed.
"""

from __future__ import annotations

import html
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1 << 20


def page(text: str, path: str, body: bytes, headers: str = "") -> bytes:
    shown_body = html.escape(body.decode("utf-8", "replace"))
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>e2e backend</title></head>"
        f"<body><h1 id='text'>{html.escape(text)}</h1>"
        f"<p id='path'>path={html.escape(path)}</p>"
        f"<p id='body'>body={shown_body}</p>"
        f"<pre id='headers'>{html.escape(headers)}</pre>"
        "<p id='js'></p>"
        "<script>document.getElementById('js').textContent = 'script ran: ' + "
        "location.protocol + '//' + location.host;</script>"
        "</body></html>\n"
    ).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "e2e-backend"
    text = "backend"

    def _answer(self, body: bytes) -> None:
        content = page(self.text, self.path, body, str(self.headers))
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def do_GET(self) -> None:
        if self.path.startswith("/big/"):
            self._stream(int(self.path[5:]))
        else:
            self._answer(b"")

    def _stream(self, size: int) -> None:
        """GET /big/N: N bytes, written as the client takes them."""
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        chunk = b"x" * 65536
        try:
            while size > 0:
                self.wfile.write(chunk[:size])
                size -= len(chunk)
        except OSError:
            self.close_connection = True  # the node gave up on the client: so do we

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if self.path.startswith("/sink"):  # read it all, answer its size
            remaining, length = length, 0
            while remaining > 0:
                got = len(self.rfile.read(min(remaining, 65536)))
                if not got:
                    return
                length += got
                remaining -= got
            self._answer(str(length).encode())
            return
        self._answer(self.rfile.read(min(length, MAX_BODY)))

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


def main(argv: list[str]) -> None:
    text, port_file = argv[1], argv[2]
    Handler.text = text
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{server.server_address[1]}\n")
    os.replace(tmp, port_file)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv)
