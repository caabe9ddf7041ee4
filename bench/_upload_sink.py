"""An HTTP/1.1 upload sink for bench/funnel.py: reads each request's body (Content-Length) and
answers ``received N``. A process of its own behind the Caddy backend (``/upload``), so
the upload runs measure the funnel, not a Python backend in the same process. Threads, one
per connection, ``recv_into`` a reused 1 MiB buffer: several GB/s on loopback.

    python bench/_upload_sink.py PORT
"""

from __future__ import annotations

import re
import socket
import socketserver
import sys

HEAD_MAX = 64 * 1024
_LENGTH = re.compile(rb"(?im)^content-length:\s*(\d+)\s*$")


class Sink(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        pending = b""
        while True:
            while b"\r\n\r\n" not in pending:
                if len(pending) > HEAD_MAX:
                    return
                chunk = sock.recv(65536)
                if not chunk:
                    return
                pending += chunk
            head, _, pending = pending.partition(b"\r\n\r\n")
            match = _LENGTH.search(head)
            left = int(match.group(1)) if match else 0
            received = min(left, len(pending))
            pending = pending[received:]
            left -= received
            while left:
                n = sock.recv_into(view, min(left, len(buffer)))
                if not n:
                    return
                received += n
                left -= n
            body = f"received {received}\n".encode()
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main() -> int:
    with Server(("127.0.0.1", int(sys.argv[1])), Sink) as server:
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
