"""Fuzz targets: one function per parser of outside bytes, ``bytes -> None``.

A target may let through only the parser's own documented error (``IPError``,
``ClientHelloError``, ``ConfigError``, ...) or none at all where the code says it never raises
on hostile input (``Device.receive_batch``, ``Stack.receive``). Anything else that escapes,
including an ``AssertionError`` from the invariants checked here, is a finding.

The targets need no atheris: ``tests.fuzz`` runs them under atheris, ``test_corpus`` runs them
over the seed corpus and the saved crashes in the normal suite. Stateful targets (the WireGuard
device, the TCP/IP stack) read their input as a list of operations (:class:`Ops`), so the fuzzer
can drive a real session and not only throw single packets at a fresh object.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import re
import shutil
import struct
import tempfile
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

# --- the code under test: every import path of funnel_tw in this package is written here ------
from funnel_tw.config import ConfigError, load_node_config, load_relay_config
from funnel_tw.keys import encode_key, public_key
from funnel_tw.netstack import icmp, segment
from funnel_tw.netstack import ip as netip
from funnel_tw.netstack.checksum import verify
from funnel_tw.netstack.stack import Stack
from funnel_tw.netstack.tcp import ACCEPTED
from funnel_tw.peerapi.ingress import parse_ip_port
from funnel_tw.relay.clienthello import ClientHelloError, ClientHelloParser
from funnel_tw.serve import proxyproto
from funnel_tw.web.hostport import parse_host_port
from funnel_tw.web.paths import PathError, normalize
from funnel_tw.web.ranges import MAX_PARTS, UNSATISFIABLE, parse_range
from funnel_tw.wireguard import messages
from funnel_tw.wireguard.cookie import CookieChecker, CookieGenerator
from funnel_tw.wireguard.device import Device, Peer

# what seeds.py builds its inputs with
__all__ = [
    "TARGETS",
    "CookieChecker",
    "Device",
    "encode_key",
    "icmp",
    "netip",
    "op",
    "public_key",
    "segment",
]
# ----------------------------------------------------------------------------------------------

T0 = 1_700_000_000.0
WG_KEY_A = bytes(range(1, 33))
WG_KEY_B = bytes(range(33, 65))
WG_A_EP = ("192.0.2.1", 51820)
WG_B_EP = ("192.0.2.2", 51820)
NET_A4 = IPv4Address("10.0.0.1").packed
NET_B4 = IPv4Address("10.0.0.2").packed
NET_A6 = IPv6Address("fd00::1").packed
NET_B6 = IPv6Address("fd00::2").packed
STACK_PORT = 80
STACK_MTU = 1280


class Ops:
    """Reads a fuzz input as operations: a kind byte, a 2-byte length, that many bytes.

    Short input is padded with zeros, so every input is some list of operations."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def __iter__(self) -> Ops:
        return self

    def __next__(self) -> tuple[int, bytes]:
        if self.pos >= len(self.data):
            raise StopIteration
        kind = self.data[self.pos]
        length = int.from_bytes(self.data[self.pos + 1 : self.pos + 3].ljust(2, b"\0"), "big")
        chunk = self.data[self.pos + 3 : self.pos + 3 + length]
        self.pos += 3 + length
        return kind, chunk


def op(kind: int, chunk: bytes) -> bytes:
    """One operation as :class:`Ops` reads it (for seeds and tests)."""
    return bytes((kind,)) + len(chunk).to_bytes(2, "big") + chunk


def _u(chunk: bytes, start: int, size: int) -> int:
    return int.from_bytes(chunk[start : start + size].ljust(size, b"\0"), "big")


# --- WireGuard -----------------------------------------------------------------------------


def wg_messages(data: bytes) -> None:
    """unpack_*: a message at least as long as its fixed part unpacks, and packs back."""
    formats = (
        (messages.unpack_initiation, messages.pack_initiation, messages.INITIATION_SIZE - 32),
        (messages.unpack_response, messages.pack_response, messages.RESPONSE_SIZE - 32),
        (messages.unpack_cookie_reply, messages.pack_cookie_reply, messages.COOKIE_REPLY_SIZE),
    )
    for unpack, pack, fixed in formats:
        try:
            message = unpack(data)
        except struct.error:
            assert len(data) < fixed, f"{unpack.__name__} refused {len(data)} bytes"
            continue
        assert len(data) >= fixed, f"{unpack.__name__} accepted {len(data)} bytes"
        packed = pack(message)  # type: ignore[arg-type]
        assert packed[4:] == data[4:fixed], f"{pack.__name__} does not give the bytes back"


class _WireGuardPair:
    """Device A (under test) and its peer B, wired together with an explicit clock."""

    def __init__(self) -> None:
        self.a = Device(WG_KEY_A, rng=random.Random(1))
        self.b = Device(WG_KEY_B, rng=random.Random(2))
        nets_b = (ip_network("10.0.0.2/32"), ip_network("fd00::2/128"))
        nets_a = (ip_network("10.0.0.1/32"), ip_network("fd00::1/128"))
        self.peer_b: Peer = self.a.add_peer(self.b.public_key, allowed_ips=nets_b, endpoint=WG_B_EP)
        self.peer_a: Peer = self.b.add_peer(self.a.public_key, allowed_ips=nets_a, endpoint=WG_A_EP)
        self.now = T0

    def pump(self) -> None:
        """Deliver what each device sends to the other until both are quiet (bounded)."""
        for _ in range(8):
            to_a = [(d, WG_B_EP) for d, ep in self.b.outgoing if ep == WG_A_EP]
            to_b = [(d, WG_A_EP) for d, ep in self.a.outgoing if ep == WG_B_EP]
            self.a.outgoing.clear()
            self.b.outgoing.clear()
            if not to_a and not to_b:
                break
            if to_a:
                self.a.receive_batch(to_a, self.now)
            if to_b:
                self.b.receive_batch(to_b, self.now)
        self.a.incoming.clear()
        self.b.incoming.clear()

    def with_macs(self, chunk: bytes) -> bytes:
        """An initiation or response (by the first byte) with ``chunk`` as its body and a valid
        mac1 for A, so it gets past the cookie check into the Noise code."""
        kind = messages.MSG_INITIATION if not chunk or chunk[0] % 2 == 0 else messages.MSG_RESPONSE
        size = (
            messages.INITIATION_SIZE if kind == messages.MSG_INITIATION else messages.RESPONSE_SIZE
        )
        body = struct.pack("<I", kind) + chunk[1:].ljust(size - 36, b"\0")[: size - 36]
        return CookieGenerator(self.a.public_key).add_macs(body, self.now)


def _source(chunk: bytes) -> tuple[str, int]:
    if not chunk or chunk[0] < 128:
        return WG_B_EP
    return (f"198.51.100.{chunk[0] & 0x7F}", 1 + (chunk[-1] << 8))


def wg_device(data: bytes) -> None:
    """Device.receive_batch on hostile datagrams (it never raises), mixed with a real session.

    Operations: 0 raw datagram to A; 1 initiation/response with a valid mac1; 2 B sends the
    bytes as an inner packet (a real session carries them, so A's inner checks see them);
    3 time passes and timers run; 4 a burst of handshakes that puts A under load (it answers
    with cookie replies, which go to B); 5 a transport message on A's real current keypair
    index; 6 A routes the bytes as an outgoing packet."""
    pair = _WireGuardPair()
    a = pair.a
    for kind, chunk in Ops(data):
        kind %= 7
        if kind == 0:
            a.receive_datagram(chunk, _source(chunk), pair.now)
        elif kind == 1:
            a.receive_datagram(pair.with_macs(chunk), _source(chunk), pair.now)
        elif kind == 2:
            pair.b.send_to_peer(pair.peer_a, chunk, pair.now)
        elif kind == 3:
            pair.now += _u(chunk, 0, 2) / 10
            a.tick(pair.now)
            pair.b.tick(pair.now)
        elif kind == 4:
            # 128 handshakes without a valid mac1 (cheap to drop) put A under load for a
            # second: this one, and those of the next operations, get cookie replies, which B
            # then consumes
            junk = (messages.HEADER_INITIATION + chunk).ljust(messages.INITIATION_SIZE, b"\0")
            junk = junk[: messages.INITIATION_SIZE]
            burst = [(junk, _source(chunk))] * 128 + [(pair.with_macs(chunk), _source(chunk))]
            a.receive_batch(burst, pair.now)
            pair.b.receive_batch([(d, WG_A_EP) for d, _ in a.outgoing], pair.now)
            a.outgoing.clear()
        elif kind == 5:
            keypair = pair.peer_b.keypairs.current or pair.peer_b.keypairs.next
            index = keypair.local_index if keypair is not None else _u(chunk, 0, 4)
            datagram = messages.HEADER_TRANSPORT + struct.pack("<I", index) + chunk
            a.receive_datagram(datagram, _source(chunk), pair.now)
        else:
            a.send_packet(chunk, pair.now)
        pair.pump()
        a.stats()


# --- the TCP/IP stack ----------------------------------------------------------------------


def ip_parse(data: bytes) -> None:
    """netstack.ip.parse: a Packet or IPError; what it returns is consistent with the bytes."""
    for verify_checksum in (False, True):
        try:
            packet = netip.parse(data, verify_checksum)
        except netip.IPError:
            continue
        assert packet.version in (4, 6)
        size = 4 if packet.version == 4 else 16
        assert len(packet.src) == len(packet.dst) == size
        assert len(packet.payload) <= len(data)
        packet.src_address, packet.dst_address  # noqa: B018 - must not raise


def netstack_icmp(data: bytes) -> None:
    """ICMP echo: a request we answer gives a reply that parses back as that very reply."""
    try:
        packet = netip.parse(data)
    except netip.IPError:
        return
    reply = icmp.parse_echo_reply(packet)
    if reply is not None:
        assert (reply.src, reply.dst) == (packet.src, packet.dst)
    request = icmp.parse_echo_request(packet)
    if request is None:
        return
    answer = netip.parse(icmp.echo_reply(request), verify_checksum=True)
    echoed = icmp.parse_echo_reply(answer)
    assert echoed is not None, "our echo reply does not parse as one"
    assert echoed == request._replace(src=request.dst, dst=request.src)


def tcp_segment(data: bytes) -> None:
    """TCP options parse (None if malformed); options and segments we build parse back."""
    options = segment.parse_options(data)
    if options is not None:
        assert options.mss is None or 0 <= options.mss <= 0xFFFF
        assert options.wscale is None or 0 <= options.wscale <= segment.MAX_WSCALE
    if len(data) >= segment.HEADER.size:
        segment.HEADER.unpack_from(data)
    # round trips with fields taken from the input
    mss, wscale, flags = _u(data, 0, 2), data[2] if len(data) > 2 else None, _u(data, 3, 1)
    if wscale is not None and wscale > segment.MAX_WSCALE:
        wscale = None
    stamp = (_u(data, 4, 4), _u(data, 8, 4)) if flags & 4 else None
    syn = segment.parse_options(segment.syn_options(mss, wscale, bool(flags & 1), stamp))
    assert syn is not None
    assert (syn.mss, syn.wscale, syn.sack_ok) == (mss, wscale, bool(flags & 1))
    assert (syn.tsval, syn.tsecr) == (stamp or (None, 0))
    blocks = [(_u(data, i, 4), _u(data, i + 4, 4)) for i in range(4, min(len(data), 36), 8)]
    sack = segment.parse_options(segment.sack_option(blocks))
    assert sack is not None and sack.sack == blocks[:3]
    # what a segment of a connection with timestamps carries: the clocks, then SACK blocks
    both = segment.parse_options(
        segment.timestamp_option(*blocks[0]) + segment.sack_option(blocks[1:]) if blocks else b""
    )
    assert both is not None
    if blocks:
        assert (both.tsval, both.tsecr, both.sack) == (*blocks[0], blocks[1:4])
    if options is not None and options.tsval is not None:
        assert 0 <= options.tsval <= 0xFFFFFFFF and 0 <= options.tsecr <= 0xFFFFFFFF
    v6 = bool(flags & 2)
    src, dst = (NET_A6, NET_B6) if v6 else (NET_A4, NET_B4)
    raw_options = data[36:76]
    raw_options += bytes(-len(raw_options) % 4)
    payload = data[76:]
    built = segment.PacketBuilder(src, dst).build(
        _u(data, 4, 2), _u(data, 6, 2), _u(data, 8, 4), _u(data, 12, 4), flags, _u(data, 16, 2),
        raw_options, payload,
    )  # fmt: skip
    packet = netip.parse(built, verify_checksum=True)
    assert (packet.src, packet.dst, packet.protocol) == (src, dst, netip.PROTO_TCP)
    assert verify(
        netip.pseudo_header(src, dst, netip.PROTO_TCP, len(packet.payload)), packet.payload
    )
    assert packet.payload[20 + len(raw_options) :] == payload


def _emitted_problems(packet: bytes, mtu: int) -> list[str]:
    """What is wrong with a packet the stack emitted (headers, checksums, MTU for TCP)."""
    try:
        parsed = netip.parse(packet, verify_checksum=True)
    except netip.IPError as e:
        return [f"emitted a bad IP packet: {e}"]
    problems = []
    if parsed.protocol == netip.PROTO_TCP:
        if len(packet) > mtu:
            problems.append(f"emitted a TCP packet of {len(packet)} bytes, MTU {mtu}")
        pseudo = netip.pseudo_header(parsed.src, parsed.dst, netip.PROTO_TCP, len(parsed.payload))
        if not verify(pseudo, parsed.payload):
            problems.append("emitted a bad TCP checksum")
        offset = (parsed.payload[12] >> 4) * 4
        if segment.parse_options(parsed.payload[20:offset]) is None:
            problems.append("emitted malformed TCP options")
    return problems


def netstack_stack(data: bytes) -> None:
    """Stack.receive on hostile packets (it never raises), mixed with real connections.

    Operations: 0 a raw IP packet; 1 a TCP segment built from fields (sequence and ack
    numbers relative to the connection's, so the fuzzer can follow a handshake); 2 time
    passes and timers run; 3 the application sends, closes, aborts, pauses or resumes a
    connection; 4 the application connects out. Every packet the stack emits must be a
    valid one."""
    stack = Stack([NET_A4, NET_A6], mtu=STACK_MTU, rng=random.Random(0))
    stack.listen(STACK_PORT)
    now = T0
    conns: list[object] = []
    for kind, chunk in Ops(data):
        kind %= 5
        if kind == 0:
            stack.receive(chunk, now)
        elif kind == 1:
            stack.receive(_segment_for(stack, chunk), now)
        elif kind == 2:
            now += _u(chunk, 0, 2) / 100
            stack.tick(now)
        elif kind == 3 and conns:
            conn = conns[_u(chunk, 0, 1) % len(conns)]
            action = _u(chunk, 1, 1) % 5
            if action == 0:
                conn.send(chunk[2:] * (1 + _u(chunk, 2, 1) % 16))  # type: ignore[attr-defined]
            else:
                name = ("close", "abort", "pause_reading", "resume_reading")[action - 1]
                getattr(conn, name)()
        elif kind == 4:
            local, remote = (NET_A6, NET_B6) if _u(chunk, 0, 1) & 1 else (NET_A4, NET_B4)
            with contextlib.suppress(OSError):  # too many connections
                conns.append(stack.connect(local, remote, _u(chunk, 1, 2), now))
        stack.flush(now)
        for event_kind, conn, _ in stack.events:
            if event_kind == ACCEPTED:
                conns.append(conn)
        stack.events.clear()
        problems = [p for packet in stack.outgoing for p in _emitted_problems(packet, stack.mtu)]
        assert not problems, problems
        stack.outgoing.clear()
        stack.stats()
        stack.next_deadline()


def _segment_for(stack: Stack, chunk: bytes) -> bytes:
    """A segment from B to A: byte 0 picks a connection (or a new flow to the listening port),
    then flags, window, seq and ack deltas, option length, options and payload."""
    pick, flags, window = _u(chunk, 0, 1), _u(chunk, 1, 1), _u(chunk, 2, 2)
    seq_delta = struct.unpack("!h", chunk[4:6].ljust(2, b"\0"))[0]
    ack_delta = struct.unpack("!h", chunk[6:8].ljust(2, b"\0"))[0]
    options = chunk[9 : 9 + min(_u(chunk, 8, 1), 40)]
    options += bytes(-len(options) % 4)
    payload = chunk[9 + len(options) :]
    known = list(stack.connections.values())
    if pick < 128 and known:
        conn = known[pick % len(known)]
        (local, lport), (remote, rport) = conn.local, conn.remote
        seq = conn.rcv_nxt + seq_delta
        ack = conn.snd_nxt + ack_delta
    else:
        local, remote = (NET_A6, NET_B6) if pick & 1 else (NET_A4, NET_B4)
        lport = STACK_PORT if pick & 2 else _u(chunk, 9, 2)
        rport = 40000 + (pick & 0x3F)
        seq, ack = (seq_delta << 16) + ack_delta, ack_delta
    return segment.PacketBuilder(remote, local).build(
        rport, lport, seq, ack, flags, window, options, payload
    )


# --- relay, serve, peerAPI -----------------------------------------------------------------


def _feed_all(data: bytes, chunks: list[bytes]) -> tuple[str, object]:
    parser = ClientHelloParser()
    try:
        for piece in chunks:
            hello = parser.feed(piece)
            if hello is not None:
                break
        else:
            hello = None
    except ClientHelloError:
        assert parser.raw.startswith(b"".join(chunks)[: len(parser.raw)])
        return "error", None
    assert data.startswith(parser.raw)
    return ("hello", hello) if hello is not None else ("partial", None)


def clienthello(data: bytes) -> None:
    """ClientHelloParser fed the bytes whole and in chunks (sized from the first two bytes):
    only ClientHelloError, and the same ClientHello (or none) whatever the chunking."""
    rng = random.Random(_u(data, 0, 2))
    body = data[2:]
    chunks, pos = [], 0
    while pos < len(body):
        size = rng.choice((1, 2, 3, 5, 8, 64, 517, 4096))
        chunks.append(body[pos : pos + size])
        pos += size
    whole = _feed_all(body, [body])
    pieces = _feed_all(body, chunks)
    if whole[0] == "hello" or pieces[0] == "hello":
        assert whole == pieces, (whole, pieces)


def _proxy_parse(header: bytes) -> tuple[tuple[str, int], tuple[str, int], bytes]:
    """A small PROXY v1/v2 reader (haproxy's spec), independent of the code that writes them:
    (source, destination, rest of the bytes)."""
    if header.startswith(proxyproto.V2_SIGNATURE):
        version_command, family = header[12], header[13]
        assert version_command == 0x21, "v2, PROXY command"
        (length,) = struct.unpack_from("!H", header, 14)
        body, rest = header[16 : 16 + length], header[16 + length :]
        size = {0x11: 4, 0x21: 16}[family]
        assert length == 2 * size + 4
        src, dst = ip_address(body[:size]), ip_address(body[size : 2 * size])
        sport, dport = struct.unpack_from("!HH", body, 2 * size)
        return (str(src), sport), (str(dst), dport), rest
    line, sep, rest = header.partition(b"\r\n")
    assert sep and len(line) + 2 <= 107, "v1 line of at most 107 bytes"
    word, proto, src_text, dst_text, sport_text, dport_text = line.decode("ascii").split(" ")
    assert word == "PROXY" and proto in ("TCP4", "TCP6")
    for port in (sport_text, dport_text):
        assert port.isdigit() and (port == "0" or not port.startswith("0"))
    src, dst = ip_address(src_text), ip_address(dst_text)
    assert src.version == dst.version == (4 if proto == "TCP4" else 6)
    if src.version == 6:
        assert "." not in src_text + dst_text, "v6 in hex groups only"
    return (str(src), int(sport_text)), (str(dst), int(dport_text)), rest


def proxy_header(data: bytes) -> None:
    """serve.proxyproto.header for addresses and ports from the input reads back as given."""
    version = 1 + (_u(data, 0, 1) & 1)
    src_v6, dst_v6 = bool(_u(data, 0, 1) & 2), bool(_u(data, 0, 1) & 4)
    src = IPv6Address(data[1:17].ljust(16, b"\0")) if src_v6 else IPv4Address(_u(data, 1, 4))
    dst = IPv6Address(data[17:33].ljust(16, b"\0")) if dst_v6 else IPv4Address(_u(data, 17, 4))
    sport, dport = _u(data, 33, 2), _u(data, 35, 2)
    header = proxyproto.header(version, (str(src), sport), (str(dst), dport))
    got_src, got_dst, rest = _proxy_parse(header)
    assert rest == b""
    # a v4 address meeting a v6 one is written v4-mapped
    if src.version != dst.version:
        src = IPv6Address(f"::ffff:{src}") if src.version == 4 else src
        dst = IPv6Address(f"::ffff:{dst}") if dst.version == 4 else dst
    assert got_src == (str(src), sport), (got_src, src, sport)
    assert got_dst == (str(dst), dport), (got_dst, dst, dport)


def ingress_headers(data: bytes) -> None:
    """Tailscale-Ingress-Src / -Target values (decoded as the peerAPI decodes them): a tuple
    or None, never an exception; what they return is well-formed."""
    text = data.decode("latin-1")
    src = parse_ip_port(text)
    if src is not None:
        host, port = src
        assert 0 <= port <= 0xFFFF
        assert str(ip_address(host)) == host
    target = parse_host_port(text)
    if target is not None:
        host, port = target
        assert 0 <= port <= 0xFFFF
        assert host in text


_CANONICAL = re.compile(r"\A/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-F]{2}|/(?!/))*\Z")


def request_path(data: bytes) -> None:
    """web.paths.normalize: a canonical path (no dot segments, no '//', escapes upper-case,
    unreserved decoded) that normalizes to itself, or PathError; never anything else."""
    try:
        result = normalize(data)
    except PathError as e:
        assert e.status in (400, 414), e.status
        return
    assert _CANONICAL.match(result), result
    assert "/./" not in result + "/" and "/../" not in result + "/", result
    assert normalize(result.encode()) == result, result


def range_header(data: bytes) -> None:
    """web.ranges.parse_range: the first 8 bytes are the file size, the rest the Range value.
    None, UNSATISFIABLE, or 1..MAX_PARTS sorted disjoint parts inside the file that together
    are at most its size; never an exception."""
    size = int.from_bytes(data[:8], "big") >> (data[0] % 64 if data else 0)
    result = parse_range(data[8:], size)
    if result is None or result is UNSATISFIABLE:
        return
    assert isinstance(result, list) and 1 <= len(result) <= MAX_PARTS, result
    previous = -1
    for start, stop in result:
        assert previous < start < stop <= size, (result, size)
        previous = stop
    assert sum(stop - start for start, stop in result) <= size


_config_dir: str | None = None


def _config_folder() -> str:
    """One folder per process, with a valid key file the fuzzed text may name."""
    global _config_dir
    if _config_dir is None:
        _config_dir = tempfile.mkdtemp(prefix="fuzz-config-")
        atexit.register(shutil.rmtree, _config_dir, ignore_errors=True)
        key = os.path.join(_config_dir, "node.key")
        with open(os.open(key, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(encode_key(WG_KEY_A) + "\n")
    return _config_dir


def config(data: bytes) -> None:
    """load_node_config and load_relay_config on the bytes as a file: only ConfigError."""
    path = os.path.join(_config_folder(), "fuzz.ini")
    with open(path, "wb") as f:
        f.write(data)
    loaders: tuple[Callable[[str], object], ...] = (load_node_config, load_relay_config)
    for load in loaders:
        try:
            load(path)
        except ConfigError as e:
            assert str(e), "a ConfigError says what is wrong"


TARGETS: dict[str, Callable[[bytes], None]] = {
    "wg_messages": wg_messages,
    "wg_device": wg_device,
    "ip_parse": ip_parse,
    "netstack_icmp": netstack_icmp,
    "tcp_segment": tcp_segment,
    "netstack_stack": netstack_stack,
    "clienthello": clienthello,
    "proxy_header": proxy_header,
    "ingress_headers": ingress_headers,
    "request_path": request_path,
    "range_header": range_header,
    "config": config,
}
