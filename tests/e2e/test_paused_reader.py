"""Clients that pause while they download: every download through the real relay and node ends,
byte-exact.

A client that stops reading for a moment fills the relay's socket, the relay's window to the
node closes, the node's producer (a static file through TLS) is paused above its send limit and
must be woken when the buffer drains. Before the fix of 2026-12-07 (``over_send_limit``,
docs/netstack.md "The producer that was never woken") this failed 4 runs out of 4 (a download
stalled for good at 4.1-8.2 of 8.4 MB), and 5 of 40 downloads stalled in a longer loop; with
it, 0 of 160 downloads.
"""

from __future__ import annotations

import hashlib
import random
import socket
import ssl
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e import harness

NAME = "paused.e2e.test"
BIG = "big.paused.e2e.test"
SIZE = 8 << 20
DOWNLOADS = 16
READ_TIMEOUT = 15.0  # seconds without a byte: a stall (a download takes ~0.5 s here)


class PausedReaderTests(SynchronousTestCase):
    def test_downloads_with_pauses_all_end(self) -> None:
        funnel = harness.Funnel(self.addCleanup)
        serve_big, blob = funnel.big_file(BIG, SIZE)
        node = funnel.add_node("home", [NAME, BIG], extra_serve=serve_big)
        node.backend, node.backend_port = harness.start_backend(
            "backend-home", node.text, node.dir, self.addCleanup
        )
        funnel.write_node_ini(node)
        funnel.write_relay_ini()
        funnel.start_relay()
        funnel.start_node(node)
        funnel.wait_fetch(node, NAME)
        rng = random.Random(1)  # the pauses: where and how long, the same every run
        digest = hashlib.sha256(blob).digest()
        for i in range(DOWNLOADS):
            got, pauses = self.download(funnel.public_port, str(node.ca), rng)
            head, _, body = got.partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.1 200"), head[:200])
            self.assertEqual(
                (len(body), hashlib.sha256(body).digest()),
                (SIZE, digest),
                f"download {i} ({pauses} pauses) ended at {len(body)} of {SIZE} bytes",
            )

    def download(self, port: int, ca: str, rng: random.Random) -> tuple[bytes, int]:
        """One GET of the file, read in 64 KiB pieces with pauses of 50-600 ms now and then;
        what arrived, and how many pauses. A read that waits ``READ_TIMEOUT`` ends it."""
        context = ssl.create_default_context(cafile=ca)
        raw = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT)
        data = bytearray()
        pauses = 0
        with context.wrap_socket(raw, server_hostname=BIG) as tls:
            request = f"GET /big.bin HTTP/1.1\r\nHost: {BIG}\r\nConnection: close\r\n\r\n"
            tls.sendall(request.encode())
            try:
                while chunk := tls.recv(65536):
                    data += chunk
                    if rng.random() < 0.004:
                        time.sleep(rng.uniform(0.05, 0.6))
                        pauses += 1
            except TimeoutError:
                pass  # a stall: the caller reports how far it got
        return bytes(data), pauses
