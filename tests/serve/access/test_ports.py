"""Policies on non-HTTP ports: deny/allow and the rate of new connections on a tcp-forward
port, a client certificate on a tls-terminated-tcp port (curl from several loopback sources)."""

from __future__ import annotations

import shutil
from pathlib import Path

from twisted.trial.unittest import TestCase
from twisted.web import server

from tests._support import issue, make_ca, run_process

from ..backend import listen
from ..harness import HOSTNAME, ServeHarness
from ..test_hostports import _Answer
from .test_mtls import write_identity


class PortPolicyTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        if shutil.which("curl") is None:
            self.skipTest("curl not installed")
        backend = listen(server.Site(_Answer(b"backend")))
        self.addCleanup(backend.stopListening)
        port = backend.getHost().port
        folder = Path(self.mktemp()).absolute()
        folder.mkdir()
        ca = make_ca("devices CA")
        (folder / "ca.pem").write_bytes(ca.cert_pem())
        self.device = write_identity(folder, "device", issue("sensor-1", issuer=ca, san=()))
        self.h = ServeHarness(
            self,
            f"""[access lan]
allow = 127.0.0.0/30
deny = 127.0.0.2/32
rate-limit = 1/h
rate-burst = 2

[access devices]
client-ca-file = {folder / "ca.pem"}

[serve 8080]
funnel = yes
tcp-forward = 127.0.0.1:{port}
access = lan

[serve 8443]
funnel = yes
tls-terminated-tcp = 127.0.0.1:{port}
access = devices
""",
        )
        self.plain = self.h.front(8080)[1]
        self.tls = self.h.front(8443)[1]

    async def get(self, source: str) -> bytes:
        code, out, _ = await run_process(
            "curl", "-sS", "--max-time", "10", "--interface", source,
            f"http://127.0.0.1:{self.plain}/",
        )  # fmt: skip
        return out if code == 0 else b"refused"

    async def test_addresses_and_connection_rate(self) -> None:
        self.assertEqual(await self.get("127.0.0.2"), b"refused", "denied")
        self.assertEqual(await self.get("127.0.0.9"), b"refused", "not allowed")
        self.assertEqual(await self.get("127.0.0.1"), b"backend")
        self.assertEqual(await self.get("127.0.0.3"), b"backend", "another client's bucket")
        self.assertEqual(await self.get("127.0.0.1"), b"backend")
        self.assertEqual(await self.get("127.0.0.1"), b"refused", "burst of 2 used up")
        counters = self.h.node.access.counters
        self.assertEqual(
            (counters["address_denied"], counters["address_not_allowed"], counters["rate_limited"]),
            (1, 1, 1),
        )
        self.assertEqual(self.h.node.dispatcher.counters["access_refused"], 3)

    async def test_client_certificate_on_tls_terminated(self) -> None:
        cert, key = self.device
        url = f"https://{HOSTNAME}:{self.tls}/"
        resolve = f"{HOSTNAME}:{self.tls}:127.0.0.1"
        base = [
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            self.h.ca_file,
            "--resolve",
            resolve,
            url,
        ]
        code, out, err = await run_process(*base, "--cert", cert, "--key", key)
        self.assertEqual((code, out), (0, b"backend"), err)
        code, out, err = await run_process(*base)
        self.assertNotEqual(code, 0)
        self.assertEqual(self.h.node.access.counters["client_certificate_missing"], 1)
