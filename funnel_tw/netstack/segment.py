"""TCP segment format: header fields, options, and building a whole IP packet for a segment."""

from __future__ import annotations

import struct
from collections.abc import Callable

from .checksum import ones_sum, tcp_packet, tcp_run
from .checksum import tcp4_fields as c_tcp4_fields
from .ip import PROTO_TCP, pseudo_header

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 1, 2, 4, 8, 16, 32, 64, 128
HEADER = struct.Struct("!HHIIBBHHH")  # ports, seq, ack, offset, flags, window, checksum, urgent
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")

OPT_END, OPT_NOP, OPT_MSS, OPT_WSCALE, OPT_SACK_OK, OPT_SACK = 0, 1, 2, 3, 4, 5
OPT_TIMESTAMP = 8
MAX_WSCALE = 14
TIMESTAMP_HEAD = bytes((OPT_NOP, OPT_NOP, OPT_TIMESTAMP, 10))  # as Linux aligns it: 12 bytes
TIMESTAMP_LEN = 12
TIMESTAMP = struct.Struct("!4sII")  # head, TSval, TSecr


class Options:
    """The options we understand; anything else is skipped by its length."""

    __slots__ = ("mss", "sack", "sack_ok", "tsecr", "tsval", "wscale")

    def __init__(self) -> None:
        self.mss: int | None = None
        self.wscale: int | None = None
        self.sack_ok = False
        self.sack: list[tuple[int, int]] = []
        self.tsval: int | None = None  # RFC 7323 timestamps: the sender's clock ...
        self.tsecr = 0  # ... and the one it echoes


def parse_options(data: bytes) -> Options | None:
    """Parse TCP options; None if an option's length runs past the end (malformed)."""
    out = Options()
    i, n = 0, len(data)
    while i < n:
        kind = data[i]
        if kind == OPT_END:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= n:
            return None
        length = data[i + 1]
        if length < 2 or i + length > n:
            return None
        body = data[i + 2 : i + length]
        if kind == OPT_MSS and length == 4:
            out.mss = (body[0] << 8) | body[1]
        elif kind == OPT_WSCALE and length == 3:
            out.wscale = min(body[0], MAX_WSCALE)
        elif kind == OPT_SACK_OK and length == 2:
            out.sack_ok = True
        elif kind == OPT_SACK and (length - 2) % 8 == 0:
            for j in range(0, length - 2, 8):
                left, right = struct.unpack_from("!II", body, j)
                out.sack.append((left, right))
        elif kind == OPT_TIMESTAMP and length == 10:
            out.tsval, out.tsecr = struct.unpack("!II", body)
        i += length
    return out


def syn_options(
    mss: int, wscale: int | None, sack_ok: bool, timestamp: tuple[int, int] | None = None
) -> bytes:
    """A SYN's options: MSS, SACK permitted, timestamps (TSval, TSecr) and window scale,
    laid out as Linux does (20 bytes with all four)."""
    out = struct.pack("!BBH", OPT_MSS, 4, mss)
    if timestamp is not None:
        head = bytes((OPT_SACK_OK, 2, OPT_TIMESTAMP, 10)) if sack_ok else TIMESTAMP_HEAD
        out += TIMESTAMP.pack(head, *timestamp)
    elif sack_ok:
        out += bytes((OPT_NOP, OPT_NOP, OPT_SACK_OK, 2))
    if wscale is not None:
        out += bytes((OPT_NOP, OPT_WSCALE, 3, wscale))
    return out


def timestamp_option(tsval: int, tsecr: int) -> bytes:
    """The 12 bytes of timestamps every segment carries once both ends agreed (RFC 7323)."""
    return TIMESTAMP.pack(TIMESTAMP_HEAD, tsval, tsecr)


def sack_option(blocks: list[tuple[int, int]]) -> bytes:
    """Up to three SACK blocks (wire sequence numbers), NOP-padded to a multiple of 4."""
    blocks = blocks[:3]
    if not blocks:
        return b""
    body = b"".join(struct.pack("!II", left, right) for left, right in blocks)
    return bytes((OPT_NOP, OPT_NOP, OPT_SACK, 2 + len(body))) + body


class PacketBuilder:
    """Builds the IP packet of a segment for one address pair, with correct checksums.

    The pseudo-header and the fixed parts of the IP header are made once per connection.
    """

    __slots__ = ("dst", "ident", "pseudo_prefix", "src", "v4")

    def __init__(self, src: bytes, dst: bytes) -> None:
        self.src = src
        self.dst = dst
        self.v4 = len(src) == 4
        self.ident = 0
        self.pseudo_prefix = pseudo_header(src, dst, PROTO_TCP, 0)

    def build(
        self,
        sport: int,
        dport: int,
        seq: int,
        ack: int,
        flags: int,
        window: int,
        options: bytes = b"",
        payload: bytes | bytearray = b"",
    ) -> bytes:
        if tcp_packet is not None:
            # the C builder: the same bytes as below (tests/netstack/test_checksum.py)
            ident = 0
            if self.v4:
                self.ident = ident = (self.ident + 1) & 0xFFFF
            return tcp_packet(
                self.src,
                self.dst,
                ident,
                sport,
                dport,
                seq & 0xFFFFFFFF,
                ack & 0xFFFFFFFF,
                flags,
                window,
                options,
                payload,
            )
        offset = (20 + len(options)) // 4
        length = offset * 4 + len(payload)
        header = HEADER.pack(
            sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, offset << 4, flags, window, 0, 0
        )
        if self.v4:
            pseudo = self.src + self.dst + bytes((0, PROTO_TCP)) + length.to_bytes(2, "big")
        else:
            pseudo = self.src + self.dst + length.to_bytes(4, "big") + b"\x00\x00\x00\x06"
        # Ones'-complement sums add up piecewise (every piece but the last of even length),
        # so the payload is summed where it lies instead of being copied into one buffer.
        csum = ~ones_sum(payload, ones_sum(pseudo + header + options)) & 0xFFFF
        tcp_header = header[:16] + csum.to_bytes(2, "big") + header[18:]
        if self.v4:
            self.ident = (self.ident + 1) & 0xFFFF
            ip = _IPV4.pack(
                0x45, 0, 20 + length, self.ident, 0x4000, 64, PROTO_TCP, 0, self.src, self.dst
            )
            ipsum = ~ones_sum(ip) & 0xFFFF
            return b"".join(
                (ip[:10], ipsum.to_bytes(2, "big"), ip[12:], tcp_header, options, payload)
            )
        return b"".join(
            (
                _IPV6.pack(0x60000000, length, PROTO_TCP, 64, self.src, self.dst),
                tcp_header,
                options,
                payload,
            )
        )

    def build_run(
        self,
        sport: int,
        dport: int,
        seq: int,
        ack: int,
        flags: int,
        window: int,
        options: bytes,
        data: bytes | bytearray,
        offset: int,
        size: int,
        count: int,
    ) -> list[bytes]:
        """``count`` packets as :meth:`build` makes them, each carrying the next ``size`` bytes
        of ``data`` from ``offset`` on, with ``seq`` advanced by ``size`` from each to the next:
        a burst of full segments (the send path's), in one C call when the extension is built."""
        if tcp_run is not None:
            ident = 0
            if self.v4:
                ident = (self.ident + 1) & 0xFFFF
                self.ident = (self.ident + count) & 0xFFFF
            return tcp_run(
                self.src,
                self.dst,
                ident,
                sport,
                dport,
                seq & 0xFFFFFFFF,
                ack & 0xFFFFFFFF,
                flags,
                window,
                options,
                data,
                offset,
                size,
                count,
            )
        build = self.build
        return [
            build(sport, dport, seq + i * size, ack, flags, window, options, data[at : at + size])
            for i, at in enumerate(range(offset, offset + count * size, size))
        ]


#: What tcp4_fields answers for a packet it reads: (status, src, dst, sport, dport, seq, ack,
#: flags, window, options, payload).
Fields = tuple[int, bytes, bytes, int, int, int, int, int, int, bytes, bytes]
IP_BAD_LENGTHS, IP_FRAGMENT, IP_BAD_CHECKSUM = 1, 2, 3  # tcp4_fields' int answers
TCP_BAD_HEADER, TCP_BAD_CHECKSUM = 1, 2  # its statuses


def py_tcp4_fields(packet: bytes, verify: bool) -> Fields | int | None:
    """An arriving IPv4 TCP packet's fields, checked, in one call (the C extension's
    ``tcp4_fields`` when built, which this mirrors): None if it is not IPv4 carrying TCP (the
    general path reads it); an int if its IP header is bad (``IP_*``); else the fields, with
    ``status`` 0 or why TCP drops it (``TCP_*``: then only src and dst are filled in, for the
    caller's address check, which comes first). ``verify`` false skips both checksums."""
    if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != PROTO_TCP:
        return None
    ihl = (packet[0] & 0x0F) * 4
    total = (packet[2] << 8) | packet[3]
    if ihl < 20 or total < ihl + 20 or total > len(packet):
        return IP_BAD_LENGTHS
    if packet[6] & 0x3F or packet[7]:
        return IP_FRAGMENT
    if verify and ones_sum(packet[:ihl]) != 0xFFFF:
        return IP_BAD_CHECKSUM
    src, dst = packet[12:16], packet[16:20]
    sport, dport, seq, ack, offset, flags, window, _, _ = HEADER.unpack_from(packet, ihl)
    header_len = (offset >> 4) * 4
    if header_len < 20 or header_len > total - ihl:
        return (TCP_BAD_HEADER, src, dst, 0, 0, 0, 0, 0, 0, b"", b"")
    if verify:
        pseudo = pseudo_header(src, dst, PROTO_TCP, total - ihl)
        if ones_sum(memoryview(packet)[ihl:total], ones_sum(pseudo)) != 0xFFFF:
            return (TCP_BAD_CHECKSUM, src, dst, 0, 0, 0, 0, 0, 0, b"", b"")
    options = packet[ihl + 20 : ihl + header_len]
    payload = packet[ihl + header_len : total]
    return (0, src, dst, sport, dport, seq, ack, flags, window, options, payload)


#: ``tcp4_fields(packet, verify)``: the C one when built and not turned off, else the above.
tcp4_fields: Callable[[bytes, bool], Fields | int | None] = c_tcp4_fields or py_tcp4_fields


def build_reset(
    src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, with_ack: bool
) -> bytes:
    flags = RST | (ACK if with_ack else 0)
    return PacketBuilder(src, dst).build(sport, dport, seq, ack, flags, 0)
