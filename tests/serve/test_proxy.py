"""The streaming reverse proxy through the ingress path: curl (HTTP/1.1, HTTP/2), a WebSocket
client (wsproto) over TLS, large bodies both ways, dead and hung backends."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import ssl
import threading
import time
from typing import Any

from twisted.internet import defer, protocol, threads
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import TestCase
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Message, Request, TextMessage

from tests._support import ProcessResult, eventually, wait_until

from .backend import HungBackend, WebSocketEcho, backend_site, listen
from .harness import HOSTNAME, ServeHarness


async def backend_stalls(before: int, quiet: float, timeout: float) -> None:
    """Wait until Download has written more than ``before`` bytes and then nothing for
    ``quiet`` seconds, or ``timeout`` seconds at most (a backend that never stalls is for the
    test's assertions to catch)."""
    from .backend import Download

    last = (Download.written, time.monotonic())

    def stalled() -> bool:
        nonlocal last
        now = time.monotonic()
        if Download.written != last[0]:
            last = (Download.written, now)
            return False
        return Download.written > before and now - last[1] >= quiet

    await eventually(stalled, timeout, interval=0.05)


class ProxyTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        if shutil.which("curl") is None:
            self.skipTest("curl not installed")
        # wrapped to see when its connections have closed
        self.backend = WrappingFactory(backend_site())
        backend = listen(self.backend)
        self.addCleanup(backend.stopListening)
        hung = listen(protocol.Factory.forProtocol(HungBackend))
        self.addCleanup(hung.stopListening)
        ws = listen(protocol.Factory.forProtocol(WebSocketEcho))
        self.addCleanup(ws.stopListening)
        b, h, w = backend.getHost().port, hung.getHost().port, ws.getHost().port
        self.h = ServeHarness(
            self,
            f"""[serve 443]
funnel = yes
proxy-timeout = 1
/ = http://127.0.0.1:{b}
/api = http://127.0.0.1:{b}/base
/dead/ = http://127.0.0.1:1
/hung = http://127.0.0.1:{h}
/ws = http://127.0.0.1:{w}
""",
        )
        self.front, self.port = self.h.front(443)

    async def curl(self, path: str, *extra: str) -> ProcessResult:
        return await self.h.curl(self.port, path, *extra, max_time=60)

    async def echo(self, path: str, *extra: str) -> dict[str, Any]:
        code, out, err = await self.curl(path, *extra)
        self.assertEqual(code, 0, err)
        return json.loads(out)  # type: ignore[no-any-return]

    async def test_headers_http1_and_http2(self) -> None:
        for version in ("--http1.1", "--http2"):
            seen = await self.echo(
                "/x/y?q=1",
                version,
                "-H",
                "X-Forwarded-For: 6.6.6.6",
                "-H",
                "Forwarded: for=6.6.6.6",
                "-H",
                "X-Forwarded-Proto: http",
                "-H",
                "Tailscale-User-Login: mallory",
                "-H",
                "Tailscale-Funnel-Request: ?0",
                "-H",
                "Tailscale-Headers-Info: x",
                "-H",
                "X-Custom: kept",
            )
            headers = seen["headers"]
            self.assertEqual(seen["uri"], "/x/y?q=1")
            # one value: the public client (the test front reports curl's loopback address)
            self.assertEqual(headers["x-forwarded-for"], ["127.0.0.1"])
            self.assertEqual(headers["x-forwarded-proto"], ["https"])
            self.assertEqual(headers["x-forwarded-host"], [f"{HOSTNAME}:{self.port}"])
            self.assertEqual(headers["host"], [f"{HOSTNAME}:{self.port}"])  # unchanged
            self.assertEqual(headers["tailscale-funnel-request"], ["?1"])
            self.assertNotIn("forwarded", headers)
            self.assertNotIn("tailscale-user-login", headers)
            self.assertNotIn("tailscale-headers-info", headers)
            self.assertEqual(headers["x-custom"], ["kept"])

    async def test_hop_by_hop_response_headers_dropped(self) -> None:
        code, out, err = await self.curl("/h", "-D", "-", "-o", "/dev/null")
        self.assertEqual(code, 0, err)
        head = out.lower()
        self.assertIn(b"x-backend: yes", head)
        self.assertNotIn(b"proxy-authenticate", head)

    async def test_prefix_stripped_and_target_path_prepended(self) -> None:
        self.assertEqual((await self.echo("/api/v1/things?a=b"))["uri"], "/base/v1/things?a=b")
        self.assertEqual((await self.echo("/api"))["uri"], "/base")
        self.assertEqual((await self.echo("/apix"))["uri"], "/apix")  # the "/" mount

    async def test_upload_streams(self) -> None:
        data = os.urandom(3 << 20)
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        for version in ("--http1.1", "--http2"):
            for how in (
                ["--data-binary", f"@{path}"],
                ["-T", path, "-H", "Transfer-Encoding: chunked"],
            ):
                seen = await self.echo("/up", version, *how)
                self.assertEqual(seen["bytes"], len(data), (version, how))
                self.assertEqual(seen["sha256"], hashlib.sha256(data).hexdigest())

    async def test_download_streams(self) -> None:
        size = 8 << 20
        expected = hashlib.sha256((bytes(range(256)) * 4096 * 8)[:size]).hexdigest()
        for version in ("--http1.1", "--http2"):
            code, out, err = await self.curl(f"/download/{size}", version)
            self.assertEqual(code, 0, err)
            self.assertEqual(len(out), size)
            self.assertEqual(hashlib.sha256(out).hexdigest(), expected)

    async def test_chunked_and_head_responses_and_backend_reuse(self) -> None:
        for version in ("--http1.1", "--http2"):
            code, out, err = await self.curl("/chunked", version)
            self.assertEqual((code, out), (0, b"one two three"), err)
            code, out, err = await self.curl("/download/1000", version, "-I")
            self.assertEqual(code, 0, err)
            self.assertIn(b"content-length: 1000", out.lower())
        # six requests over six client connections, one after the other: one backend connection
        self.assertEqual(len(self.backend.protocols), 1)

    async def test_http2_client_that_stops_reading_stalls_the_backend(self) -> None:
        """A client may open a 2 GiB HTTP/2 window and then read nothing: the node must pause
        the backend once its own connection backs up, not buffer the whole response."""
        from .backend import Download

        # a stalled connection is paused, so it sees the client leave only at its idle timeout
        self.h.node.dispatcher.http_timeout = 1.0
        before = Download.written
        stop = threading.Event()
        self.addCleanup(stop.set)
        d = threads.deferToThread(self._h2_greedy_client, stop)
        await backend_stalls(before, quiet=1.0, timeout=4.0)
        sent = Download.written - before
        stop.set()
        await d
        await wait_until(
            lambda: self.front.closed() and not self.backend.protocols,
            10,
            "the node to close the stalled connection and its backend's",
        )
        self.assertGreater(sent, 0)
        self.assertLess(sent, 64 << 20, f"the backend sent {sent >> 20} MiB to a stalled client")

    def _h2_greedy_client(self, stop: threading.Event) -> None:
        import socket

        import h2.config
        import h2.connection
        import h2.settings

        context = ssl.create_default_context(cafile=self.h.ca_file)
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=20)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock = context.wrap_socket(raw, server_hostname=HOSTNAME)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
        conn.increment_flow_control_window(2**31 - 1 - 65535)
        conn.send_headers(
            1,
            [
                (":method", "GET"),
                (":path", "/download/1073741824"),
                (":authority", f"{HOSTNAME}:{self.port}"),
                (":scheme", "https"),
            ],
            end_stream=True,
        )
        sock.sendall(conn.data_to_send())
        sock.recv(65536)  # the first bytes, then nothing
        stop.wait(20)
        sock.close()

    async def test_dead_backend_502(self) -> None:
        _, out, _ = await self.curl("/dead/x", "-o", "/dev/null", "-w", "%{http_code}")
        self.assertEqual(out, b"502")

    async def test_hung_backend_504(self) -> None:
        _, out, _ = await self.curl("/hung", "-o", "/dev/null", "-w", "%{http_code}")
        self.assertEqual(out, b"504")

    async def test_websocket(self) -> None:
        answers = await threads.deferToThread(self._websocket_client, ["hello", "again"])
        self.assertEqual(answers, ["echo: hello", "echo: again"])

    def _websocket_client(self, messages: list[str]) -> list[str]:
        import socket

        context = ssl.create_default_context(cafile=self.h.ca_file)
        context.set_alpn_protocols(["http/1.1"])
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=20)
        sock = context.wrap_socket(raw, server_hostname=HOSTNAME)
        ws = WSConnection(ConnectionType.CLIENT)
        sock.sendall(ws.send(Request(host=HOSTNAME, target="/ws")))
        answers: list[str] = []
        pending = list(messages)
        accepted = False
        while len(answers) < len(messages):
            data = sock.recv(65536)
            if not data:
                break
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    accepted = True
                    sock.sendall(ws.send(Message(data=pending.pop(0))))
                elif isinstance(event, TextMessage):
                    answers.append(event.data)
                    if pending:
                        sock.sendall(ws.send(Message(data=pending.pop(0))))
        assert accepted
        sock.sendall(ws.send(CloseConnection(code=1000)))
        sock.close()
        return answers


__all__ = ["defer"]
