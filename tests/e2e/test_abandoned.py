"""Abandoned flows through the real relay and node processes: a client that stops reading and
then resets (SO_LINGER 0), mid-download and mid-upload. The node must notice, paused or not:
its open ingress connections (the status document) return to zero within a bound, and the
funnel still serves afterwards."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.node.status.address import STATUS_PATH, socket_path
from funnel_tw.node.status.client import fetch
from tests._support import issue, make_ca
from tests.e2e import harness

NAME = "abandon.e2e.test"
BOUND = 20.0  # seconds for both daemons to let go of a reset flow


class StreamingTLSServer:
    """A TLS server (the backend of a tcp-forward port: the client's TLS passes through) that
    writes to every client as fast as it takes the bytes, until told to stop."""

    def __init__(self, add_cleanup: Callable[..., None]) -> None:
        self.ca = make_ca()
        leaf = issue(NAME, issuer=self.ca)
        folder = Path(tempfile.mkdtemp(prefix="ftw-e2e-tls-"))
        add_cleanup(shutil.rmtree, folder, ignore_errors=True)
        self.ca_file = folder / "ca.pem"
        self.ca_file.write_bytes(self.ca.cert_pem())
        leaf.write(folder / "cert.pem", folder / "key.pem")
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        self.threads: list[threading.Thread] = []
        add_cleanup(self.stop)
        self._start(self._accept)

    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._start(self._stream, conn)

    def _stream(self, conn: socket.socket) -> None:
        chunk = b"z" * 65536
        with contextlib.suppress(OSError), conn:
            conn.settimeout(1.0)
            with self.context.wrap_socket(conn, server_side=True) as tls:
                while not self.stopped.is_set():
                    try:
                        tls.sendall(chunk)
                    except TimeoutError:
                        continue  # the far end reads nothing: stay, as a slow reader's peer

    def stop(self) -> None:
        self.stopped.set()
        self.listener.close()
        for thread in self.threads:
            thread.join(timeout=5)


class AbandonedFlowTests(SynchronousTestCase):
    def setUp(self) -> None:
        harness.require_tools(self, "curl")
        self.tls_backend = StreamingTLSServer(self.addCleanup)
        self.forward_port = harness.free_port()
        self.funnel = harness.Funnel(self.addCleanup, more_public_ports=[self.forward_port])
        self.node = self.funnel.add_node(
            "home",
            [NAME],
            extra_serve=f"[serve {self.forward_port}]\nfunnel = yes\n"
            f"tcp-forward = 127.0.0.1:{self.tls_backend.port}\n",
        )
        self.funnel.start()

    def open_ingress(self) -> int:
        doc = fetch(socket_path(self.node.dir / "state"), STATUS_PATH)
        return int(doc["ingress"]["open"])

    def tls(self, port: int | None = None, cafile: str | None = None) -> ssl.SSLSocket:
        context = ssl.create_default_context(cafile=cafile or str(self.node.ca))
        context.set_alpn_protocols(["http/1.1"])
        plain = socket.create_connection(("127.0.0.1", port or self.funnel.public_port), timeout=10)
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

    def test_tcp_forward_stalled_then_reset(self) -> None:
        flows = []
        for _ in range(3):  # the client's TLS goes through to the backend, which floods it
            sock = self.tls(self.forward_port, str(self.tls_backend.ca_file))
            sock.recv(1024)
            flows.append(sock)
        time.sleep(2)
        self.assertEqual(self.open_ingress(), 3)
        for sock in flows:
            self.reset(sock)
        self.assert_released("tcp-forward")
