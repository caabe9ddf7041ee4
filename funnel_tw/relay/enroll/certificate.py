"""The enroll listener's certificate: self-signed, kept in state-dir, pinned by every token.

Nodes trust it through the pin in their token (the SHA-256 of its public key), not through a
CA, so it is made once and kept: a new key would invalidate every token given out. It is
renewed with the same key when it nears its end, which keeps the pin.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ...daemon.enroll import spki_pin
from ...tls.pem import PEMError, chain_pem, key_pem, load_combined, new_key, write_private
from ...tls.signing import sign_certificate

CERTIFICATE = "enroll.pem"
LIFETIME = datetime.timedelta(days=3650)
RENEW_BEFORE = datetime.timedelta(days=365)


def enroll_certificate(state_dir: Path, now: datetime.datetime | None = None) -> bytes:
    """The PEM (key and certificate) of the enroll listener, made or renewed as needed."""
    now = now or datetime.datetime.now(datetime.UTC)
    path = state_dir / CERTIFICATE
    key: ec.EllipticCurvePrivateKey | None = None
    if path.exists():
        try:
            loaded, chain = load_combined(path)
        except PEMError as e:
            raise PEMError(
                f"{path}: {e} (remove it to make a new one: invites are then void)"
            ) from None
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise PEMError(f"{path}: not an EC key")
        if chain[0].not_valid_after_utc - now > RENEW_BEFORE:
            return path.read_bytes()
        key = loaded
    key = key or new_key()
    cert = sign_certificate(
        "funnel-tw relay enroll",
        key.public_key(),
        key,
        not_before=now - datetime.timedelta(minutes=5),
        not_after=now + LIFETIME,
    )
    data = key_pem(key) + chain_pem([cert])
    write_private(path, data)
    return data


def pem_pin(pem: bytes) -> bytes:
    """The pin tokens carry for this PEM's certificate."""
    cert = x509.load_pem_x509_certificate(pem[pem.index(b"-----BEGIN CERTIFICATE-----") :])
    return spki_pin(cert.public_bytes(serialization.Encoding.DER))
