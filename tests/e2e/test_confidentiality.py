"""The relay never holds a key that could decrypt the client's TLS.

Checked three ways against the real processes:

* structurally: relay.ini cannot even express a TLS key, and the relay's folder holds no PEM
  key or certificate, while the node's state-dir does;
* on the wire: a recording TCP tee in front of the relay's public port sees a TLS record
  stream in which a secret request path, body and answer never appear, though the backend
  received them;
* in memory (as root): the relay process's memory holds neither the node's TLS private key
  (raw scalar in either byte order, PKCS#8 DER, PEM text) nor the secret, while the same scan
  finds the relay's own WireGuard key in it, and the TLS key in the node process.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.config import RelayConfig, RelayNode
from tests.e2e import harness
from tests.interop.netns import require_interop

NAME = "secret.e2e.test"


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


class RelayHoldsNoKeyTests(SynchronousTestCase):
    def setUp(self) -> None:
        harness.require_tools(self, "curl")
        self.funnel = harness.Funnel(self.addCleanup)
        self.node = self.funnel.add_node("home", [NAME])
        self.funnel.start()
        self.secret = os.urandom(16).hex()
        self.tee = harness.Tee(("127.0.0.1", self.funnel.public_port), self.addCleanup)
        self.result = self.funnel.curl(
            self.node,
            path=f"/private/{self.secret}",
            port=self.tee.port,
            extra=["--data-binary", f"token={self.secret}"],
        )
        self.assertEqual((self.result.returncode, self.result.status), (0, 200), self.result)
        # the plaintext did reach the backend (and came back in its answer)
        self.assertIn(f"path=/private/{self.secret}", self.result.body)
        self.assertIn(f"body=token={self.secret}", self.result.body)

    def tls_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.node.leaf_pem.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key

    def test_relay_config_and_files_hold_no_tls_key(self) -> None:
        fields = [f.name for f in attrs.fields(RelayConfig) + attrs.fields(RelayNode)]
        self.assertFalse([f for f in fields if "tls" in f or "cert" in f], fields)
        self.assertNotIn("[tls]", self.funnel.relay_ini.read_text())
        relay_files = _files(self.funnel.relay_dir)
        self.assertTrue(relay_files)
        for path in relay_files:
            data = path.read_bytes()
            self.assertNotIn(b"PRIVATE KEY", data, path)
            self.assertNotIn(b"CERTIFICATE", data, path)
        # ...while the node's state-dir does hold them (so the check above means something)
        node_pems = [p for p in _files(self.node.dir / "state") if b"PRIVATE KEY" in p.read_bytes()]
        self.assertTrue(node_pems)
        # nothing of the node's is open or mapped in the relay process
        assert self.funnel.relay is not None
        pid = self.funnel.relay.pid
        opened = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(FileNotFoundError):  # closed since the listing
                opened.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        maps = Path(f"/proc/{pid}/maps").read_text()
        for where in [*opened, maps]:
            self.assertNotIn(str(self.node.dir), where)
            self.assertNotIn(".pem", where)

    def test_public_side_bytes_are_ciphertext(self) -> None:
        c2s, s2c = bytes(self.tee.c2s), bytes(self.tee.s2c)
        self.assertGreater(len(c2s), 200)
        self.assertEqual(c2s[:2], b"\x16\x03")  # a TLS handshake record
        self.assertEqual(s2c[:2], b"\x16\x03")  # the node's ServerHello, relayed
        self.assertIn(NAME.encode(), c2s)  # SNI is the one thing in clear
        for data in (c2s, s2c):
            self.assertNotIn(self.secret.encode(), data)
            self.assertNotIn(b"POST /private", data)
            self.assertNotIn(self.node.text.encode(), data)
        assert self.funnel.relay is not None
        self.assertNotIn(self.secret, self.funnel.relay.log())

    def test_relay_memory_holds_neither_the_tls_key_nor_the_plaintext(self) -> None:
        key = self.tls_key()
        scalar = key.private_numbers().private_value.to_bytes(32, "big")
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        pem_line = self.node.leaf_pem.read_bytes().splitlines()[1]  # first base64 line
        wg_key = self.funnel.relay_key
        needles = [scalar, scalar[::-1], der, pem_line, self.secret.encode(), wg_key]
        assert self.funnel.relay is not None and self.node.daemon is not None
        in_relay = harness.memory_contains(self.funnel.relay.pid, needles)
        in_node = harness.memory_contains(self.node.daemon.pid, [scalar, scalar[::-1]])
        if in_relay is None or in_node is None:
            require_interop(self, "cannot read /proc/PID/mem (needs root)")
            return
        self.assertTrue(in_relay[wg_key], "scan failed to find the relay's own WireGuard key")
        self.assertTrue(in_node[scalar] or in_node[scalar[::-1]], "TLS key not found in node")
        self.assertEqual(
            [n for n in needles[:-1] if in_relay[n]], [], "relay memory holds TLS key/plaintext"
        )
