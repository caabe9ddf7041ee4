"""client-ca-file on an HTTPS port: the node asks for an optional client certificate and each
mount's policy decides (curl --cert, HTTP/1.1 and HTTP/2)."""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import TestCase

from tests._support import Issued, ProcessResult, issue, make_ca

from ..backend import backend_site, listen
from ..harness import ServeHarness


def write_identity(folder: Path, name: str, issued: Issued) -> tuple[str, str]:
    cert = folder / f"{name}.pem"
    key = folder / f"{name}.key"
    cert.write_bytes(issued.cert_pem())
    key.write_bytes(
        issued.key.private_bytes(  # type: ignore[union-attr]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert), str(key)


class ClientCertificateTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        if shutil.which("curl") is None:
            self.skipTest("curl not installed")
        backend = listen(backend_site())
        self.addCleanup(backend.stopListening)
        folder = Path(self.mktemp()).absolute()
        folder.mkdir()
        ca = make_ca("devices CA")
        (folder / "ca.pem").write_bytes(ca.cert_pem())
        self.device = write_identity(folder, "device", issue("thermostat-7", issuer=ca, san=()))
        self.stranger = write_identity(folder, "other", issue("intruder", issuer=make_ca("other")))
        self.expired = write_identity(
            folder,
            "expired",
            issue("old-device", issuer=ca, not_after=datetime.timedelta(minutes=-1)),
        )
        port = backend.getHost().port
        self.h = ServeHarness(
            self,
            f"""[access devices]
client-ca-file = {folder / "ca.pem"}

[serve 443]
funnel = yes
/ = text:open
/devices/ = http://127.0.0.1:{port}/
access /devices/ = devices
""",
        )
        self.front, self.port = self.h.front(443)

    async def curl(self, path: str, *extra: str) -> ProcessResult:
        return await self.h.curl(self.port, path, *extra)

    async def test_per_mount(self) -> None:
        for version in ("--http1.1", "--http2"):
            code, out, err = await self.curl("/", version)
            self.assertEqual((code, out), (0, b"open"), err)
            cert, key = self.device
            code, out, err = await self.curl(
                "/devices/x", version, "--cert", cert, "--key", key, "-H", "Remote-User: admin"
            )
            self.assertEqual(code, 0, err)
            self.assertEqual(json.loads(out)["headers"]["remote-user"], ["thermostat-7"])
            for extra in ((), ("--cert", self.stranger[0], "--key", self.stranger[1])):
                code, out, err = await self.curl(
                    "/devices/x", version, *extra, "-o", "/dev/null", "-w", "%{http_code}"
                )
                self.assertEqual((code, out), (0, b"403"), err)
            cert, key = self.expired
            code, out, err = await self.curl(
                "/devices/x", version, "--cert", cert, "--key", key, "-w", "%{http_code}"
            )
            self.assertTrue(out.endswith(b"403"), out)
        node = self.h.node
        self.assertTrue(node.access.wants_client_certificates(node.serve, 443, node.serve.tcp[443]))
        counters = self.h.node.access.counters
        self.assertEqual(counters["client_certificate_missing"], 2)
        self.assertEqual(counters["client_certificate_invalid"], 4)
