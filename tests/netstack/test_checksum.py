"""The Internet checksum (funnel_tw.netstack.checksum) against a word-by-word reference:
the sum's two implementations (C and pure Python) each, then checksum() and verify(); and the
C builder of a segment's IP packet against PacketBuilder's pure-Python code."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from funnel_tw.netstack import checksum as checksum_module
from funnel_tw.netstack import segment
from funnel_tw.netstack.checksum import OnesSum, checksum, py_ones_sum, verify

from .reference import naive_checksum, naive_ones_sum

h = bytes.fromhex


def _with_checksum(data: bytes, offset: int) -> bytes:
    """``data`` with its checksum written at the even ``offset`` (field zeroed first)."""
    zeroed = data[:offset] + b"\x00\x00" + data[offset + 2 :]
    return zeroed[:offset] + checksum(zeroed).to_bytes(2, "big") + zeroed[offset + 2 :]


def _c_function(test: SynchronousTestCase, name: str) -> Any:
    """``name`` from the C extension; the test is skipped when it is not built (failed in
    CI, where FUNNEL_TW_REQUIRE_INTEROP=1)."""
    try:
        from funnel_tw.netstack import _checksum
    except ImportError:
        if os.environ.get("FUNNEL_TW_REQUIRE_INTEROP") == "1":
            test.fail("the C checksum extension is not built (pip install -e . builds it)")
        raise SkipTest("the C checksum extension is not built") from None
    return getattr(_checksum, name)


def _property_tests() -> tuple[Callable[..., None], Callable[..., None]]:
    """Fresh hypothesis tests for each implementation's class (hypothesis refuses one test
    function run from two classes)."""

    @given(st.binary(max_size=3000))
    def test_matches_reference(self: _OnesSumTests, data: bytes) -> None:
        self.assertEqual(self.ones_sum(data), naive_ones_sum(data))

    @given(st.binary(max_size=64).map(lambda b: b[: len(b) & ~1]), st.binary(max_size=1500))
    def test_start_chains_pieces(self: _OnesSumTests, even: bytes, rest: bytes) -> None:
        # How PacketBuilder sums header and payload without joining them.
        self.assertEqual(self.ones_sum(rest, self.ones_sum(even)), naive_ones_sum(even + rest))

    return test_matches_reference, test_start_chains_pieces


class _OnesSumTests:
    """Run against each implementation: ``ones_sum`` is set by the subclasses."""

    ones_sum: OnesSum
    assertEqual = SynchronousTestCase.assertEqual
    assertRaises = SynchronousTestCase.assertRaises

    def test_rfc1071_example(self) -> None:
        self.assertEqual(self.ones_sum(h("0001f203f4f5f6f7")), 0xDDF2)

    def test_odd_lengths_pad_with_zero(self) -> None:
        self.assertEqual(self.ones_sum(b"\x12"), 0x1200)
        self.assertEqual(self.ones_sum(b"\x12\x34\x56"), 0x1234 + 0x5600)

    def test_end_around_carry(self) -> None:
        self.assertEqual(self.ones_sum(h("ffff0001")), 0x0001)
        self.assertEqual(self.ones_sum(h("ffffffff")), 0xFFFF)
        self.assertEqual(self.ones_sum(h("8000800080000000")), 0x8001)

    def test_nonzero_data_never_sums_to_zero(self) -> None:
        # 0xFFFF, not 0: the sum of data that is not all zeros is never +0.
        self.assertEqual(self.ones_sum(h("fffe0001")), 0xFFFF)
        self.assertEqual(self.ones_sum(b""), 0)
        self.assertEqual(self.ones_sum(bytes(6)), 0)
        self.assertEqual(self.ones_sum(b"", 0xFFFF), 0xFFFF)
        self.assertEqual(self.ones_sum(h("fffe"), 1), 0xFFFF)

    def test_start_is_added_with_carry(self) -> None:
        self.assertEqual(self.ones_sum(h("0102"), 0x0304), 0x0406)
        self.assertEqual(self.ones_sum(h("ffff"), 0x0002), 0x0002)
        self.assertEqual(self.ones_sum(b"", 0x1234), 0x1234)

    def test_takes_any_buffer(self) -> None:
        data = bytes(range(256)) * 7
        want = naive_ones_sum(data)
        self.assertEqual(self.ones_sum(bytearray(data)), want)
        self.assertEqual(self.ones_sum(memoryview(data)), want)
        # A slice that starts at an odd address, as payload views in the netstack do.
        self.assertEqual(self.ones_sum(memoryview(data)[1:1001]), naive_ones_sum(data[1:1001]))


class PythonOnesSumTests(_OnesSumTests, SynchronousTestCase):
    ones_sum = staticmethod(py_ones_sum)
    test_matches_reference, test_start_chains_pieces = _property_tests()


class COnesSumTests(_OnesSumTests, SynchronousTestCase):
    test_matches_reference, test_start_chains_pieces = _property_tests()

    def setUp(self) -> None:
        self.ones_sum = _c_function(self, "ones_sum")

    def test_start_out_of_range(self) -> None:
        self.assertRaises(ValueError, self.ones_sum, b"", 0x10000)
        self.assertRaises(OverflowError, self.ones_sum, b"", -1)
        self.assertRaises(TypeError, self.ones_sum, "text")
        self.assertRaises(TypeError, self.ones_sum)


class SelectionTests(SynchronousTestCase):
    def _implementation(self, **env: str) -> str:
        code = "from funnel_tw.netstack.checksum import IMPLEMENTATION; print(IMPLEMENTATION)"
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    def test_pure_python_switch(self) -> None:
        self.assertEqual(
            self._implementation(FUNNEL_TW_PURE_PYTHON="1"), "python (FUNNEL_TW_PURE_PYTHON=1)"
        )

    def test_c_when_built(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "FUNNEL_TW_PURE_PYTHON"}
        if checksum_module.IMPLEMENTATION.startswith("python (the C"):
            raise SkipTest("the C checksum extension is not built")
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                "from funnel_tw.netstack import checksum as c; "
                "print(c.IMPLEMENTATION, c.ones_sum is c.py_ones_sum)",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        self.assertEqual(out.stdout.split(), ["C", "False"])


class ChecksumTests(SynchronousTestCase):
    def test_rfc1071_example(self) -> None:
        self.assertEqual(checksum(h("0001f203f4f5f6f7")), 0x220D)

    def test_ipv4_header_example(self) -> None:
        header = h("450000730000400040110000c0a80001c0a800c7")
        self.assertEqual(checksum(header), 0xB861)
        self.assertTrue(verify(header[:10] + h("b861") + header[12:]))
        self.assertFalse(verify(header[:10] + h("b862") + header[12:]))

    def test_odd_length(self) -> None:
        self.assertEqual(checksum(b"\xab"), ~0xAB00 & 0xFFFF)

    def test_nonzero_data_never_sums_to_zero(self) -> None:
        self.assertEqual(checksum(h("fffe0001")), 0x0000)
        self.assertEqual(checksum(bytes(6)), 0xFFFF)

    def test_all_zeros_do_not_verify(self) -> None:
        # All-zero data sums to +0, not all ones: its correct checksum field is 0xFFFF, so a
        # zero field over zero data is wrong (Linux rejects it too).
        for n in (2, 8, 20):
            self.assertFalse(verify(bytes(n)))
            self.assertEqual(naive_ones_sum(bytes(n)), 0)
        self.assertTrue(verify(bytes(6) + b"\xff\xff"))

    def test_parts_concatenate(self) -> None:
        self.assertEqual(checksum(b"\x01\x02", b"\x03\x04\x05"), checksum(b"\x01\x02\x03\x04\x05"))
        self.assertTrue(verify(b"\x01\x02", (checksum(b"\x01\x02")).to_bytes(2, "big")))

    @given(st.binary(max_size=3000))
    def test_matches_reference(self, data: bytes) -> None:
        self.assertEqual(checksum(data), naive_checksum(data))

    @given(
        st.lists(st.binary(max_size=40).map(lambda b: b[: len(b) & ~1]), max_size=5),
        st.binary(max_size=41),
    )
    def test_parts_match_reference(self, even_parts: list[bytes], last: bytes) -> None:
        self.assertEqual(checksum(*even_parts, last), naive_checksum(b"".join(even_parts) + last))

    @given(st.binary(min_size=2, max_size=600), st.data())
    def test_verify_accepts_correct_and_rejects_bit_flips(
        self, data: bytes, draw: st.DataObject
    ) -> None:
        offset = draw.draw(st.integers(0, (len(data) - 2) // 2)) * 2
        good = _with_checksum(data, offset)
        assume(any(good))
        self.assertTrue(verify(good))
        self.assertEqual(naive_ones_sum(good), 0xFFFF)
        bit = draw.draw(st.integers(0, len(good) * 8 - 1))
        flipped = bytearray(good)
        flipped[bit // 8] ^= 1 << (bit % 8)
        self.assertFalse(verify(bytes(flipped)))


class CTcpPacketTests(SynchronousTestCase):
    """The C builder of a segment's IP packet gives PacketBuilder's pure-Python bytes."""

    def setUp(self) -> None:
        self.tcp_packet = _c_function(self, "tcp_packet")

    def _python(self, builder: segment.PacketBuilder, *args: Any) -> bytes:
        saved = segment.tcp_packet
        segment.tcp_packet = None
        try:
            return builder.build(*args)
        finally:
            segment.tcp_packet = saved

    @given(
        st.booleans(),
        st.binary(min_size=32, max_size=32),
        st.integers(0, 0xFFFF),
        st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
        st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
        st.integers(0, 0xFF),
        st.integers(0, 0xFFFF),
        st.integers(0, 10).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n)),
        st.binary(max_size=1500),
    )
    def test_same_bytes_as_python(
        self,
        v4: bool,
        addresses: bytes,
        ident: int,
        ports: tuple[int, int],
        numbers: tuple[int, int],
        flags: int,
        window: int,
        options: bytes,
        payload: bytes,
    ) -> None:
        size = 4 if v4 else 16
        src, dst = addresses[:size], addresses[16 : 16 + size]
        python, c = segment.PacketBuilder(src, dst), segment.PacketBuilder(src, dst)
        python.ident = c.ident = ident
        args = (*ports, *numbers, flags, window, options, payload)
        want = self._python(python, *args)
        self.assertEqual(c.build(*args), want)
        self.assertEqual(c.ident, python.ident)
        header = 20 if v4 else 40
        if v4:
            self.assertTrue(verify(want[:20]))
        length = len(want) - header
        pseudo = (
            src
            + dst
            + (
                bytes((0, 6)) + length.to_bytes(2, "big")
                if v4
                else length.to_bytes(4, "big") + bytes((0, 0, 0, 6))
            )
        )
        self.assertEqual(naive_ones_sum(pseudo + want[header:]), 0xFFFF)

    def test_sequence_numbers_wrap(self) -> None:
        c = segment.PacketBuilder(bytes(4), bytes(4))
        python = segment.PacketBuilder(bytes(4), bytes(4))
        args = (1, 2, 2**32 + 5, -1 & (2**33 - 1), 16, 100, b"", b"x")
        self.assertEqual(c.build(*args), self._python(python, *args))

    def test_bad_arguments(self) -> None:
        a4, a16 = bytes(4), bytes(16)
        ok = (a4, a4, 0, 1, 2, 3, 4, 16, 100, b"", b"")
        self.assertIsInstance(self.tcp_packet(*ok), bytes)
        for bad, error in [
            ((a4, a16, *ok[2:]), ValueError),  # families differ
            ((b"\0" * 5, b"\0" * 5, *ok[2:]), ValueError),
            ((*ok[:9], b"\x01\x01\x01", b""), ValueError),  # options not in words
            ((*ok[:9], bytes(44), b""), ValueError),  # more than 40 bytes of options
            ((*ok[:8], 0x10000, b"", b""), ValueError),  # window
            ((*ok[:2], 0x10000, *ok[3:]), ValueError),  # IP ID
            ((*ok[:5], 2**32, *ok[6:]), ValueError),  # seq
            ((*ok[:10], bytes(0xFFFF)), ValueError),  # longer than an IP packet
            ((*ok[:3], -1, *ok[4:]), OverflowError),
            (ok[:10], TypeError),
            ((*ok[:10], "text"), TypeError),
        ]:
            self.assertRaises(error, self.tcp_packet, *bad)


class CTcpRunTests(SynchronousTestCase):
    """A burst built in one C call (PacketBuilder.build_run) is the packets build makes one by
    one, in C and in pure Python: same bytes, same IP IDs after."""

    def setUp(self) -> None:
        self.tcp_run = _c_function(self, "tcp_run")

    @given(
        st.booleans(),
        st.integers(0, 0xFFFF),
        st.integers(0, 2**32 - 1),
        st.integers(0, 10).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n)),
        st.integers(1, 1400),
        st.integers(0, 6),
        st.integers(0, 300),
        st.integers(0, 300),
    )
    def test_same_bytes_as_one_by_one(
        self,
        v4: bool,
        ident: int,
        seq: int,
        options: bytes,
        size: int,
        count: int,
        offset: int,
        slack: int,
    ) -> None:
        size_a = 4 if v4 else 16
        src, dst = bytes(range(1, 1 + size_a)), bytes(range(100, 100 + size_a))
        data = bytearray(random.Random(seq).randbytes(offset + size * count + slack))
        args = (443, 50000, seq, 77, 16, 4000, options)
        one = segment.PacketBuilder(src, dst)
        one.ident = ident
        want = [
            one.build(
                *args[:2],
                seq + i * size,
                *args[3:],
                data[offset + i * size : offset + (i + 1) * size],
            )
            for i in range(count)
        ]
        for pure in (False, True):
            run = segment.PacketBuilder(src, dst)
            run.ident = ident
            saved = segment.tcp_run
            if pure:
                segment.tcp_run = None
            try:
                got = run.build_run(*args, data, offset, size, count)
            finally:
                segment.tcp_run = saved
            self.assertEqual(got, want)
            self.assertEqual(run.ident, one.ident)

    def test_sequence_numbers_and_ids_wrap(self) -> None:
        run = segment.PacketBuilder(bytes(4), bytes(4))
        one = segment.PacketBuilder(bytes(4), bytes(4))
        run.ident = one.ident = 0xFFFE
        data = bytearray(b"abcdefgh")
        got = run.build_run(1, 2, 2**32 - 3, 9, 16, 100, b"", data, 0, 2, 4)
        want = [
            one.build(1, 2, 2**32 - 3 + 2 * i, 9, 16, 100, b"", data[2 * i : 2 * i + 2])
            for i in range(4)
        ]
        self.assertEqual(got, want)
        self.assertEqual(run.ident, one.ident)

    def test_the_run_must_lie_within_the_data(self) -> None:
        a4 = bytes(4)
        head = (a4, a4, 0, 1, 2, 3, 4, 16, 100, b"")
        self.assertEqual(len(self.tcp_run(*head, bytes(10), 0, 5, 2)), 2)
        self.assertEqual(self.tcp_run(*head, bytes(10), 10, 5, 0), [])
        for data, offset, size, count in [
            (bytes(10), 1, 5, 2),  # one byte short
            (bytes(10), 0, 11, 1),
            (bytes(10), 11, 0, 1),  # offset beyond the end
            (bytes(10), -1, 1, 1),
            (bytes(10), 0, -1, 1),
            (bytes(10), 0, 1, -1),
        ]:
            self.assertRaises(ValueError, self.tcp_run, *head, data, offset, size, count)
        self.assertRaises(ValueError, self.tcp_run, *head, bytes(70000), 0, 0xFFFF, 1)  # too long
        self.assertRaises(TypeError, self.tcp_run, *head, bytes(10), 0, 5)
