"""Abandoned flows through the real relay and node processes: a client that stops reading and
then resets (SO_LINGER 0), mid-download and mid-upload. The node must notice, paused or not:
its open ingress connections (the status document) return to zero within a bound, and the
funnel still serves afterwards."""

from __future__ import annotations

import socket
import ssl
import struct
import time

from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.node.status.address import STATUS_PATH, socket_path
from funnel_tw.node.status.client import fetch
from tests.e2e import harness

NAME = "abandon.e2e.test"
BOUND = 20.0  # seconds for both daemons to let go of a reset flow


class AbandonedFlowTests(SynchronousTestCase):
    def setUp(self) -> None:
        harness.require_tools(self, "curl")
        self.funnel = harness.Funnel(self.addCleanup)
        self.node = self.funnel.add_node("home", [NAME])
        self.funnel.start()

    def open_ingress(self) -> int:
        doc = fetch(socket_path(self.node.dir / "state"), STATUS_PATH)
        return int(doc["ingress"]["open"])

    def tls(self) -> ssl.SSLSocket:
        context = ssl.create_default_context(cafile=str(self.node.ca))
        context.set_alpn_protocols(["http/1.1"])
        plain = socket.create_connection(("127.0.0.1", self.funnel.public_port), timeout=10)
        plain.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # fill up quickly
        return context.wrap_socket(plain, server_hostname=NAME)

    def reset(self, sock: ssl.SSLSocket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    def assert_released(self, what: str) -> None:
        deadline = time.monotonic() + BOUND
        while (count := self.open_ingress()) != 0:
            self.assertLess(time.monotonic(), deadline, f"{what}: {count} flows still open")
            time.sleep(0.2)
        result = self.funnel.curl(self.node)
        self.assertEqual((result.returncode, result.status), (0, 200), result.stderr)

    def test_download_stalled_then_reset(self) -> None:
        flows = []
        for _ in range(5):
            sock = self.tls()
            sock.sendall(b"GET /big/1000000000 HTTP/1.1\r\nHost: " + NAME.encode() + b"\r\n\r\n")
            sock.recv(1024)  # the download has started; now stop reading
            flows.append(sock)
        time.sleep(2)  # every buffer on the way fills up and the backend is paused
        self.assertEqual(self.open_ingress(), 5)
        for sock in flows:
            self.reset(sock)
        self.assert_released("download")

    def test_upload_flood_then_reset(self) -> None:
        sock = self.tls()
        sock.sendall(
            b"POST /sink HTTP/1.1\r\nHost: " + NAME.encode() + b"\r\n"
            b"Content-Length: 1000000000\r\n\r\n"
        )
        sock.settimeout(0.5)
        chunk = b"y" * 65536
        sent = 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # flood for a while, never reading
            try:
                sent += sock.send(chunk)
            except (TimeoutError, ssl.SSLWantWriteError):
                continue
        self.assertGreater(sent, 0)
        self.assertEqual(self.open_ingress(), 1)
        self.reset(sock)
        self.assert_released("upload")
