"""The primitives of Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s as WireGuard uses them.

Everything here is a thin, allocation-light wrapper over ``hashlib``, ``hmac`` and
``cryptography``. The one primitive those libraries lack, HChaCha20 (needed for the
XChaCha20-Poly1305 cookie replies), is written out in Python: cookie replies are rare and
rate-limited, so its cost (tens of microseconds) does not matter.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

__all__ = [
    "AEAD_TAG_SIZE",
    "CONSTRUCTION",
    "IDENTIFIER",
    "INITIAL_CHAIN_KEY",
    "INITIAL_HASH",
    "InvalidTag",
    "aead_open",
    "aead_seal",
    "dh",
    "hash_",
    "hchacha20",
    "kdf1",
    "kdf2",
    "kdf3",
    "mac",
    "mix_hash",
    "public_key",
    "xaead_open",
    "xaead_seal",
]

AEAD_TAG_SIZE = 16
CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"

_ZERO_NONCE = bytes(12)


def hash_(*parts: bytes) -> bytes:
    """BLAKE2s-256 of the concatenation of ``parts``."""
    h = hashlib.blake2s()
    for part in parts:
        h.update(part)
    return h.digest()


def mix_hash(h: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(h + data).digest()


def mac(key: bytes, data: bytes) -> bytes:
    """Keyed BLAKE2s-128, WireGuard's MAC (used for mac1, mac2 and cookies)."""
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "blake2s")


def kdf1(key: bytes, data: bytes) -> bytes:
    t0 = _hmac(key, data)
    return _hmac(t0, b"\x01")


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    t0 = _hmac(key, data)
    t1 = _hmac(t0, b"\x01")
    return t1, _hmac(t0, t1 + b"\x02")


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    t0 = _hmac(key, data)
    t1 = _hmac(t0, b"\x01")
    t2 = _hmac(t0, t1 + b"\x02")
    return t1, t2, _hmac(t0, t2 + b"\x03")


INITIAL_CHAIN_KEY = hash_(CONSTRUCTION)
INITIAL_HASH = hash_(INITIAL_CHAIN_KEY, IDENTIFIER)


def aead_seal(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    nonce = b"\x00\x00\x00\x00" + struct.pack("<Q", counter)
    return ChaCha20Poly1305(key).encrypt(nonce, plaintext, ad)


def aead_open(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
    """Decrypt and authenticate; raises :class:`InvalidTag` on any forgery."""
    nonce = b"\x00\x00\x00\x00" + struct.pack("<Q", counter)
    return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, ad)


def dh(private: X25519PrivateKey, public: bytes) -> bytes:
    """X25519; raises ValueError for a low-order public key (an all-zero shared secret)."""
    return private.exchange(X25519PublicKey.from_public_bytes(public))


def public_key(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes_raw()


# --- XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha) -------------------------------------------

_MASK32 = 0xFFFFFFFF
_SIGMA = struct.unpack("<4I", b"expand 32-byte k")


def _rotl(v: int, n: int) -> int:
    return ((v << n) & _MASK32) | (v >> (32 - n))


def _quarter(s: list[int], a: int, b: int, c: int, d: int) -> None:
    s[a] = (s[a] + s[b]) & _MASK32
    s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & _MASK32
    s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & _MASK32
    s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & _MASK32
    s[b] = _rotl(s[b] ^ s[c], 7)


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20: derive a subkey from a 256-bit key and the first 16 bytes of a nonce."""
    s = [*_SIGMA, *struct.unpack("<8I", key), *struct.unpack("<4I", nonce16)]
    for _ in range(10):
        _quarter(s, 0, 4, 8, 12)
        _quarter(s, 1, 5, 9, 13)
        _quarter(s, 2, 6, 10, 14)
        _quarter(s, 3, 7, 11, 15)
        _quarter(s, 0, 5, 10, 15)
        _quarter(s, 1, 6, 11, 12)
        _quarter(s, 2, 7, 8, 13)
        _quarter(s, 3, 4, 9, 14)
    return struct.pack("<8I", *s[0:4], *s[12:16])


def xaead_seal(key: bytes, nonce24: bytes, plaintext: bytes, ad: bytes) -> bytes:
    subkey = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(subkey).encrypt(b"\x00" * 4 + nonce24[16:], plaintext, ad)


def xaead_open(key: bytes, nonce24: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    subkey = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(subkey).decrypt(b"\x00" * 4 + nonce24[16:], ciphertext, ad)
