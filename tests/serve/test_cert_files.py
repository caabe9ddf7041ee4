"""``[tls] source = files``: loaded at start, reloaded when the files change, and kept when a
new pair is unusable (half-written, mismatched)."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.tls.sources import CertificateSourceError, FilesSource
from funnel_tw.tls.store import CertificateStore
from tests import _support

NAME = "node.example.com"


def issue(name: str, days: int) -> tuple[bytes, bytes, x509.Certificate]:
    issued = _support.issue(
        name, not_before=datetime.timedelta(minutes=-1), not_after=datetime.timedelta(days=days)
    )
    return issued.key_pem(), issued.chain_pem(), issued.cert


class FilesSourceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.cert_file, self.key_file = self.dir / "fullchain.pem", self.dir / "privkey.pem"
        self.clock = task.Clock()
        self.store = CertificateStore([NAME])
        self.source = FilesSource(self.store, self.cert_file, self.key_file, self.clock)

    def write(self, key: bytes, chain: bytes) -> None:
        self.key_file.write_bytes(key)
        self.key_file.chmod(0o600)
        self.cert_file.write_bytes(chain)

    def serving(self) -> x509.Certificate:
        cert = self.store.lookup(NAME)
        assert cert is not None
        return cert.chain[0]

    def test_loads_and_reloads_on_change(self) -> None:
        key, chain, first = issue(NAME, 30)
        self.write(key, chain)
        self.source.start()
        self.addCleanup(self.source.stop)
        self.assertEqual(self.serving(), first)
        key, chain, second = issue(NAME, 60)
        self.write(key, chain)
        self.clock.advance(FilesSource.CHECK_EVERY)
        self.assertEqual(self.serving(), second)

    def test_bad_new_files_keep_the_current_certificate(self) -> None:
        key, chain, first = issue(NAME, 30)
        self.write(key, chain)
        self.source.start()
        self.addCleanup(self.source.stop)
        other_key, _, _ = issue(NAME, 30)
        self.write(other_key, chain)  # a key that does not match the certificate
        self.clock.advance(FilesSource.CHECK_EVERY)
        self.assertEqual(self.serving(), first)
        self.write(key, chain[: len(chain) // 2])  # half-written
        self.clock.advance(FilesSource.CHECK_EVERY)
        self.assertEqual(self.serving(), first)
        self.assertEqual(self.source.reload_failures, 2)
        key2, chain2, fixed = issue(NAME, 90)
        self.write(key2, chain2)
        self.clock.advance(FilesSource.CHECK_EVERY)
        self.assertEqual(self.serving(), fixed)

    def test_unusable_at_start_is_an_error(self) -> None:
        with self.assertRaises(CertificateSourceError):
            self.source.start()  # no files at all
        key, chain, _ = issue("other.example.com", 30)
        self.write(key, chain)
        with self.assertRaises(CertificateSourceError) as caught:
            self.source.start()
        self.assertIn("covers none of the node's hostnames", str(caught.exception))
