"""Known-answer tests for the WireGuard primitives (funnel_tw.wireguard.crypto)."""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given
from hypothesis import strategies as st
from nacl import bindings
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.wireguard import crypto

h = bytes.fromhex

SUNSCREEN = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for "
    b"the future, sunscreen would be it."
)
KEY_80_9F = bytes(range(0x80, 0xA0))
AAD = h("50515253c0c1c2c3c4c5c6c7")

# RFC 8439 section 2.8.2
RFC8439_NONCE = h("070000004041424344454647")
RFC8439_CIPHERTEXT = h(
    "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
    "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
    "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
    "3ff4def08e4b7a9de576d26586cec64b6116"
)
RFC8439_TAG = h("1ae10b594f09e26a7e902ecbd0600691")

# draft-irtf-cfrg-xchacha-03 section 2.2.1 and A.3.1
HCHACHA_KEY = bytes(range(32))
HCHACHA_NONCE = h("000000090000004a0000000031415927")
HCHACHA_SUBKEY = h("82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc")
XCHACHA_NONCE = bytes(range(0x40, 0x58))
XCHACHA_CIPHERTEXT = h(
    "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
    "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
    "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
    "21f9664c97637da9768812f615c68b13b52e"
)
XCHACHA_TAG = h("c0875924c1c7987947deafd8780acf49")

# wireguard-go device/kdf_test.go: (key, input, t0, t1, t2)
KDF_VECTORS: list[tuple[bytes, bytes, bytes, bytes, bytes]] = [
    (
        h("746573742d6b6579"),
        h("746573742d696e707574"),
        h("6f0e5ad38daba1bea8a0d213688736f19763239305e0f58aba697f9ffc41c633"),
        h("df1194df20802a4fe594cde27e92991c8cae66c366e8106aaa937a55fa371e8a"),
        h("fac6e2745a325f5dc5d11a5b165aad08b0ada28e7b4e666b7c077934a4d76c24"),
    ),
    (
        h("776972656775617264"),
        h("776972656775617264"),  # kdf_test.go: the input is "wireguard" too
        h("491d43bbfdaa8750aaf535e334ecbfe5129967cd64635101c566d4caefda96e8"),
        h("1e71a379baefd8a79aa4662212fcafe19a23e2b609a3db7d6bcba8f560e3d25f"),
        h("31e1ae48bddfbe5de38f295e5452b1909a1b4e38e183926af3780b0c1e1f0160"),
    ),
    (
        b"",
        b"",
        h("8387b46bf43eccfcf349552a095d8315c4055beb90208fb1be23b894bc2ed5d0"),
        h("58a0e5f6faefccf4807bff1f05fa8a9217945762040bcec2f4b4a62bdfe0e86e"),
        h("0ce6ea98ec548f8e281e93e32db65621c45eb18dc6f0a7ad94178610a2f7338e"),
    ),
]


class ConstantsTests(SynchronousTestCase):
    def test_initial_chain_key(self) -> None:
        self.assertEqual(
            crypto.INITIAL_CHAIN_KEY,
            h("60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36"),
        )

    def test_initial_hash(self) -> None:
        # HASH(chaining key || "WireGuard v1 zx2c4 Jason@zx2c4.com"), as in wireguard-go.
        self.assertEqual(
            crypto.INITIAL_HASH,
            h("2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3"),
        )

    def test_names(self) -> None:
        self.assertEqual(crypto.CONSTRUCTION, b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s")
        self.assertEqual(crypto.IDENTIFIER, b"WireGuard v1 zx2c4 Jason@zx2c4.com")


class HashTests(SynchronousTestCase):
    def test_blake2s_abc(self) -> None:
        # RFC 7693 appendix B
        self.assertEqual(
            crypto.hash_(b"abc"),
            h("508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982"),
        )

    def test_hash_concatenates_parts(self) -> None:
        self.assertEqual(crypto.hash_(b"a", b"bc"), crypto.hash_(b"abc"))
        self.assertEqual(crypto.mix_hash(b"ab", b"c"), crypto.hash_(b"abc"))

    def test_mac_is_keyed_blake2s_128(self) -> None:
        key = bytes(range(32))
        tag = crypto.mac(key, b"message")
        self.assertEqual(len(tag), 16)
        self.assertEqual(tag, hashlib.blake2s(b"message", key=key, digest_size=16).digest())
        self.assertNotEqual(tag, crypto.mac(bytes(32), b"message"))
        # Not a truncation of the 32-byte keyed hash: the digest size is part of the parameters.
        self.assertNotEqual(tag, hashlib.blake2s(b"message", key=key).digest()[:16])


class KDFTests(SynchronousTestCase):
    def test_wireguard_go_vectors(self) -> None:
        for key, data, t0, t1, t2 in KDF_VECTORS:
            self.assertEqual(crypto.kdf1(key, data), t0)
            self.assertEqual(crypto.kdf2(key, data), (t0, t1))
            self.assertEqual(crypto.kdf3(key, data), (t0, t1, t2))

    def test_kdf_is_hkdf_with_hmac_blake2s(self) -> None:
        key, data = b"k" * 32, b"input"
        prk = hmac.digest(key, data, "blake2s")
        t1 = hmac.digest(prk, b"\x01", "blake2s")
        self.assertEqual(crypto.kdf1(key, data), t1)


class AEADTests(SynchronousTestCase):
    def test_rfc8439_chacha20poly1305(self) -> None:
        # The primitive aead_seal wraps, with the RFC's own nonce layout.
        sealed = ChaCha20Poly1305(KEY_80_9F).encrypt(RFC8439_NONCE, SUNSCREEN, AAD)
        self.assertEqual(sealed, RFC8439_CIPHERTEXT + RFC8439_TAG)

    def test_wireguard_nonce_layout(self) -> None:
        # nonce = 4 zero bytes + little-endian u64 counter; checked against libsodium.
        key = bytes(range(32))
        for counter in (0, 1, 0x0102030405060708, (1 << 64) - 1):
            nonce = bytes(4) + counter.to_bytes(8, "little")
            expected = bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
                SUNSCREEN, AAD, nonce, key
            )
            self.assertEqual(crypto.aead_seal(key, counter, SUNSCREEN, AAD), expected)
            self.assertEqual(crypto.aead_open(key, counter, expected, AAD), SUNSCREEN)

    def test_empty_plaintext_is_a_bare_tag(self) -> None:
        sealed = crypto.aead_seal(bytes(32), 0, b"", b"")
        self.assertEqual(len(sealed), crypto.AEAD_TAG_SIZE)
        self.assertEqual(crypto.aead_open(bytes(32), 0, sealed, b""), b"")

    def test_tampering_raises_invalid_tag(self) -> None:
        key = bytes(range(32))
        sealed = crypto.aead_seal(key, 7, SUNSCREEN, AAD)
        tampered_tag = sealed[:-1] + bytes([sealed[-1] ^ 1])
        tampered_body = bytes([sealed[0] ^ 0x80]) + sealed[1:]
        self.assertRaises(crypto.InvalidTag, crypto.aead_open, key, 7, tampered_tag, AAD)
        self.assertRaises(crypto.InvalidTag, crypto.aead_open, key, 7, tampered_body, AAD)
        self.assertRaises(crypto.InvalidTag, crypto.aead_open, key, 8, sealed, AAD)
        self.assertRaises(crypto.InvalidTag, crypto.aead_open, key, 7, sealed, AAD + b"x")
        self.assertRaises(crypto.InvalidTag, crypto.aead_open, bytes(32), 7, sealed, AAD)


class XChaChaTests(SynchronousTestCase):
    def test_hchacha20_vector(self) -> None:
        self.assertEqual(crypto.hchacha20(HCHACHA_KEY, HCHACHA_NONCE), HCHACHA_SUBKEY)

    def test_xchacha20poly1305_vector(self) -> None:
        sealed = crypto.xaead_seal(KEY_80_9F, XCHACHA_NONCE, SUNSCREEN, AAD)
        self.assertEqual(sealed, XCHACHA_CIPHERTEXT + XCHACHA_TAG)
        self.assertEqual(crypto.xaead_open(KEY_80_9F, XCHACHA_NONCE, sealed, AAD), SUNSCREEN)

    def test_xchacha_tampered_tag(self) -> None:
        bad = XCHACHA_CIPHERTEXT + XCHACHA_TAG[:-1] + bytes([XCHACHA_TAG[-1] ^ 0x01])
        self.assertRaises(crypto.InvalidTag, crypto.xaead_open, KEY_80_9F, XCHACHA_NONCE, bad, AAD)
        good = XCHACHA_CIPHERTEXT + XCHACHA_TAG
        other_nonce = XCHACHA_NONCE[:-1] + b"\x00"
        self.assertRaises(crypto.InvalidTag, crypto.xaead_open, KEY_80_9F, other_nonce, good, AAD)
        # The first 16 nonce bytes feed HChaCha20: changing them must change the subkey.
        other_prefix = b"\x00" + XCHACHA_NONCE[1:]
        self.assertRaises(crypto.InvalidTag, crypto.xaead_open, KEY_80_9F, other_prefix, good, AAD)

    @given(
        key=st.binary(min_size=32, max_size=32),
        nonce=st.binary(min_size=24, max_size=24),
        plaintext=st.binary(max_size=64),
        ad=st.binary(max_size=32),
    )
    def test_xchacha_matches_libsodium(
        self, key: bytes, nonce: bytes, plaintext: bytes, ad: bytes
    ) -> None:
        expected = bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key)
        self.assertEqual(crypto.xaead_seal(key, nonce, plaintext, ad), expected)


class DHTests(SynchronousTestCase):
    def test_rfc7748_vector(self) -> None:
        alice = X25519PrivateKey.from_private_bytes(
            h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
        )
        bob_public = h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
        self.assertEqual(
            crypto.public_key(alice),
            h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"),
        )
        self.assertEqual(
            crypto.dh(alice, bob_public),
            h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"),
        )

    def test_low_order_point_raises(self) -> None:
        private = X25519PrivateKey.from_private_bytes(bytes(range(32)))
        self.assertRaises(ValueError, crypto.dh, private, bytes(32))
        self.assertRaises(ValueError, crypto.dh, private, b"\x01" + bytes(31))
