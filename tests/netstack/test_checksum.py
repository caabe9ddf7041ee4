"""The Internet checksum (funnel_tw.netstack.checksum) against a word-by-word reference."""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.netstack.checksum import checksum, ones_sum, verify

from .reference import naive_checksum, naive_ones_sum

h = bytes.fromhex


def _with_checksum(data: bytes, offset: int) -> bytes:
    """``data`` with its checksum written at the even ``offset`` (field zeroed first)."""
    zeroed = data[:offset] + b"\x00\x00" + data[offset + 2 :]
    return zeroed[:offset] + checksum(zeroed).to_bytes(2, "big") + zeroed[offset + 2 :]


class ChecksumTests(SynchronousTestCase):
    def test_rfc1071_example(self) -> None:
        data = h("0001f203f4f5f6f7")
        self.assertEqual(ones_sum(data), 0xDDF2)
        self.assertEqual(checksum(data), 0x220D)

    def test_ipv4_header_example(self) -> None:
        header = h("450000730000400040110000c0a80001c0a800c7")
        self.assertEqual(checksum(header), 0xB861)
        self.assertTrue(verify(header[:10] + h("b861") + header[12:]))
        self.assertFalse(verify(header[:10] + h("b862") + header[12:]))

    def test_odd_lengths_pad_with_zero(self) -> None:
        self.assertEqual(ones_sum(b"\x12"), 0x1200)
        self.assertEqual(ones_sum(b"\x12\x34\x56"), 0x1234 + 0x5600)
        self.assertEqual(checksum(b"\xab"), ~0xAB00 & 0xFFFF)

    def test_end_around_carry(self) -> None:
        self.assertEqual(ones_sum(h("ffff0001")), 0x0001)
        self.assertEqual(ones_sum(h("ffffffff")), 0xFFFF)
        self.assertEqual(ones_sum(h("8000800080000000")), 0x8001)

    def test_nonzero_data_never_sums_to_zero(self) -> None:
        # 0xFFFF, not 0: the sum of data that is not all zeros is never +0.
        self.assertEqual(ones_sum(h("fffe0001")), 0xFFFF)
        self.assertEqual(checksum(h("fffe0001")), 0x0000)
        self.assertEqual(ones_sum(b""), 0)
        self.assertEqual(ones_sum(bytes(6)), 0)
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
        self.assertEqual(ones_sum(data), naive_ones_sum(data))
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
