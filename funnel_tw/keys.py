"""WireGuard key helpers, byte-for-byte compatible with `wg genkey`, `wg pubkey` and `wg genpsk`.

Keys travel as standard base64 of 32 bytes (44 characters ending in "="), the form wg-quick
files and `wg show` use, so keys can be moved between funnel-tw and the reference tools.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

KEY_LENGTH = 32
ENCODED_KEY_LENGTH = 44


def generate_private_key() -> bytes:
    """A new Curve25519 private key, clamped as `wg genkey` does, so both tools emit one form."""
    key = bytearray(os.urandom(KEY_LENGTH))
    key[0] &= 248
    key[31] = (key[31] & 127) | 64
    return bytes(key)


def generate_preshared_key() -> bytes:
    """32 random bytes, like `wg genpsk` (a preshared key is not a curve point, so no clamping)."""
    return os.urandom(KEY_LENGTH)


def public_key(private: bytes) -> bytes:
    """The X25519 public key of `private` (X25519 clamps unclamped input itself, as wg does)."""
    if len(private) != KEY_LENGTH:
        raise ValueError(f"a private key is {KEY_LENGTH} bytes, got {len(private)}")
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def encode_key(key: bytes) -> str:
    """Standard base64 of a 32-byte key: the only text form wg accepts."""
    if len(key) != KEY_LENGTH:
        raise ValueError(f"a key is {KEY_LENGTH} bytes, got {len(key)}")
    return base64.b64encode(key).decode("ascii")


def decode_key(text: str) -> bytes:
    """Parse a key as strictly as wg does: 44 base64 characters, canonical, 32 bytes.

    Raises ValueError with a message that can be shown to the user as is.
    """
    if len(text) != ENCODED_KEY_LENGTH or not text.endswith("=") or text.endswith("=="):
        raise ValueError(
            f"not a valid key: expected {ENCODED_KEY_LENGTH} characters of base64"
            f" ending in one '=' (a {KEY_LENGTH}-byte key), got {len(text)} characters"
        )
    try:
        key = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise ValueError("not a valid key: it is not base64") from None
    # Python ignores set padding bits; wg refuses them, and so do we, so a key has one spelling.
    if len(key) != KEY_LENGTH or base64.b64encode(key).decode("ascii") != text:
        raise ValueError("not a valid key: it is not canonical base64 of 32 bytes")
    return key
