"""Transport messages sealed and opened (funnel_tw.wireguard.transport_key), both
implementations (the C one on OpenSSL, the pure-Python one on ``cryptography``) against a
reference written from the protocol: header, little-endian counter, the packet zero-padded
to a multiple of 16 (never past the MTU) and sealed with ChaCha20-Poly1305 under the nonce
``0000 || counter``, no associated data."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from funnel_tw.wireguard.transport_key import PyTransportKey, TransportKeyType

HEADER = b"\x04\x00\x00\x00" + (0x01020304).to_bytes(4, "little")
KEY = bytes(range(32))


def reference_padding(size: int, mtu: int) -> int:
    """The padding by its definition: the smallest multiple of 16 at or above the packet's
    last MTU-sized piece, but not above the MTU."""
    if size == 0:
        return 0
    last = size if mtu == 0 or size <= mtu else size % mtu
    target = last
    while target % 16:
        target += 1
    if mtu:
        target = min(target, mtu)
    return target - last


def reference_seal(key: bytes, header: bytes, counter: int, packet: bytes, mtu: int) -> bytes:
    counter_le = counter.to_bytes(8, "little")
    plain = packet + bytes(reference_padding(len(packet), mtu))
    return header + counter_le + ChaCha20Poly1305(key).encrypt(bytes(4) + counter_le, plain, None)


def _c_key() -> Callable[[bytes], TransportKeyType] | None:
    try:
        from funnel_tw.wireguard._transport import TransportKey
    except ImportError:
        return None
    return TransportKey


def _require_c() -> Callable[[bytes], TransportKeyType]:
    """The C TransportKey; the test is skipped when it is not built (failed in CI, where
    FUNNEL_TW_REQUIRE_INTEROP=1)."""
    make = _c_key()
    if make is None:
        if os.environ.get("FUNNEL_TW_REQUIRE_INTEROP") == "1":
            raise AssertionError(
                "the C transport extension is not built (pip install -e . builds it; it needs "
                "OpenSSL's headers, Debian's libssl-dev)"
            )
        raise SkipTest("the C transport extension is not built")
    return make


#: every implementation on this machine: each test below runs on all of them
IMPLEMENTATIONS: list[Callable[[bytes], TransportKeyType]] = [PyTransportKey]
if (_c := _c_key()) is not None:
    IMPLEMENTATIONS.append(_c)


class TransportKeyTests(SynchronousTestCase):
    @given(
        key=st.binary(min_size=32, max_size=32),
        counter=st.integers(0, (1 << 64) - 1),
        packet=st.binary(max_size=3000),
        mtu=st.sampled_from([0, 1, 16, 17, 1280, 1420]) | st.integers(0, 3000),
    )
    def test_seal_matches_reference_and_opens(
        self, key: bytes, counter: int, packet: bytes, mtu: int
    ) -> None:
        expected = reference_seal(key, HEADER, counter, packet, mtu)
        for make in IMPLEMENTATIONS:
            sealed = make(key).seal(HEADER, counter, packet, mtu)
            self.assertEqual(sealed, expected)
            opened = make(key).open(sealed)
            self.assertEqual(opened, packet + bytes(reference_padding(len(packet), mtu)))

    @given(packet=st.binary(max_size=200), where=st.integers(8), bit=st.integers(0, 7))
    def test_any_flipped_bit_after_the_header_fails(
        self, packet: bytes, where: int, bit: int
    ) -> None:
        # the counter (the nonce), the ciphertext and the tag are all authenticated
        for make in IMPLEMENTATIONS:
            sealed = bytearray(make(KEY).seal(HEADER, 9, packet, 1280))
            sealed[8 + where % (len(sealed) - 8)] ^= 1 << bit
            self.assertIsNone(make(KEY).open(bytes(sealed)))

    @given(st.binary(max_size=2000))
    def test_hostile_bytes_never_raise(self, data: bytes) -> None:
        for make in IMPLEMENTATIONS:
            self.assertIsNone(make(KEY).open(data))

    def test_short_messages_are_none(self) -> None:
        for make in IMPLEMENTATIONS:
            sealed = make(KEY).seal(HEADER, 0, b"", 1280)  # a keepalive: 32 bytes
            self.assertEqual(len(sealed), 32)
            self.assertEqual(make(KEY).open(sealed), b"")
            for n in range(32):
                self.assertIsNone(make(KEY).open(sealed[:n]))

    def test_other_key_fails(self) -> None:
        for make in IMPLEMENTATIONS:
            sealed = make(KEY).seal(HEADER, 1, b"payload", 1280)
            self.assertIsNone(make(bytes(32)).open(sealed))

    def test_one_key_seals_and_opens_in_turn(self) -> None:
        # a key object keeps a cipher context per direction; interleaving must not mix them
        for make in IMPLEMENTATIONS:
            key = make(KEY)
            for counter in range(5):
                packet = b"x" * counter * 100
                sealed = key.seal(HEADER, counter, packet, 1280)
                self.assertEqual(sealed, reference_seal(KEY, HEADER, counter, packet, 1280))
                self.assertEqual(
                    key.open(sealed), packet + bytes(reference_padding(len(packet), 1280))
                )

    def test_bad_arguments(self) -> None:
        for make in IMPLEMENTATIONS:
            self.assertRaises(ValueError, make, bytes(31))
            self.assertRaises(ValueError, make, bytes(33))
            key = make(KEY)
            self.assertRaises(ValueError, key.seal, HEADER[:7], 0, b"", 1280)
            self.assertRaises(ValueError, key.seal, HEADER, 0, b"", -1)
            self.assertRaises(OverflowError, key.seal, HEADER, 1 << 64, b"", 1280)
            self.assertRaises(OverflowError, key.seal, HEADER, -1, b"", 1280)


class CTransportKeyTests(SynchronousTestCase):
    def test_keys_are_freed(self) -> None:
        # each key owns OpenSSL cipher contexts (outside Python's allocator): making and
        # dropping many must not grow the process
        make = _require_c()

        def rss() -> int:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

        def churn() -> None:
            for _ in range(20_000):
                key = make(KEY)
                key.open(key.seal(HEADER, 0, b"abc", 1280))

        churn()  # allocator warm-up
        before = rss()
        churn()
        churn()
        self.assertLess(rss() - before, 2 << 20)


class ImplementationTests(SynchronousTestCase):
    def _implementation(self, pure_python: bool) -> str:
        env = {k: v for k, v in os.environ.items() if k != "FUNNEL_TW_PURE_PYTHON"}
        if pure_python:
            env["FUNNEL_TW_PURE_PYTHON"] = "1"
        code = "from funnel_tw.wireguard import transport_key as t; print(t.IMPLEMENTATION)"
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()

    def test_pure_python_switch(self) -> None:
        self.assertEqual(self._implementation(True), "python (FUNNEL_TW_PURE_PYTHON=1)")

    def test_c_when_built(self) -> None:
        _require_c()
        self.assertTrue(self._implementation(False).startswith("C (OpenSSL "))
