"""The one place the node fills in an ``x509.CertificateBuilder``.

The node makes certificates itself in two places, the local CA and its leaves
(``self-signed`` source) and the tls-alpn-01 answer; they differ only in names, dates, keys
and extensions, which are the arguments here.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

#: an extension and whether it is critical
Extension = tuple[x509.ExtensionType, bool]


def common_name(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def dns_names(names: Iterable[str]) -> x509.SubjectAlternativeName:
    return x509.SubjectAlternativeName([x509.DNSName(n) for n in names])


def sign_certificate(
    subject: str,
    public_key: ec.EllipticCurvePublicKey,
    signing_key: ec.EllipticCurvePrivateKey,
    *,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    issuer: x509.Name | None = None,
    extensions: Sequence[Extension] = (),
) -> x509.Certificate:
    """A certificate for ``subject`` (its common name) signed with ``signing_key`` (SHA-256), by
    ``issuer``, or self-signed when there is none; a random serial number."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(common_name(subject))
        .issuer_name(issuer or common_name(subject))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signing_key, hashes.SHA256())
