"""Certificate sources: ``self-signed`` and ``files`` (ACME lives in its own module).

Each source loads into the :class:`~funnel_tw.tls.store.CertificateStore` at start and keeps
it current: the self-signed source renews 30 days before expiry, the files source reloads
when the files change (after ``tailscale cert`` or a certbot renewal). A reload that fails
keeps the certificate already in use and says why in the log.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, Protocol

from twisted.internet import task
from twisted.logger import Logger

from .pem import PEMError, load_combined, load_key_and_chain
from .selfsigned import ensure_certificate
from .store import Certificate, CertificateStore

log = Logger()


class CertificateSource(Protocol):
    """Where a node's certificates come from: self-signed, files, or ACME (tls/issuer.py)."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def status(self) -> dict[str, Any] | None:
        """Renewal state for ``funnel-tw status``; None for sources that do not renew."""


class CertificateSourceError(Exception):
    """A certificate source that cannot provide a certificate."""


class SelfSignedSource:
    CHECK_EVERY = 24 * 3600.0

    def __init__(self, store: CertificateStore, directory: Path, reactor: Any) -> None:
        self.store = store
        self.directory = directory
        self.reactor = reactor
        self._loop: task.LoopingCall | None = None

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    def load(self) -> None:
        path = ensure_certificate(self.directory, tuple(self.store.hostnames))
        key, chain = load_combined(path)
        current = self.store.lookup(None)
        if current is None or current.chain[0] != chain[0]:
            self.store.install(Certificate(key, chain, source=f"self-signed {path}"))

    def start(self) -> None:
        self.load()
        self._loop = task.LoopingCall(self.load)
        self._loop.clock = self.reactor
        self._loop.start(self.CHECK_EVERY, now=False)

    def status(self) -> None:
        return None

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()


class FilesSource:
    CHECK_EVERY = 5.0

    def __init__(
        self, store: CertificateStore, cert_file: Path, key_file: Path, reactor: Any
    ) -> None:
        self.store = store
        self.cert_file = cert_file
        self.key_file = key_file
        self.reactor = reactor
        self._seen: tuple[tuple[int, int], ...] | None = None
        self._loop: task.LoopingCall | None = None
        self.reload_failures = 0

    def _stamp(self) -> tuple[tuple[int, int], ...]:
        stats = (self.cert_file.stat(), self.key_file.stat())
        return tuple((s.st_mtime_ns, s.st_size) for s in stats)

    def load(self) -> None:
        """Load now; raises CertificateSourceError when the files are unusable."""
        try:
            stamp = self._stamp()
            key, chain = load_key_and_chain(self.key_file.read_bytes(), self.cert_file.read_bytes())
        except (OSError, PEMError) as e:
            raise CertificateSourceError(f"{self.cert_file}, {self.key_file}: {e}") from None
        now = datetime.datetime.now(datetime.UTC)
        if chain[0].not_valid_after_utc < now:
            log.warn(
                "certificate {file} expired on {when}",
                file=str(self.cert_file),
                when=chain[0].not_valid_after_utc.isoformat(),
            )
        covered = self.store.install(Certificate(key, chain, source=f"file {self.cert_file}"))
        if not covered:
            raise CertificateSourceError(
                f"{self.cert_file} covers none of the node's hostnames "
                f"({', '.join(self.store.hostnames)})"
            )
        self._seen = stamp

    def check(self) -> None:
        try:
            stamp = self._stamp()
        except OSError as e:
            log.warn("certificate files unreadable, keeping the current one: {error}", error=e)
            return
        if stamp == self._seen:
            return
        try:
            self.load()
        except CertificateSourceError as e:
            self.reload_failures += 1
            self._seen = stamp  # try again when they change again
            log.warn("certificate reload failed, keeping the current one: {error}", error=e)

    def start(self) -> None:
        self.load()
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = self.reactor
        self._loop.start(self.CHECK_EVERY, now=False)

    def status(self) -> None:
        return None

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
