"""A raw HTTP/2 client over Python's ssl for hostile tests: frames built with hyperframe and
hpack, sent as they are (no library that would refuse to send them), and the node's frames
read back. Blocking: run it in a thread (threads.deferToThread)."""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import time
from collections.abc import Iterable

import h2.config
import h2.connection
import h2.events
from hyperframe.frame import Frame, GoAwayFrame, SettingsFrame

from tests.serve.harness import HOSTNAME

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class RawH2:
    def __init__(self, port: int, ca: str, settings: dict[int, int] | None = None) -> None:
        context = ssl.create_default_context(cafile=ca)
        context.set_alpn_protocols(["h2"])
        plain = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.tls = context.wrap_socket(plain, server_hostname=HOSTNAME)
        assert self.tls.selected_alpn_protocol() == "h2"
        self.received = b""
        self.closed = False
        self.error: Exception | None = None  # what ended the connection, if not an EOF
        self.send(PREFACE + SettingsFrame(0, settings=settings or {}).serialize())

    def send(self, data: bytes) -> bool:
        """Send ``data`` (reading whatever the node sent meanwhile); False once closed."""
        if self.closed:
            return False
        try:
            for start in range(0, len(data), 65536):
                self.drain(0)
                self.tls.sendall(data[start : start + 65536])
        except (OSError, ssl.SSLError) as e:
            self.error = e
            self.closed = True
        return not self.closed

    def flood(self, frames: Iterable[bytes], max_seconds: float = 20.0) -> int:
        """Send frames until the node closes the connection (or time runs out): bytes sent."""
        sent = 0
        deadline = time.monotonic() + max_seconds
        batch = b""
        for frame in frames:
            batch += frame
            if len(batch) >= 65536:
                if not self.send(batch) or time.monotonic() > deadline:
                    return sent
                sent += len(batch)
                batch = b""
        if batch and self.send(batch):
            sent += len(batch)
        return sent

    def drain(self, wait: float) -> None:
        """Read what the node sent, waiting up to ``wait`` seconds for the first bytes."""
        end = time.monotonic() + wait
        while not self.closed:
            timeout = max(0.0, end - time.monotonic())
            if not self.tls.pending() and not select.select([self.tls], [], [], timeout)[0]:
                return
            self.tls.settimeout(0)  # a record of session tickets only must not block here
            try:
                chunk = self.tls.recv(65536)
            except (ssl.SSLWantReadError, BlockingIOError):
                if timeout == 0:
                    return
                continue
            except (OSError, ssl.SSLError) as e:
                self.error = e
                self.closed = True
                return
            finally:
                self.tls.settimeout(10)
            if not chunk:
                self.closed = True
                return
            self.received += chunk
            end = time.monotonic() + min(wait, 0.2)  # keep reading while it comes

    def wait_closed(self, seconds: float) -> bool:
        """Read until the node closes; True if it did within ``seconds``."""
        end = time.monotonic() + seconds
        while not self.closed and time.monotonic() < end:
            self.drain(min(0.5, max(0.0, end - time.monotonic())))
        return self.closed

    def frames(self) -> list[Frame]:
        found: list[Frame] = []
        data = self.received
        while len(data) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(data[:9]))
            if len(data) < 9 + length:
                break
            frame.parse_body(memoryview(data[9 : 9 + length]))
            found.append(frame)
            data = data[9 + length :]
        return found

    def goaway(self) -> GoAwayFrame | None:
        return next((f for f in self.frames() if isinstance(f, GoAwayFrame)), None)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.tls.close()


def h2_get(port: int, ca: str, path: str = "/") -> tuple[int, bytes]:
    """An ordinary HTTP/2 GET with the h2 library: (status, body)."""
    context = ssl.create_default_context(cafile=ca)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as plain,
        context.wrap_socket(plain, server_hostname=HOSTNAME) as tls,
    ):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(
            1,
            [(":method", "GET"), (":path", path), (":authority", HOSTNAME), (":scheme", "https")],
            end_stream=True,
        )
        tls.sendall(conn.data_to_send())
        status, body = 0, b""
        while True:
            data = tls.recv(65536)
            if not data:
                return status, body
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.StreamEnded):
                    return status, body
            tls.sendall(conn.data_to_send())
