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

from funnel_tw.wireguard.replay import PyReplayFilter
from funnel_tw.wireguard.transport_key import PyTransportKey, ReplayFilterType, TransportKeyType

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


def _c_window() -> ReplayFilterType:
    from funnel_tw.wireguard._transport import ReplayFilter

    return ReplayFilter()


#: every implementation on this machine: each test below runs on all of them
IMPLEMENTATIONS: list[Callable[[bytes], TransportKeyType]] = [PyTransportKey]
#: the same, each with the replay window its open_run takes
FILTERED: list[tuple[Callable[[bytes], TransportKeyType], Callable[[], ReplayFilterType]]] = [
    (PyTransportKey, PyReplayFilter)
]
if (_c := _c_key()) is not None:
    IMPLEMENTATIONS.append(_c)
    FILTERED.append((_c, _c_window))


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

    @given(
        counter=st.integers(0, (1 << 64) - 100),
        packets=st.lists(st.binary(min_size=1, max_size=1500), max_size=20),
        mtu=st.sampled_from([0, 1280, 1420]) | st.integers(1, 1500),
    )
    def test_seal_run_is_seal_one_by_one(
        self, counter: int, packets: list[bytes], mtu: int
    ) -> None:
        endpoint = ("192.0.2.1", 51820)
        expected = [reference_seal(KEY, HEADER, counter + i, p, mtu) for i, p in enumerate(packets)]
        for make in IMPLEMENTATIONS:
            out: list[tuple[bytes, object]] = [(b"before", None)]
            total = make(KEY).seal_run(HEADER, counter, packets, mtu, endpoint, out)
            self.assertEqual(out, [(b"before", None)] + [(m, endpoint) for m in expected])
            self.assertEqual(total, sum(len(m) for m in expected))

    def test_seal_run_refuses_an_empty_packet_whole(self) -> None:
        for make in IMPLEMENTATIONS:
            out: list[tuple[bytes, object]] = []
            with self.assertRaises(ValueError):
                make(KEY).seal_run(HEADER, 0, [b"a", b"", b"c"], 1280, None, out)
            self.assertEqual(out, [])

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


# --- open_run: the receive path's loop over one keypair's datagrams -------------------------

RECEIVER = 0x01020304
LIMIT = 1000
SOURCES = [("192.0.2.1", 51820), ("192.0.2.2", 4242)]


def inner_v4(source: bytes, payload: bytes, total: int | None = None) -> bytes:
    size = 20 + len(payload)
    head = bytes([0x45, 0]) + (size if total is None else total).to_bytes(2, "big")
    return head + bytes(8) + source + bytes([10, 0, 0, 9]) + payload


def inner_v6(source: bytes, payload: bytes) -> bytes:
    head = bytes([0x60, 0, 0, 0]) + len(payload).to_bytes(2, "big") + bytes([6, 64])
    return head + source + bytes(16) + payload


#: one datagram of a generated batch: (kind, counter, a choice, payload); the kinds that end
#: a run are rarer, so that runs are long
_DATAGRAM = st.tuples(
    st.sampled_from(
        ["v4"] * 6
        + ["v6"] * 2
        + ["keepalive", "forged", "bad_version", "bad_total", "bad_total"] * 2
        + ["other_receiver", "over_limit", "handshake", "short"]
    ),
    st.integers(0, 40),
    st.integers(0, 1),
    st.binary(max_size=64),
)


def make_batch(
    kinds: list[tuple[str, int, int, bytes]],
) -> list[tuple[bytes, tuple[str, int]]]:
    """Datagrams sealed with KEY for RECEIVER (counters repeat: replays), of every kind
    open_run takes, refuses or stops at."""
    key = PyTransportKey(KEY)
    header = b"\x04\x00\x00\x00" + RECEIVER.to_bytes(4, "little")
    batch = []
    for kind, counter, choice, payload in kinds:
        v4 = bytes([10, 0, 0, 1 + choice])
        if kind == "v4":
            message = key.seal(header, counter, inner_v4(v4, payload), 1280)
        elif kind == "v6":
            message = key.seal(header, counter, inner_v6(bytes(15) + v4[-1:], payload), 1280)
        elif kind == "keepalive":
            message = key.seal(header, counter, b"", 1280)
        elif kind == "forged":
            sealed = bytearray(key.seal(header, counter, inner_v4(v4, payload), 1280))
            sealed[-1] ^= 1
            message = bytes(sealed)
        elif kind == "bad_version":
            message = key.seal(header, counter, b"\x50" + payload + bytes(40), 1280)
        elif kind == "bad_total":
            total = 19 if choice else 20 + len(payload) + 17  # below 20, or past the end
            message = key.seal(header, counter, inner_v4(v4, payload, total), 0)
        elif kind == "other_receiver":
            message = key.seal(b"\x04\x00\x00\x00" + bytes(4), counter, b"", 1280)
        elif kind == "over_limit":
            message = key.seal(header, LIMIT + counter, b"", 1280)
        elif kind == "handshake":
            message = b"\x01\x00\x00\x00" + bytes(144)
        else:
            message = header + bytes(8 + choice)
        batch.append((message, SOURCES[choice]))
    return batch


def reference_run(
    batch: list[tuple[bytes, tuple[str, int]]], start: int, stop: int
) -> tuple[object, ...]:
    """What open_run answers, written datagram by datagram from its contract."""
    key = PyTransportKey(KEY)
    seen: set[int] = set()  # counters here stay far inside the replay window
    packets: list[bytes] = []
    authenticated = data = size = failed = replayed = bad = 0
    source = address = None
    addresses = set()
    i = start
    while i < min(stop, len(batch)):
        message, origin = batch[i]
        if (
            len(message) < 32
            or message[:4] != b"\x04\x00\x00\x00"
            or int.from_bytes(message[4:8], "little") != RECEIVER
            or int.from_bytes(message[8:16], "little") >= LIMIT
        ):
            break
        i += 1
        plain = key.open(message)
        if plain is None:
            failed += 1
            continue
        counter = int.from_bytes(message[8:16], "little")
        if counter in seen:
            replayed += 1
            continue
        seen.add(counter)
        authenticated += 1
        size += len(message)
        source = origin
        if not plain:
            continue
        data += 1
        if plain[0] >> 4 == 4 and len(plain) >= 20:
            total, inner = int.from_bytes(plain[2:4], "big"), plain[12:16]
        elif plain[0] >> 4 == 6 and len(plain) >= 40:
            total, inner = 40 + int.from_bytes(plain[4:6], "big"), plain[8:24]
        else:
            bad += 1
            continue
        if not 20 <= total <= len(plain):
            bad += 1
            continue
        address = address or inner
        addresses.add(inner)
        packets.append(plain[:total])
    return (
        i,
        packets,
        authenticated,
        data,
        size,
        source,
        address,
        len(addresses) <= 1,
        failed,
        replayed,
        bad,
    )


class OpenRunTests(SynchronousTestCase):
    @given(
        kinds=st.lists(_DATAGRAM, max_size=30),
        start=st.integers(0, 3),
        stop=st.just(1000) | st.integers(0, 30),
    )
    def test_matches_the_datagram_by_datagram_reference(
        self, kinds: list[tuple[str, int, int, bytes]], start: int, stop: int
    ) -> None:
        batch = make_batch(kinds)
        expected = reference_run(batch, start, stop)
        for make, replay in FILTERED:
            got = make(KEY).open_run(batch, start, stop, RECEIVER, replay(), LIMIT)
            self.assertEqual(got, expected)

    def test_a_run_of_one_keypair_in_one_call(self) -> None:
        # 50 packets from one inner address, then a handshake message: the run stops there
        batch = make_batch([("v4", n, 0, b"x" * n) for n in range(50)] + [("handshake", 0, 0, b"")])
        for make, replay in FILTERED:
            end, packets, authenticated, data, size, source, address, uniform, *drops = make(
                KEY
            ).open_run(batch, 0, len(batch), RECEIVER, replay(), LIMIT)
            self.assertEqual((end, authenticated, data, drops), (50, 50, 50, [0, 0, 0]))
            self.assertEqual(packets, [inner_v4(bytes([10, 0, 0, 1]), b"x" * n) for n in range(50)])
            self.assertEqual((source, address, uniform), (SOURCES[0], bytes([10, 0, 0, 1]), True))
            self.assertEqual(size, sum(len(m) for m, _ in batch[:50]))

    def test_the_window_outlives_the_run(self) -> None:
        # the replay window is the keypair's: a counter seen in one run is a replay in the next
        batch = make_batch([("v4", 7, 0, b"a")])
        for make, replay in FILTERED:
            key, window = make(KEY), replay()
            self.assertEqual(key.open_run(batch, 0, 1, RECEIVER, window, LIMIT)[2], 1)
            again = key.open_run(batch, 0, 1, RECEIVER, window, LIMIT)
            self.assertEqual((again[0], again[2], again[9]), (1, 0, 1))
            self.assertFalse(window.validate(7, LIMIT))

    def test_the_c_key_takes_only_its_own_window(self) -> None:
        make = _require_c()
        batch = make_batch([("v4", 1, 0, b"a")])
        self.assertRaises(
            TypeError, make(KEY).open_run, batch, 0, 1, RECEIVER, PyReplayFilter(), LIMIT
        )
        self.assertRaises(TypeError, make(KEY).open_run, 5, 0, 1, RECEIVER, _c_window(), LIMIT)

    def test_inner_framing_at_its_bounds(self) -> None:
        # plaintexts sealed unpadded (mtu 1: lengths as given), each right at a bound
        header = b"\x04\x00\x00\x00" + RECEIVER.to_bytes(4, "little")
        source = bytes([10, 0, 0, 1])
        cases = [
            (inner_v4(source, b"p" * 12), True),  # total == length: taken
            (inner_v4(source, b"p" * 12, 33), False),  # one past the end
            (inner_v4(source, b"p" * 12, 20), True),  # the header alone: cut to it
            (inner_v4(source, b"p" * 12, 19), False),  # shorter than a header
            (inner_v4(source, b"")[:19], False),  # a v4 header cut short
            (inner_v6(bytes(16), b"p" * 8), True),
            (inner_v6(bytes(16), b"p" * 8)[:39], False),  # a v6 header cut short
            (inner_v6(bytes(16), b"p" * 8)[:47], False),  # payload length past the end
        ]
        for make, replay in FILTERED:
            key = PyTransportKey(KEY)
            for counter, (plain, taken) in enumerate(cases):
                batch = [(key.seal(header, counter, plain, 1), SOURCES[0])]
                got = make(KEY).open_run(batch, 0, 1, RECEIVER, replay(), LIMIT)
                self.assertEqual((got[3], got[10]), (1, 0 if taken else 1), (make, counter))
                if taken:
                    total = 20 if counter == 2 else len(plain)
                    self.assertEqual(got[1], [plain[:total]])
