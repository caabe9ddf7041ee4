"""Reading an arriving IPv4 TCP packet (segment.tcp4_fields): the C extension's reader and
segment.py's pure-Python one give the same answer for any packet, well-formed or not, with
checksums verified or not; and the fields they read are the ones PacketBuilder wrote."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from funnel_tw.netstack import segment
from funnel_tw.netstack.segment import (
    IP_BAD_CHECKSUM,
    IP_BAD_LENGTHS,
    IP_FRAGMENT,
    TCP_BAD_CHECKSUM,
    TCP_BAD_HEADER,
    PacketBuilder,
    py_tcp4_fields,
)

from .test_checksum import _c_function

SRC, DST = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])

fields = st.tuples(
    st.integers(0, 0xFFFF),  # sport
    st.integers(0, 0xFFFF),  # dport
    st.integers(0, 0xFFFFFFFF),  # seq
    st.integers(0, 0xFFFFFFFF),  # ack
    st.integers(0, 0xFF),  # flags
    st.integers(0, 0xFFFF),  # window
    st.binary(max_size=40).map(lambda b: b[: len(b) & ~3]),  # options
    st.binary(max_size=1400),  # payload
)


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    """A packet PacketBuilder wrote, then (usually) damaged: bytes changed, cut or added."""
    sport, dport, seq, ack, flags, window, options, payload = draw(fields)
    packet = bytearray(
        PacketBuilder(SRC, DST).build(sport, dport, seq, ack, flags, window, options, payload)
    )
    for _ in range(draw(st.integers(0, 3))):
        how = draw(st.sampled_from(["byte", "cut", "extend", "header"]))
        if how == "byte" and packet:
            packet[draw(st.integers(0, len(packet) - 1))] = draw(st.integers(0, 255))
        elif how == "cut":
            del packet[draw(st.integers(0, len(packet))) :]
        elif how == "extend":
            packet += draw(st.binary(min_size=1, max_size=8))
        elif how == "header" and len(packet) >= 40:
            # the fields the checks read: version/IHL, total length, flags/fragment, the
            # protocol, the TCP data offset
            at = draw(st.sampled_from([0, 2, 3, 6, 7, 9, 32]))
            packet[at] = draw(st.integers(0, 255))
    return bytes(packet)


class Tcp4FieldsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.c = _c_function(self, "tcp4_fields")

    @given(packets(), st.booleans())
    def test_c_and_python_agree(self, packet: bytes, verify: bool) -> None:
        self.assertEqual(self.c(packet, verify), py_tcp4_fields(packet, verify))

    @given(fields)
    def test_reads_what_the_builder_wrote(self, f: tuple[int, ...]) -> None:
        sport, dport, seq, ack, flags, window, options, payload = f
        packet = PacketBuilder(SRC, DST).build(*f)
        for read in (self.c, py_tcp4_fields):
            self.assertEqual(
                read(packet, True),
                (0, SRC, DST, sport, dport, seq, ack, flags, window, options, payload),
            )

    def test_each_answer(self) -> None:
        good = PacketBuilder(SRC, DST).build(1, 2, 3, 4, 0x10, 5, b"", b"data")

        def with_byte(at: int, value: int) -> bytes:
            return good[:at] + bytes([value]) + good[at + 1 :]

        cases = {
            good[:19]: None,  # too short for IPv4
            with_byte(0, 0x65): None,  # version 6
            with_byte(9, 17): None,  # UDP
            with_byte(0, 0x44): IP_BAD_LENGTHS,  # IHL 16 bytes
            with_byte(3, 30): IP_BAD_LENGTHS,  # total length shorter than IP + TCP headers
            with_byte(3, 200): IP_BAD_LENGTHS,  # total length past the end
            with_byte(6, 0x20): IP_FRAGMENT,  # more fragments
            with_byte(7, 1): IP_FRAGMENT,  # an offset
            with_byte(8, 63): IP_BAD_CHECKSUM,  # TTL changed, header checksum not
        }
        for read in (self.c, py_tcp4_fields):
            for packet, expected in cases.items():
                self.assertEqual(read(packet, True), expected, packet.hex())
            for packet, status in (
                (with_byte(32, 0x40), TCP_BAD_HEADER),  # data offset 16 bytes
                (with_byte(32, 0xF0), TCP_BAD_HEADER),  # 60 bytes: past the segment
                (good[:-1] + b"x", TCP_BAD_CHECKSUM),
            ):
                answer = read(packet, True)
                assert isinstance(answer, tuple)
                self.assertEqual(answer[:3], (status, SRC, DST))
            # without verification the checksums are not looked at
            self.assertEqual(read(with_byte(8, 63), False)[0], 0)  # type: ignore[index]
            self.assertEqual(read(good[:-1] + b"x", False)[0], 0)  # type: ignore[index]

    def test_the_stack_uses_the_c_reader_when_built(self) -> None:
        if os.environ.get("FUNNEL_TW_PURE_PYTHON") == "1":
            raise SkipTest("FUNNEL_TW_PURE_PYTHON=1: the stack reads in Python")
        self.assertIs(segment.tcp4_fields, self.c)
