"""Answering ACME challenges: the responder interface and its two built-in kinds.

A responder starts answering one challenge for one name and stops afterwards:

- ``tls-alpn-01`` (RFC 8737), in-process: while a challenge is pending for a name, a TLS
  handshake for that name offering ``acme-tls/1`` gets a self-signed certificate carrying the
  critical acmeIdentifier extension (the SHA-256 of the key authorization), and the connection
  is closed after the handshake. Every other client keeps getting the normal certificate. The
  ACME server's validator reaches the node through the relay like any public client.
- ``dns-01``, through a hook executable called as ``HOOK set NAME VALUE`` and
  ``HOOK clear NAME VALUE`` (NAME is ``_acme-challenge.<domain>``); for wildcard names and nodes
  that are not funneled. DNS-provider plugins implement the same interface.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface, implementer

from .acme import dns01_value
from .signing import dns_names, sign_certificate
from .store import CertificateStore

log = Logger()

ACME_IDENTIFIER_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")


class IChallengeResponder(Interface):
    challenge_type = Attribute("The ACME challenge type answered, e.g. 'tls-alpn-01'.")

    def start_responding(name: str, token: str, key_authorization: str) -> defer.Deferred[None]:
        """Begin answering; fires when the answer is in place (e.g. the DNS record is set)."""

    def stop_responding(name: str, token: str, key_authorization: str) -> defer.Deferred[None]:
        """Stop answering (also after a failed validation)."""


class IChallengeResponderFactory(IPlugin):
    """A DNS provider plugin (``[tls] acme-dns-plugin = NAME``), found with twisted.plugin.

    ``create`` returns the responder; a plugin reads its own credentials (from the daemon's
    environment or a file of its own) and raises ChallengeError if they are missing.
    """

    name = Attribute("The name used in acme-dns-plugin = NAME.")

    def create(reactor: Any) -> IChallengeResponder:
        """Build the responder for this node."""


def dns_plugin(name: str, reactor: Any) -> IChallengeResponder:
    """The responder of DNS provider plugin ``name``; ChallengeError if none is installed."""
    from twisted.plugin import getPlugins

    import twisted.plugins

    found = {f.name: f for f in getPlugins(IChallengeResponderFactory, twisted.plugins)}
    if name not in found:
        known = ", ".join(sorted(found)) or "none installed"
        raise ChallengeError(f"no DNS provider plugin named {name!r} (installed: {known})")
    responder = found[name].create(reactor)
    if not IChallengeResponder.providedBy(responder):
        raise ChallengeError(f"DNS provider plugin {name!r} did not return a responder")
    return responder


class ChallengeError(Exception):
    """A responder could not put its answer in place."""


def tls_alpn_certificate(
    name: str, key_authz: str
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """RFC 8737 3: a certificate for ``name`` with the acmeIdentifier extension."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authz.encode()).digest()
    now = datetime.datetime.now(datetime.UTC)
    cert = sign_certificate(
        name,
        key.public_key(),
        key,
        not_before=now - datetime.timedelta(minutes=5),
        not_after=now + datetime.timedelta(days=1),
        extensions=[
            (dns_names([name]), False),
            # the extension's value is the DER OCTET STRING holding the digest
            (x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, b"\x04\x20" + digest), True),
        ],
    )
    return key, cert


@implementer(IChallengeResponder)
class TLSALPNResponder:
    challenge_type = "tls-alpn-01"

    def __init__(self, store: CertificateStore) -> None:
        self.store = store

    def start_responding(
        self, name: str, token: str, key_authorization: str
    ) -> defer.Deferred[None]:
        self.store.set_challenge(name, *tls_alpn_certificate(name, key_authorization))
        return defer.succeed(None)

    def stop_responding(
        self, name: str, token: str, key_authorization: str
    ) -> defer.Deferred[None]:
        self.store.clear_challenge(name)
        return defer.succeed(None)


class _HookProcess(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: defer.Deferred[tuple[bytes, bytes, int]] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data[: 65536 - len(self.out)]

    def errReceived(self, data: bytes) -> None:
        self.err += data[: 65536 - len(self.err)]

    def processEnded(self, reason: Any) -> None:
        code = getattr(reason.value, "exitCode", None)
        self.ended.callback((self.out, self.err, -1 if code is None else int(code)))


@implementer(IChallengeResponder)
class DNSHookResponder:
    challenge_type = "dns-01"

    def __init__(self, hook: Path, reactor: Any, timeout: float = 120.0) -> None:
        self.hook = hook
        self.reactor = reactor
        self.timeout = timeout

    async def _run(self, action: str, name: str, value: str) -> None:
        record = f"_acme-challenge.{name.removeprefix('*.')}"
        hook = _HookProcess()
        # the daemon's environment is passed on: a DNS provider's token usually lives there
        process = self.reactor.spawnProcess(
            hook, str(self.hook), [str(self.hook), action, record, value], env=dict(os.environ)
        )
        timed_out: list[bool] = []

        def kill() -> None:
            timed_out.append(True)
            with contextlib.suppress(Exception):
                process.signalProcess("KILL")

        timer = self.reactor.callLater(self.timeout, kill)
        try:
            out, err, code = await hook.ended
        finally:
            if timer.active():
                timer.cancel()
        if timed_out:
            raise ChallengeError(
                f"{self.hook} {action} {record}: no answer after {self.timeout:g} s; stopped it"
            )
        if code != 0:
            said = (err or out).decode("utf-8", "replace").strip()[-500:]
            raise ChallengeError(
                f"{self.hook} {action} {record} failed with status {code}"
                + (f": {said}" if said else "")
            )

    def start_responding(
        self, name: str, token: str, key_authorization: str
    ) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._run("set", name, dns01_value(key_authorization)))

    def stop_responding(
        self, name: str, token: str, key_authorization: str
    ) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(
            self._run("clear", name, dns01_value(key_authorization))
        )
