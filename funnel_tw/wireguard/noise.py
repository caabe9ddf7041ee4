"""The Noise_IKpsk2 handshake as WireGuard runs it, both roles.

The four ``*_seal``/``*_open`` functions are the pure Noise message patterns, independent of
WireGuard's framing, so the public cacophony vector can drive them directly:

    initiation: -> e, es, s, ss, payload   (payload = TAI64N timestamp in WireGuard)
    response:   <- e, ee, se, psk, payload (payload = empty in WireGuard)

:class:`Handshake` holds one peer's handshake state between those steps.
"""

from __future__ import annotations

import enum
import struct

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from . import crypto
from .crypto import aead_open, aead_seal, kdf1, kdf2, kdf3, mix_hash

TAI64N_BASE = 0x400000000000000A
_WHITENER = 0xFFFFFF  # hide the low 24 bits of the nanoseconds (~16 ms) like wireguard-go


class HandshakeError(Exception):
    """A handshake message that does not authenticate or does not fit our state."""


def tai64n(now: float) -> bytes:
    """The 12-byte TAI64N label of ``now`` (seconds since the Unix epoch)."""
    seconds = int(now)
    nanos = int((now - seconds) * 1e9) & ~_WHITENER & 0xFFFFFFFF
    return struct.pack(">QI", TAI64N_BASE + seconds, nanos)


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return crypto.dh(private, public)
    except ValueError as e:  # a low-order point: the shared secret would be all zeros
        raise HandshakeError("invalid public key") from e


def _open(key: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    try:
        return aead_open(key, 0, ciphertext, ad)
    except crypto.InvalidTag as e:
        raise HandshakeError("decryption failed") from e


def initial_hash(responder_static: bytes, prologue: bytes = crypto.IDENTIFIER) -> bytes:
    chain = crypto.INITIAL_CHAIN_KEY
    return mix_hash(mix_hash(chain, prologue), responder_static)


class SealedInitiation:
    __slots__ = ("chain_key", "encrypted_payload", "encrypted_static", "ephemeral", "hash")

    def __init__(
        self,
        ephemeral: bytes,
        encrypted_static: bytes,
        encrypted_payload: bytes,
        chain_key: bytes,
        hash_: bytes,
    ) -> None:
        self.ephemeral = ephemeral
        self.encrypted_static = encrypted_static
        self.encrypted_payload = encrypted_payload
        self.chain_key = chain_key
        self.hash = hash_


def initiation_seal(
    *,
    ephemeral: X25519PrivateKey,
    local_static: X25519PrivateKey,
    remote_static: bytes,
    static_static: bytes,
    payload: bytes,
    prologue: bytes = crypto.IDENTIFIER,
) -> SealedInitiation:
    """Initiator: write ``e, es, s, ss, payload``; ``static_static`` is DH(s, rs), precomputed."""
    h = initial_hash(remote_static, prologue)
    e_pub = crypto.public_key(ephemeral)
    ck = kdf1(crypto.INITIAL_CHAIN_KEY, e_pub)
    h = mix_hash(h, e_pub)
    ck, key = kdf2(ck, _dh(ephemeral, remote_static))
    enc_static = aead_seal(key, 0, crypto.public_key(local_static), h)
    h = mix_hash(h, enc_static)
    ck, key = kdf2(ck, static_static)
    enc_payload = aead_seal(key, 0, payload, h)
    h = mix_hash(h, enc_payload)
    return SealedInitiation(e_pub, enc_static, enc_payload, ck, h)


class OpenedInitiation:
    __slots__ = ("chain_key", "hash", "payload", "remote_ephemeral", "remote_static")

    def __init__(
        self,
        remote_static: bytes,
        remote_ephemeral: bytes,
        payload: bytes,
        chain_key: bytes,
        hash_: bytes,
    ) -> None:
        self.remote_static = remote_static
        self.remote_ephemeral = remote_ephemeral
        self.payload = payload
        self.chain_key = chain_key
        self.hash = hash_


class StaticLookup:
    """What the responder needs to know of an initiator once its static key is decrypted."""

    def static_static(self, remote_static: bytes) -> bytes | None:
        """DH(local static, ``remote_static``), or None for an unknown initiator."""
        raise NotImplementedError


def initiation_open(
    *,
    local_static: X25519PrivateKey,
    local_public: bytes,
    ephemeral: bytes,
    encrypted_static: bytes,
    encrypted_payload: bytes,
    lookup: StaticLookup,
    prologue: bytes = crypto.IDENTIFIER,
) -> OpenedInitiation:
    """Responder: read ``e, es, s, ss, payload``; raises HandshakeError."""
    h = initial_hash(local_public, prologue)
    h = mix_hash(h, ephemeral)
    ck = kdf1(crypto.INITIAL_CHAIN_KEY, ephemeral)
    ck, key = kdf2(ck, _dh(local_static, ephemeral))
    remote_static = _open(key, encrypted_static, h)
    h = mix_hash(h, encrypted_static)
    ss = lookup.static_static(remote_static)
    if ss is None:
        raise HandshakeError("unknown peer")
    ck, key = kdf2(ck, ss)
    payload = _open(key, encrypted_payload, h)
    h = mix_hash(h, encrypted_payload)
    return OpenedInitiation(remote_static, ephemeral, payload, ck, h)


def response_seal(
    *,
    chain_key: bytes,
    hash_: bytes,
    ephemeral: X25519PrivateKey,
    remote_ephemeral: bytes,
    remote_static: bytes,
    preshared_key: bytes,
    payload: bytes = b"",
) -> tuple[bytes, bytes, bytes, bytes]:
    """Responder: write ``e, ee, se, psk, payload``; returns (e, sealed payload, ck, h)."""
    e_pub = crypto.public_key(ephemeral)
    h = mix_hash(hash_, e_pub)
    ck = kdf1(chain_key, e_pub)
    ck = kdf1(ck, _dh(ephemeral, remote_ephemeral))
    ck = kdf1(ck, _dh(ephemeral, remote_static))
    ck, tau, key = kdf3(ck, preshared_key)
    h = mix_hash(h, tau)
    sealed = aead_seal(key, 0, payload, h)
    h = mix_hash(h, sealed)
    return e_pub, sealed, ck, h


def response_open(
    *,
    chain_key: bytes,
    hash_: bytes,
    ephemeral: X25519PrivateKey,
    local_static: X25519PrivateKey,
    remote_ephemeral: bytes,
    preshared_key: bytes,
    sealed_payload: bytes,
) -> tuple[bytes, bytes, bytes]:
    """Initiator: read ``e, ee, se, psk, payload``; returns (payload, ck, h)."""
    h = mix_hash(hash_, remote_ephemeral)
    ck = kdf1(chain_key, remote_ephemeral)
    ck = kdf1(ck, _dh(ephemeral, remote_ephemeral))
    ck = kdf1(ck, _dh(local_static, remote_ephemeral))
    ck, tau, key = kdf3(ck, preshared_key)
    h = mix_hash(h, tau)
    payload = _open(key, sealed_payload, h)
    h = mix_hash(h, sealed_payload)
    return payload, ck, h


def split(chain_key: bytes) -> tuple[bytes, bytes]:
    """(initiator-to-responder key, responder-to-initiator key)."""
    return kdf2(chain_key, b"")


class State(enum.Enum):
    ZEROED = 0
    INITIATION_CREATED = 1
    INITIATION_CONSUMED = 2
    RESPONSE_CREATED = 3
    RESPONSE_CONSUMED = 4


class Handshake:
    """One peer's handshake in progress, plus the replay state that outlives it."""

    __slots__ = (
        "chain_key",
        "ephemeral",
        "hash",
        "last_initiation_consumption",
        "last_timestamp",
        "local_index",
        "remote_ephemeral",
        "remote_index",
        "state",
    )

    def __init__(self) -> None:
        self.state = State.ZEROED
        self.chain_key = b""
        self.hash = b""
        self.ephemeral: X25519PrivateKey | None = None
        self.remote_ephemeral = b""
        self.local_index = 0
        self.remote_index = 0
        self.last_timestamp = bytes(12)
        self.last_initiation_consumption = float("-inf")

    def clear(self) -> None:
        """Forget the session secrets (the replay state stays)."""
        self.state = State.ZEROED
        self.chain_key = b""
        self.hash = b""
        self.ephemeral = None
        self.remote_ephemeral = b""
        self.local_index = 0
        self.remote_index = 0
