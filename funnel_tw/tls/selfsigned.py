"""The ``self-signed`` source: a local CA in state-dir and a certificate it signs.

A certificate signed by a small local CA (rather than a bare self-signed leaf) lets a client
verify the hostname properly: ``curl --cacert state/tls/ca.pem https://node.example.com``.
The CA key never leaves state-dir; everything is written 0600 except ``ca.pem``, the CA's
certificate, which is public.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from .pem import chain_pem, key_pem, load_combined, names_of, new_key, write_private
from .signing import dns_names, sign_certificate

CA_LIFETIME = datetime.timedelta(days=3650)
LEAF_LIFETIME = datetime.timedelta(days=90)
RENEW_BEFORE = datetime.timedelta(days=30)


def _ca(directory: Path, now: datetime.datetime) -> tuple[PrivateKeyTypes, x509.Certificate]:
    key_path, cert_path = directory / "ca.key", directory / "ca.pem"
    if key_path.exists() and cert_path.exists():
        key, chain = load_combined_split(key_path, cert_path)
        if chain.not_valid_after_utc - now > LEAF_LIFETIME:
            return key, chain
    key = new_key()
    cert = sign_certificate(
        "funnel-tw local CA",
        key.public_key(),
        key,
        not_before=now - datetime.timedelta(minutes=5),
        not_after=now + CA_LIFETIME,
        extensions=[
            (x509.BasicConstraints(ca=True, path_length=0), True),
            (x509.KeyUsage(False, False, False, False, False, True, True, False, False), True),
            (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
        ],
    )
    write_private(key_path, key_pem(key))
    write_private(cert_path, chain_pem([cert]))
    cert_path.chmod(0o644)  # the CA certificate is what clients are given
    return key, cert


def load_combined_split(
    key_path: Path, cert_path: Path
) -> tuple[PrivateKeyTypes, x509.Certificate]:
    from .pem import load_key_and_chain

    key, chain = load_key_and_chain(key_path.read_bytes(), cert_path.read_bytes())
    return key, chain[0]


def ensure_certificate(
    directory: Path, hostnames: tuple[str, ...], now: datetime.datetime | None = None
) -> Path:
    """The ``<first hostname>.pem`` (key + leaf + CA) for all ``hostnames``, made if missing,
    expiring within 30 days, or not covering every name."""
    now = now or datetime.datetime.now(datetime.UTC)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    wanted = [h.lower() for h in hostnames]
    path = directory / f"{wanted[0].replace('*', '_wildcard_')}.pem"
    if path.exists():
        try:
            _, chain = load_combined(path)
            if (
                sorted(names_of(chain[0])) == sorted(wanted)
                and chain[0].not_valid_after_utc - now > RENEW_BEFORE
            ):
                return path
        except ValueError:
            pass  # unreadable: make a new one
    ca_key, ca_cert = _ca(directory, now)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = new_key()
    cert = sign_certificate(
        wanted[0],
        key.public_key(),
        ca_key,
        issuer=ca_cert.subject,
        not_before=now - datetime.timedelta(minutes=5),
        not_after=now + LEAF_LIFETIME,
        extensions=[
            (dns_names(wanted), False),
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False),
        ],
    )
    write_private(path, key_pem(key) + chain_pem([cert, ca_cert]))
    return path
