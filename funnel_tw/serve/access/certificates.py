"""client-ca-file: a client certificate verified against one policy's CAs, its subject CN the
identity (Remote-User). OpenSSL's own chain verification (through pyOpenSSL), not hand-made:
device certificates often carry only a CN, which cryptography's web-PKI client verifier refuses.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID
from OpenSSL import crypto

from ...config.access import read_ca_file

__all__ = ["ClientCA", "common_name"]


def common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else None
    return value if isinstance(value, str) else None


class ClientCA:
    def __init__(self, file: Path) -> None:
        self.file = file
        self.store = crypto.X509Store()
        for cert in read_ca_file(file):
            self.store.add_cert(crypto.X509.from_cryptography(cert))

    def verify(self, leaf: x509.Certificate, chain: Sequence[x509.Certificate]) -> str | None:
        """The reason it is refused, or None: signed by one of the CAs, in its validity."""
        context = crypto.X509StoreContext(
            self.store,
            crypto.X509.from_cryptography(leaf),
            [crypto.X509.from_cryptography(c) for c in chain if c != leaf],
        )
        try:
            context.verify_certificate()
        except crypto.X509StoreContextError as e:
            return f"client_certificate_invalid ({e})"
        return None
