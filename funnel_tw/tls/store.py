"""The node's certificates, and TLS server connections that pick one by SNI.

A handshake whose SNI is not one of the node's hostnames fails (and is counted): there is no
default certificate to fall back to and never a plaintext fallback. A client that sends no
SNI (an overlay peer dialling an IP address) gets the first hostname's certificate.

Installing a certificate replaces the one for its names at once: new handshakes use it,
connections already open keep theirs.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from .pem import names_of

log = Logger()

HTTP_ALPN = (b"h2", b"http/1.1")
ACME_ALPN = b"acme-tls/1"


class UnknownServerName(Exception):
    """A TLS client asked for a name this node does not serve."""


def name_matches(pattern: str, name: str) -> bool:
    if pattern == name:
        return True
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return False


class Certificate:
    """A key and its chain (leaf first), with the contexts built from them."""

    def __init__(
        self, key: PrivateKeyTypes, chain: Sequence[x509.Certificate], source: str = ""
    ) -> None:
        self.key = key
        self.chain = list(chain)
        self.names = names_of(self.chain[0])
        self.source = source
        self._contexts: dict[tuple[bytes, ...], SSL.Context] = {}

    @property
    def not_after(self) -> datetime.datetime:
        return self.chain[0].not_valid_after_utc

    def context(self, alpn: tuple[bytes, ...], store: CertificateStore) -> SSL.Context:
        ctx = self._contexts.get(alpn)
        if ctx is None:
            ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
            ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
            ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
            # an idle connection gives its 2 x 16 KiB+ record buffers back to OpenSSL's pool
            # (as Twisted's own CertificateOptions does): bench/idle.py's memory per connection
            ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
            ctx.use_certificate(crypto.X509.from_cryptography(self.chain[0]))
            for extra in self.chain[1:]:
                ctx.add_extra_chain_cert(crypto.X509.from_cryptography(extra))
            ctx.use_privatekey(crypto.PKey.from_cryptography_key(self.key))  # type: ignore[arg-type]
            ctx.check_privatekey()
            store.configure(ctx, alpn)
            self._contexts[alpn] = ctx
        return ctx


class CertificateStore:
    """The certificates for a node's hostnames."""

    def __init__(self, hostnames: Sequence[str]) -> None:
        self.hostnames = [h.lower() for h in hostnames]
        self._certs: dict[str, Certificate] = {}  # configured hostname -> certificate
        self._challenges: dict[str, Certificate] = {}  # name -> tls-alpn-01 certificate
        self._refusal = SSL.Context(SSL.TLS_SERVER_METHOD)  # no certificate: every handshake fails
        self._challenge_contexts: dict[tuple[bytes, ...], SSL.Context] = {}
        self.counters: dict[str, int] = {}

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    def set_hostnames(self, hostnames: Sequence[str]) -> None:
        """Serve these names from now on (a reload): handshakes for a removed name are refused,
        its certificate forgotten; open connections keep theirs."""
        self.hostnames = [h.lower() for h in hostnames]
        for name in [n for n in self._certs if n not in self.hostnames]:
            del self._certs[name]

    def install(self, cert: Certificate) -> list[str]:
        """Use ``cert`` for every configured hostname it covers; returns those names."""
        covered = [
            h for h in self.hostnames if any(name_matches(n, h) or n == h for n in cert.names)
        ]
        for name in covered:
            self._certs[name] = cert
        if covered:
            log.info(
                "certificate for {names} installed ({source}), valid until {until}",
                names=", ".join(covered),
                source=cert.source,
                until=cert.not_after.isoformat(),
            )
        return covered

    def lookup(self, server_name: str | None) -> Certificate | None:
        if server_name is None:
            return self._certs.get(self.hostnames[0]) if self.hostnames else None
        server_name = server_name.lower().rstrip(".")
        cert = self._certs.get(server_name)
        if cert is not None:
            return cert
        for pattern, candidate in self._certs.items():
            if name_matches(pattern, server_name):
                return candidate
        return None

    def set_challenge(self, name: str, key: PrivateKeyTypes, cert: x509.Certificate) -> None:
        """Answer ``acme-tls/1`` handshakes for ``name`` with this certificate."""
        self._challenges[name.lower()] = Certificate(key, [cert], source="tls-alpn-01")

    def clear_challenge(self, name: str) -> None:
        self._challenges.pop(name.lower(), None)

    def has_challenge(self, name: str) -> bool:
        """Whether a tls-alpn-01 challenge is pending for ``name`` (a pool's relay asks)."""
        return name.lower().rstrip(".") in self._challenges

    def certificates(self) -> dict[str, Certificate]:
        return dict(self._certs)

    def serves(self, server_name: str) -> bool:
        name = server_name.lower().rstrip(".")
        return any(name_matches(h, name) for h in self.hostnames)

    # --- contexts ---------------------------------------------------------------------------

    def configure(self, ctx: SSL.Context, alpn: tuple[bytes, ...]) -> None:
        """ALPN must be set on every context, the switched-to ones included."""

        def select(conn: SSL.Connection, offered: list[bytes]) -> bytes | Any:
            if ACME_ALPN in offered:
                return self._acme_alpn(conn)
            for proto in alpn:
                if proto in offered:
                    return proto
            return SSL.NO_OVERLAPPING_PROTOCOLS

        ctx.set_alpn_select_callback(select)

        def on_server_name(conn: SSL.Connection) -> None:
            raw = conn.get_servername()
            name = raw.decode("ascii", "replace").lower().rstrip(".") if raw else None
            if name is not None and not self.serves(name):
                self._count("tls_unknown_server_name")
                log.info("TLS handshake for unknown name {name!r} refused", name=name)
                # a context without any certificate: the handshake fails, cleanly, here
                # (raising from this callback would only print a traceback)
                conn.set_context(self._refusal)
                return
            cert = self.lookup(name)
            if cert is not None:
                conn.set_context(cert.context(alpn, self))
            elif name is not None and name in self._challenges:
                # A configured name without a certificate yet (first issue, or a name added
                # later): only a validator offering acme-tls/1 completes the handshake, with the
                # challenge certificate _acme_alpn installs; anyone else finds no certificate.
                conn.set_context(self._challenge_only(alpn))
            else:
                self._count("tls_no_certificate")
                log.info("TLS handshake for {name!r} refused: no certificate yet", name=name)
                conn.set_context(self._refusal)

        ctx.set_tlsext_servername_callback(on_server_name)

    def _challenge_only(self, alpn: tuple[bytes, ...]) -> SSL.Context:
        """A context without a certificate whose ALPN callback can install the challenge one."""
        ctx = self._challenge_contexts.get(alpn)
        if ctx is None:
            ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
            ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
            self.configure(ctx, alpn)
            self._challenge_contexts[alpn] = ctx
        return ctx

    def _acme_alpn(self, conn: SSL.Connection) -> bytes | Any:
        """RFC 8737: a validator's handshake gets the challenge certificate, nothing else."""
        raw = conn.get_servername()
        name = raw.decode("ascii", "replace").lower().rstrip(".") if raw else ""
        challenge = self._challenges.get(name)
        if challenge is None:
            self._count("tls_acme_alpn_without_challenge")
            return SSL.NO_OVERLAPPING_PROTOCOLS
        conn.use_certificate(crypto.X509.from_cryptography(challenge.chain[0]))
        conn.use_privatekey(crypto.PKey.from_cryptography_key(challenge.key))  # type: ignore[arg-type]
        self._count("tls_alpn_01_answered")
        log.info("answered a tls-alpn-01 validation for {name}", name=name)
        return ACME_ALPN

    def creator(
        self, alpn: tuple[bytes, ...] = HTTP_ALPN, client_certificates: bool = False
    ) -> SNIServerCreator:
        return SNIServerCreator(self, alpn, client_certificates)


@implementer(IOpenSSLServerConnectionCreator)
class SNIServerCreator:
    """What TLSMemoryBIOFactory asks for a server connection."""

    def __init__(
        self, store: CertificateStore, alpn: tuple[bytes, ...], client_certificates: bool = False
    ) -> None:
        self.store = store
        self.alpn = alpn
        self.client_certificates = client_certificates

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        default = self.store.lookup(None)
        if default is None:
            raise UnknownServerName("no certificate installed")
        conn = SSL.Connection(default.context(self.alpn, self.store), None)
        if self.client_certificates:
            # ask for a certificate but let every handshake finish: whether one is needed,
            # and from which CA, is each access policy's decision (serve/access), per mount.
            # Set on the connection, the mode survives the SNI callback's set_context.
            conn.set_verify(SSL.VERIFY_PEER, _accept_any)
        return conn


def _accept_any(conn: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
    return True
