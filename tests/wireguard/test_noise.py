"""The Noise_IKpsk2 handshake (funnel_tw.wireguard.noise) against the cacophony vector."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.wireguard import crypto, noise

h = bytes.fromhex
VECTOR = json.loads((Path(__file__).parent / "noise_ikpsk2_vector.json").read_text())["vector"]


def _key(name: str) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(h(VECTOR[name]))


class _Lookup(noise.StaticLookup):
    def __init__(self, known: dict[bytes, bytes]) -> None:
        self.known = known
        self.asked: list[bytes] = []

    def static_static(self, remote_static: bytes) -> bytes | None:
        self.asked.append(remote_static)
        return self.known.get(remote_static)


class CacophonyVectorTests(SynchronousTestCase):
    """Drive both roles with the vector's keys, ephemerals, prologue, PSK and payloads."""

    def setUp(self) -> None:
        self.assertEqual(VECTOR["protocol_name"], "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s")
        self.init_static = _key("init_static")
        self.init_ephemeral = _key("init_ephemeral")
        self.resp_static = _key("resp_static")
        self.resp_ephemeral = _key("resp_ephemeral")
        self.init_public = crypto.public_key(self.init_static)
        self.resp_public = crypto.public_key(self.resp_static)
        self.assertEqual(self.resp_public, h(VECTOR["init_remote_static"]))
        self.prologue = h(VECTOR["init_prologue"])
        self.assertEqual(self.prologue, h(VECTOR["resp_prologue"]))
        self.init_psk = h(VECTOR["init_psks"][0])
        self.resp_psk = h(VECTOR["resp_psks"][0])
        self.messages = [(h(m["payload"]), h(m["ciphertext"])) for m in VECTOR["messages"]]

    def _handshake(
        self,
    ) -> tuple[noise.SealedInitiation, noise.OpenedInitiation, tuple[bytes, bytes, bytes, bytes]]:
        payload0, _ = self.messages[0]
        sealed = noise.initiation_seal(
            ephemeral=self.init_ephemeral,
            local_static=self.init_static,
            remote_static=self.resp_public,
            static_static=crypto.dh(self.init_static, self.resp_public),
            payload=payload0,
            prologue=self.prologue,
        )
        lookup = _Lookup({self.init_public: crypto.dh(self.resp_static, self.init_public)})
        opened = noise.initiation_open(
            local_static=self.resp_static,
            local_public=self.resp_public,
            ephemeral=sealed.ephemeral,
            encrypted_static=sealed.encrypted_static,
            encrypted_payload=sealed.encrypted_payload,
            lookup=lookup,
            prologue=self.prologue,
        )
        self.assertEqual(lookup.asked, [self.init_public])
        response = noise.response_seal(
            chain_key=opened.chain_key,
            hash_=opened.hash,
            ephemeral=self.resp_ephemeral,
            remote_ephemeral=opened.remote_ephemeral,
            remote_static=opened.remote_static,
            preshared_key=self.resp_psk,
            payload=self.messages[1][0],
        )
        return sealed, opened, response

    def test_message_0(self) -> None:
        payload, ciphertext = self.messages[0]
        sealed, opened, _ = self._handshake()
        self.assertEqual(
            sealed.ephemeral + sealed.encrypted_static + sealed.encrypted_payload, ciphertext
        )
        self.assertEqual(len(sealed.encrypted_static), 32 + 16)
        self.assertEqual(opened.payload, payload)
        self.assertEqual(opened.remote_static, self.init_public)
        self.assertEqual(opened.remote_ephemeral, crypto.public_key(self.init_ephemeral))
        # Both sides agree on the symmetric state after message 0.
        self.assertEqual(opened.chain_key, sealed.chain_key)
        self.assertEqual(opened.hash, sealed.hash)

    def test_message_1_and_handshake_hash(self) -> None:
        payload, ciphertext = self.messages[1]
        sealed, _, (e_pub, sealed_payload, resp_ck, resp_h) = self._handshake()
        self.assertEqual(e_pub + sealed_payload, ciphertext)
        opened_payload, init_ck, init_h = noise.response_open(
            chain_key=sealed.chain_key,
            hash_=sealed.hash,
            ephemeral=self.init_ephemeral,
            local_static=self.init_static,
            remote_ephemeral=e_pub,
            preshared_key=self.init_psk,
            sealed_payload=sealed_payload,
        )
        self.assertEqual(opened_payload, payload)
        self.assertEqual(init_ck, resp_ck)
        self.assertEqual(init_h, resp_h)
        self.assertEqual(init_h, h(VECTOR["handshake_hash"]))

    def test_transport_messages(self) -> None:
        _, _, (_, _, chain_key, _) = self._handshake()
        initiator_send, responder_send = noise.split(chain_key)
        self.assertNotEqual(initiator_send, responder_send)
        counters = {True: 0, False: 0}  # per direction; True: initiator -> responder
        for i, (payload, ciphertext) in enumerate(self.messages[2:]):
            from_initiator = i % 2 == 0
            key = initiator_send if from_initiator else responder_send
            n = counters[from_initiator]
            counters[from_initiator] += 1
            self.assertEqual(crypto.aead_seal(key, n, payload, b""), ciphertext, f"message {i + 2}")
            self.assertEqual(crypto.aead_open(key, n, ciphertext, b""), payload)
        self.assertEqual(counters, {True: 2, False: 2})

    def test_wrong_psk_fails_response(self) -> None:
        sealed, _, (e_pub, sealed_payload, _, _) = self._handshake()
        with self.assertRaises(noise.HandshakeError):
            noise.response_open(
                chain_key=sealed.chain_key,
                hash_=sealed.hash,
                ephemeral=self.init_ephemeral,
                local_static=self.init_static,
                remote_ephemeral=e_pub,
                preshared_key=bytes(32),
                sealed_payload=sealed_payload,
            )

    def test_wrong_prologue_fails(self) -> None:
        sealed, _, _ = self._handshake()
        lookup = _Lookup({self.init_public: crypto.dh(self.resp_static, self.init_public)})
        with self.assertRaises(noise.HandshakeError):
            noise.initiation_open(
                local_static=self.resp_static,
                local_public=self.resp_public,
                ephemeral=sealed.ephemeral,
                encrypted_static=sealed.encrypted_static,
                encrypted_payload=sealed.encrypted_payload,
                lookup=lookup,
            )  # default prologue: WireGuard's identifier, not the vector's


class HandshakeFailureTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.initiator = X25519PrivateKey.from_private_bytes(bytes([1]) * 32)
        self.responder = X25519PrivateKey.from_private_bytes(bytes([2]) * 32)
        self.init_public = crypto.public_key(self.initiator)
        self.resp_public = crypto.public_key(self.responder)
        self.sealed = noise.initiation_seal(
            ephemeral=X25519PrivateKey.from_private_bytes(bytes([3]) * 32),
            local_static=self.initiator,
            remote_static=self.resp_public,
            static_static=crypto.dh(self.initiator, self.resp_public),
            payload=noise.tai64n(1_700_000_000.0),
        )
        self.known = _Lookup({self.init_public: crypto.dh(self.responder, self.init_public)})

    def _open(
        self,
        *,
        ephemeral: bytes | None = None,
        encrypted_static: bytes | None = None,
        encrypted_payload: bytes | None = None,
        lookup: noise.StaticLookup | None = None,
    ) -> noise.OpenedInitiation:
        return noise.initiation_open(
            local_static=self.responder,
            local_public=self.resp_public,
            ephemeral=self.sealed.ephemeral if ephemeral is None else ephemeral,
            encrypted_static=(
                self.sealed.encrypted_static if encrypted_static is None else encrypted_static
            ),
            encrypted_payload=(
                self.sealed.encrypted_payload if encrypted_payload is None else encrypted_payload
            ),
            lookup=self.known if lookup is None else lookup,
        )

    def test_valid_initiation_opens(self) -> None:
        opened = self._open()
        self.assertEqual(opened.remote_static, self.init_public)
        self.assertEqual(opened.payload, noise.tai64n(1_700_000_000.0))

    def test_low_order_ephemeral_in_initiation(self) -> None:
        for point in (bytes(32), b"\x01" + bytes(31)):
            self.assertRaises(noise.HandshakeError, self._open, ephemeral=point)

    def test_low_order_ephemeral_in_response(self) -> None:
        with self.assertRaises(noise.HandshakeError):
            noise.response_open(
                chain_key=self.sealed.chain_key,
                hash_=self.sealed.hash,
                ephemeral=X25519PrivateKey.from_private_bytes(bytes([3]) * 32),
                local_static=self.initiator,
                remote_ephemeral=bytes(32),
                preshared_key=bytes(32),
                sealed_payload=bytes(16),
            )

    def test_unknown_static(self) -> None:
        stranger = _Lookup({})
        self.assertRaises(noise.HandshakeError, self._open, lookup=stranger)
        self.assertEqual(stranger.asked, [self.init_public])

    def test_tampered_fields(self) -> None:
        s = self.sealed.encrypted_static
        p = self.sealed.encrypted_payload
        self.assertRaises(
            noise.HandshakeError, self._open, encrypted_static=bytes([s[0] ^ 1]) + s[1:]
        )
        self.assertRaises(
            noise.HandshakeError, self._open, encrypted_payload=p[:-1] + bytes([p[-1] ^ 1])
        )
        other_e = crypto.public_key(X25519PrivateKey.from_private_bytes(bytes([4]) * 32))
        self.assertRaises(noise.HandshakeError, self._open, ephemeral=other_e)

    def test_wrong_responder_key(self) -> None:
        # The initiator thinks the responder is someone else: nothing decrypts.
        wrong = X25519PrivateKey.from_private_bytes(bytes([5]) * 32)
        with self.assertRaises(noise.HandshakeError):
            noise.initiation_open(
                local_static=wrong,
                local_public=crypto.public_key(wrong),
                ephemeral=self.sealed.ephemeral,
                encrypted_static=self.sealed.encrypted_static,
                encrypted_payload=self.sealed.encrypted_payload,
                lookup=self.known,
            )

    def test_handshake_clear_keeps_replay_state(self) -> None:
        hs = noise.Handshake()
        hs.state = noise.State.INITIATION_CREATED
        hs.chain_key = b"c" * 32
        hs.local_index = 7
        hs.last_timestamp = noise.tai64n(1_700_000_000.0)
        hs.last_initiation_consumption = 5.0
        hs.clear()
        self.assertIs(hs.state, noise.State.ZEROED)
        self.assertEqual((hs.chain_key, hs.local_index, hs.ephemeral), (b"", 0, None))
        self.assertEqual(hs.last_timestamp, noise.tai64n(1_700_000_000.0))
        self.assertEqual(hs.last_initiation_consumption, 5.0)


class TAI64NTests(SynchronousTestCase):
    def test_layout(self) -> None:
        stamp = noise.tai64n(0.0)
        self.assertEqual(len(stamp), 12)
        self.assertEqual(stamp, struct.pack(">QI", 0x400000000000000A, 0))
        self.assertEqual(noise.TAI64N_BASE, 0x400000000000000A)
        seconds, nanos = struct.unpack(">QI", noise.tai64n(1_700_000_000.5))
        self.assertEqual(seconds, 0x400000000000000A + 1_700_000_000)
        # Whitened: the low 24 bits of the nanoseconds are cleared.
        self.assertEqual(nanos & 0xFFFFFF, 0)
        self.assertEqual(nanos, 500_000_000 & ~0xFFFFFF)

    def test_big_endian_ordering(self) -> None:
        # Byte order equals time order: the responder compares stamps as bytes.
        self.assertLess(noise.tai64n(255.9), noise.tai64n(256.0))
        self.assertLess(noise.tai64n(1_700_000_000.0), noise.tai64n(1_700_000_001.0))

    def test_whitened_within_16ms(self) -> None:
        base = 1_700_000_000.0
        self.assertEqual(noise.tai64n(base), noise.tai64n(base + 0.010))
        self.assertLess(noise.tai64n(base), noise.tai64n(base + 0.020))

    @given(st.lists(st.integers(min_value=0, max_value=10**6), min_size=2, max_size=40))
    def test_monotonic(self, steps_us: list[int]) -> None:
        now = 1_600_000_000.0
        previous = noise.tai64n(now)
        for step in steps_us:
            now += step / 1e6
            stamp = noise.tai64n(now)
            self.assertGreaterEqual(stamp, previous)
            previous = stamp
