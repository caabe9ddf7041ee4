"""The enrollment token and the enroll protocol both sides share (no Twisted, no I/O).

A token is one opaque string, as kubeadm's ``--token`` plus ``--discovery-token-ca-cert-hash``
rolled into one::

    ftw1.<base64url: 32-byte secret | 32-byte SHA-256 pin | enroll address "host:port">

The pin is the SHA-256 of the relay enroll certificate's SubjectPublicKeyInfo: ``funnel-tw
join`` checks it after the TLS handshake and before it sends anything, so no CA is needed and
a man in the middle learns nothing. The relay keeps only the SHA-256 of the secret.

The protocol: ``POST /v0/enroll`` with a JSON body of at most :data:`MAX_REQUEST_BODY` bytes
(``secret``, the node's WireGuard ``public_key``, its ``peerapi_port``); the relay answers 200
with the enrollment (relay key, endpoint, networks; the node's name, addresses, hostnames) or
403/400 with ``{"error": REASON, "message": TEXT}``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = [
    "ENROLL_PATH",
    "MAX_REQUEST_BODY",
    "MAX_RESPONSE_BODY",
    "REFUSALS",
    "TOKEN_PREFIX",
    "Token",
    "TokenError",
    "new_secret",
    "parse_token",
    "pin_matches",
    "secret_hash",
    "spki_pin",
]

TOKEN_PREFIX = "ftw1."
SECRET_BYTES = 32
PIN_BYTES = 32
MAX_ADDRESS_BYTES = 262  # a 253-byte DNS name, ":", a port
MAX_TOKEN_CHARS = len(TOKEN_PREFIX) + (SECRET_BYTES + PIN_BYTES + MAX_ADDRESS_BYTES) * 4 // 3 + 4

ENROLL_PATH = "/v0/enroll"
# the relay's local API (funnel-tw invite, nodes, remove-node)
INVITE_PATH = "/v0/invite"
NODES_PATH = "/v0/nodes"
REMOVE_PATH = "/v0/remove-node"
MAX_REQUEST_BODY = 4096
MAX_RESPONSE_BODY = 64 << 10

# why the relay refuses an enrollment: the reason (error field, counter) -> its message
REFUSALS = {
    "bad_token": "the token is not known to this relay (mistyped, or revoked)",
    "expired_token": "the token has expired: ask for a new one (funnel-tw invite)",
    "used_token": "the token was already used (single-use): ask for a new one",
    "no_address_left": "node-addresses has no free address left",
    "bad_request": "the request is not a valid enrollment",
}


class TokenError(ValueError):
    """A string that is not a token; the message can be shown as is."""


@attrs.frozen
class Token:
    secret: bytes
    pin: bytes  # SHA-256 of the relay enroll certificate's SubjectPublicKeyInfo
    host: str
    port: int

    def text(self) -> str:
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        raw = self.secret + self.pin + address.encode()
        return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def new_secret() -> bytes:
    return os.urandom(SECRET_BYTES)


def secret_hash(secret: bytes) -> str:
    """What the relay stores of a secret (hex SHA-256): a leaked store admits no node."""
    return hashlib.sha256(b"funnel-tw enroll secret\0" + secret).hexdigest()


def spki_pin(certificate_der: bytes) -> bytes:
    """SHA-256 of the certificate's SubjectPublicKeyInfo (the key pinned, as kubeadm does)."""
    cert = x509.load_der_x509_certificate(certificate_der)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


def pin_matches(token: Token, certificate_der: bytes) -> bool:
    try:
        pin = spki_pin(certificate_der)
    except ValueError:
        return False
    return hmac.compare_digest(pin, token.pin)


def _address(raw: bytes) -> tuple[str, int]:
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise TokenError("not a funnel-tw token: its address is not text") from None
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    allowed = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:"
    if not sep or not host or any(c not in allowed for c in host):
        raise TokenError("not a funnel-tw token: its address is not HOST:PORT")
    if not port.isdigit() or len(port) > 5 or not 0 < int(port) < 65536:
        raise TokenError("not a funnel-tw token: its address has no valid port")
    return host, int(port)


def parse_token(text: str) -> Token:
    """The token in ``text`` (surrounding whitespace ignored); TokenError saying what is wrong."""
    text = text.strip()
    if len(text) > MAX_TOKEN_CHARS:
        raise TokenError("not a funnel-tw token: too long")
    if not text.startswith(TOKEN_PREFIX):
        raise TokenError(f"not a funnel-tw token: it does not start with {TOKEN_PREFIX!r}")
    body = text[len(TOKEN_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body.encode("ascii") + b"=" * (-len(body) % 4))
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise TokenError("not a funnel-tw token: it is not base64url (copied whole?)") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != body:
        raise TokenError("not a funnel-tw token: it is not base64url (copied whole?)")
    if len(raw) < SECRET_BYTES + PIN_BYTES + 3:
        raise TokenError("not a funnel-tw token: too short (copied whole?)")
    host, port = _address(raw[SECRET_BYTES + PIN_BYTES :])
    return Token(
        secret=raw[:SECRET_BYTES],
        pin=raw[SECRET_BYTES : SECRET_BYTES + PIN_BYTES],
        host=host,
        port=port,
    )
