"""Bounds and hostile input: SYN floods, connection and TIME-WAIT caps, the out-of-order queue,
garbage and crafted TCP headers."""

from __future__ import annotations

import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.netstack import tcp
from funnel_tw.netstack.ip import PROTO_TCP, IPError, build_ipv4, build_ipv6, parse
from funnel_tw.netstack.segment import (
    ACK,
    FIN,
    HEADER,
    RST,
    SYN,
    PacketBuilder,
    parse_options,
    sack_option,
    syn_options,
)
from funnel_tw.netstack.stack import Stack

from .tcp_harness import (
    A4,
    A6,
    B4,
    B6,
    C4,
    MASK,
    T0,
    Net,
    RawPeer,
    listening_stack,
    parse_seg,
    raw_established,
)


def drain_timers(stack: Stack, limit: float) -> float:
    """Run the stack's timers until none is left (or ``limit``); the time reached."""
    now = T0
    while True:
        deadline = stack.next_deadline()
        if deadline is None or deadline > limit:
            return now
        now = deadline
        stack.tick(now)


class SynFloodTests(SynchronousTestCase):
    def flood(self, stack: Stack, count: int) -> list[RawPeer]:
        """SYNs from ``count`` source ports; each peer's ``ack`` is set from its SYN-ACK."""
        peers = []
        for i in range(count):
            peer = RawPeer(stack, C4, B4, 1000 + i, 80, iss=i * 7919)
            for seg in peer.syn(T0):
                peer.ack = (seg.seq + 1) & MASK
            peers.append(peer)
        return peers

    def test_backlog_bounds_half_open_connections(self) -> None:
        stack = listening_stack(syn_backlog=8)
        answers = []
        for i in range(30):
            peer = RawPeer(stack, C4, B4, 1000 + i, 80)
            answers += peer.send(SYN, T0, options=syn_options(1460, 7, True))
        self.assertEqual([s.dport for s in answers], list(range(1000, 1008)))  # SYN-ACKs
        self.assertEqual(len(stack.connections), 8)
        self.assertEqual(stack.listeners[80], 8)
        self.assertEqual(stack.counters["tcp_syn_backlog_full"], 22)
        self.assertEqual(stack.events, [])

    def test_half_open_connections_time_out(self) -> None:
        stack = listening_stack(syn_backlog=8)
        self.flood(stack, 30)
        end = drain_timers(stack, T0 + 1000)
        self.assertAlmostEqual(end - T0, 63.0)  # 1 + 2 + 4 + 8 + 16 + 32
        synacks = [parse_seg(p) for p in stack.outgoing]
        self.assertEqual(len(synacks), 8 * tcp.MAX_SYN_RETRANSMITS)
        self.assertTrue(all(s is not None and s.has(SYN | ACK) for s in synacks))
        self.assertEqual(stack.connections, {})
        self.assertEqual(stack.listeners[80], 0)
        self.assertEqual(stack.events, [])  # the application never heard of them
        # and the port works again
        _peer, conn, _ = raw_established(stack, sport=5000, now=end)
        self.assertIs(conn.state, tcp.State.ESTABLISHED)

    def test_completed_handshake_frees_its_slot(self) -> None:
        stack = listening_stack(syn_backlog=2)
        peers = self.flood(stack, 2)
        self.assertEqual(stack.listeners[80], 2)
        peers[0].send(ACK, T0)
        self.assertEqual(stack.listeners[80], 1)
        self.assertEqual([k for k, _, _ in stack.events], [tcp.ACCEPTED])
        late = RawPeer(stack, C4, B4, 2000, 80)
        self.assertEqual(len(late.syn(T0)), 1)
        self.assertEqual(stack.listeners[80], 2)

    def test_rst_for_a_half_open_connection_frees_its_slot(self) -> None:
        stack = listening_stack(syn_backlog=1)
        (peer,) = self.flood(stack, 1)
        peer.send(RST, T0)
        self.assertEqual(stack.listeners[80], 0)
        self.assertEqual(stack.connections, {})

    def test_backlog_is_per_port(self) -> None:
        stack = listening_stack(syn_backlog=2)
        stack.listen(81)
        for port in (80, 81):
            for i in range(3):
                RawPeer(stack, C4, B4, 3000 + i, port).syn(T0)
        self.assertEqual(stack.listeners, {80: 2, 81: 2})
        self.assertEqual(stack.counters["tcp_syn_backlog_full"], 2)

    def test_unlisten(self) -> None:
        stack = listening_stack()
        stack.unlisten(80)
        out = RawPeer(stack, C4, B4, 1000, 80).syn(T0)
        self.assertEqual([s.flags for s in out], [RST | ACK])


class ConnectionCapTests(SynchronousTestCase):
    def test_max_connections_for_passive_opens(self) -> None:
        stack = listening_stack(max_connections=3)
        for i in range(3):
            raw_established(stack, sport=4000 + i)
        out = RawPeer(stack, A4, B4, 4999, 80).syn(T0)
        self.assertEqual(out, [])  # silently dropped: no RST either
        self.assertEqual(len(stack.connections), 3)
        self.assertEqual(stack.counters["tcp_connections_full"], 1)
        self.assertEqual(stack.listeners[80], 0)

    def test_max_connections_for_active_opens(self) -> None:
        stack = Stack([A4], max_connections=2, rng=random.Random(1))
        stack.connect(A4, B4, 80, T0)
        stack.connect(A4, B4, 80, T0)
        self.assertRaises(OSError, stack.connect, A4, B4, 80, T0)
        self.assertEqual(len(stack.connections), 2)

    def test_half_open_count_against_the_cap(self) -> None:
        stack = listening_stack(max_connections=2)
        for i in range(3):
            RawPeer(stack, C4, B4, 1000 + i, 80).syn(T0)
        self.assertEqual(len(stack.connections), 2)
        self.assertEqual(stack.counters["tcp_connections_full"], 1)
        self.assertEqual(stack.listeners[80], 2)

    def test_time_wait_does_not_count_and_is_capped(self) -> None:
        net = Net.pair(max_connections=2, max_time_wait=2)
        net.b.stack.listen(80)

        def close_on_eof(kind: int, conn: tcp.Connection, data: object) -> None:
            if kind == tcp.EOF:
                conn.close()

        net.b.on_event = close_on_eof
        closed = []
        for _ in range(4):
            conn = net.a.connect(B4, 80)
            net.run(lambda c=conn: c in net.a.connected)  # type: ignore[misc]
            conn.close()
            net.run(lambda c=conn: c.state is tcp.State.TIME_WAIT)  # type: ignore[misc]
            closed.append(conn)
        stack = net.a.stack
        self.assertEqual(len(stack.time_wait), 2)
        self.assertEqual(stack.counters["tcp_time_wait_recycled"], 2)
        self.assertEqual(set(stack.time_wait.values()), set(closed[2:]))  # the oldest went
        for conn in closed[:2]:
            self.assertIs(conn.state, tcp.State.CLOSED)
        self.assertEqual(stack.connections, {})
        self.assertEqual([net.a.closed[c] for c in closed], [None] * 4)  # reported once each


class OutOfOrderBoundTests(SynchronousTestCase):
    def test_queue_is_bounded(self) -> None:
        stack = listening_stack()
        peer, conn, _ = raw_established(stack)
        base = peer.seq
        for i in range(tcp.MAX_OOO_SEGMENTS + 100):
            peer.send(ACK, T0, seq=base + 2 + 2 * i, data=b"x")
        self.assertEqual(len(conn.ooo), tcp.MAX_OOO_SEGMENTS)
        self.assertEqual(conn.ooo_bytes, tcp.MAX_OOO_SEGMENTS)
        self.assertEqual(stack.counters["tcp_ooo_overflow"], 100)
        # filling the first hole delivers what is contiguous, and no more
        peer.send(ACK, T0, seq=base, data=b"yy")
        data = b"".join(d for k, _, d in stack.events if k == tcp.DATA)
        self.assertEqual(data, b"yyx")
        self.assertEqual(len(conn.ooo), tcp.MAX_OOO_SEGMENTS - 1)

    def test_out_of_order_bytes_shrink_the_window(self) -> None:
        stack = listening_stack(receive_buffer=64 * 1024)
        peer, conn, _ = raw_established(stack)
        peer.send(ACK, T0, seq=peer.seq + 1000, data=bytes(30_000))
        self.assertEqual(conn._window(), 64 * 1024 - 30_000)


# --- hostile input -------------------------------------------------------------------------------


def may_open(stack: Stack, packet: bytes) -> tuple[bytes, int, bytes, int] | None:
    """The connection key ``packet`` may legitimately create: a SYN (no ACK, no RST) with
    well-formed options, to a listening port on one of our addresses."""
    try:
        ip = parse(packet)
    except IPError:
        return None
    if packet[0] >> 4 == 4:
        ihl = (packet[0] & 0x0F) * 4
        if int.from_bytes(packet[2:4], "big") < ihl + 20:
            return None
    if ip.protocol != PROTO_TCP or ip.dst not in stack.addresses or len(ip.payload) < 20:
        return None
    sport, dport, _, _, offset, flags, _, _, _ = HEADER.unpack_from(ip.payload)
    header_len = (offset >> 4) * 4
    if header_len < 20 or header_len > len(ip.payload):
        return None
    if parse_options(ip.payload[20:header_len]) is None:
        return None
    if flags & (SYN | ACK | RST) != SYN or dport not in stack.listeners:
        return None
    return (ip.dst, dport, ip.src, sport)


class Victim:
    """A stack listening on 80 with one established connection, to throw packets at."""

    def __init__(self, v6: bool) -> None:
        self.address = B6 if v6 else B4
        self.stack = listening_stack(self.address, rng=random.Random(3))
        self.peer, self.conn, _ = raw_established(self.stack, sport=40000)

    def feed(self, packet: bytes, now: float) -> None:
        stack = self.stack
        before = set(stack.connections)
        stack.receive(packet, now)
        stack.flush(now)
        created = set(stack.connections) - before
        allowed = may_open(stack, packet)
        assert created <= ({allowed} if allowed else set()), (created, packet.hex())
        half_open = sum(1 for c in stack.connections.values() if c.half_open)
        assert stack.listeners[80] == half_open, (stack.listeners, half_open)
        for packet_out in stack.outgoing:
            seg = parse_seg(packet_out)
            assert seg is not None and seg.length <= stack.mtu, packet_out.hex()
        stack.outgoing.clear()
        stack.events.clear()

    def settle(self, now: float) -> None:
        deadline = self.stack.next_deadline()
        if deadline is not None:
            self.stack.tick(max(deadline, now))
            self.stack.flush(max(deadline, now))


flag_values = st.integers(0, 255)
option_bytes = st.one_of(
    st.just(b""),
    st.builds(
        syn_options,
        st.integers(0, 0xFFFF),
        st.one_of(st.none(), st.integers(0, 255)),
        st.booleans(),
    ),
    st.lists(st.tuples(st.integers(0, MASK), st.integers(0, MASK)), max_size=4).map(sack_option),
    st.binary(max_size=40).map(lambda b: b + bytes(-len(b) % 4)),
)


@st.composite
def crafted_segments(draw: st.DrawFn, victim_seq: int, victim_ack: int) -> dict[str, object]:
    near = st.integers(-70_000, 2_000_000)
    return {
        "sport": draw(st.sampled_from([40000, 40001, draw(st.integers(0, 0xFFFF))])),
        "dport": draw(st.sampled_from([80, 81, draw(st.integers(0, 0xFFFF))])),
        "seq": draw(st.one_of(near.map(lambda d: (victim_seq + d) & MASK), st.integers(0, MASK))),
        "ack": draw(st.one_of(near.map(lambda d: (victim_ack + d) & MASK), st.integers(0, MASK))),
        "flags": draw(flag_values),
        "window": draw(st.integers(0, 0xFFFF)),
        "options": draw(option_bytes),
        "payload": draw(st.binary(max_size=1500)),
    }


class HostileInputTests(SynchronousTestCase):
    @settings(max_examples=200)
    @given(packets=st.lists(st.binary(max_size=200), min_size=1, max_size=10), v6=st.booleans())
    def test_arbitrary_bytes(self, packets: list[bytes], v6: bool) -> None:
        victim = Victim(v6)
        for i, packet in enumerate(packets):
            victim.feed(packet, T0 + i)
        victim.settle(T0 + 100)

    @settings(max_examples=150)
    @given(data=st.data(), v6=st.booleans(), count=st.integers(1, 12))
    def test_crafted_tcp_segments(self, data: st.DataObject, v6: bool, count: int) -> None:
        victim = Victim(v6)
        src = A6 if v6 else A4
        for i in range(count):
            fields = data.draw(crafted_segments(victim.peer.seq & MASK, victim.conn.snd_nxt & MASK))
            builder = PacketBuilder(
                data.draw(st.sampled_from([src, src[:-1] + b"\x09"])), victim.address
            )
            packet = builder.build(**fields)  # type: ignore[arg-type]
            victim.feed(packet, T0 + i * 0.3)
            if i % 4 == 3:
                victim.settle(T0 + i * 0.3)
        victim.settle(T0 + 10)

    @settings(max_examples=150)
    @given(data=st.data())
    def test_mutated_valid_packets(self, data: st.DataObject) -> None:
        """Valid segments of a real exchange with random bytes overwritten."""
        victim = Victim(False)
        packets = [
            victim.peer.packet(SYN, options=syn_options(1460, 7, True)),
            victim.peer.packet(ACK, data=b"hello"),
            victim.peer.packet(ACK | FIN, data=b"bye"),
            victim.peer.packet(RST),
            RawPeer(victim.stack, C4, B4, 999, 80).packet(SYN, options=syn_options(536, 2, True)),
        ]
        for i, packet in enumerate(data.draw(st.lists(st.sampled_from(packets), max_size=6))):
            mutated = bytearray(packet)
            for _ in range(data.draw(st.integers(1, 4))):
                mutated[data.draw(st.integers(0, len(mutated) - 1))] = data.draw(
                    st.integers(0, 255)
                )
            cut = data.draw(st.integers(0, len(mutated)))
            victim.feed(bytes(mutated[:cut]), T0 + i)
        victim.settle(T0 + 10)


class MalformedTests(SynchronousTestCase):
    def test_malformed_options_are_counted_and_dropped(self) -> None:
        stack = listening_stack()
        bad_options = [
            bytes([2, 10, 0, 0]),  # MSS whose length runs past the end
            bytes([3, 1, 0, 0]),  # length below 2
            bytes([8, 0, 0, 0]),  # length 0
            bytes([1, 1, 1, 5]),  # a kind with no length byte
        ]
        for i, options in enumerate(bad_options):
            out = RawPeer(stack, C4, B4, 7000 + i, 80).send(SYN, T0, options=options)
            self.assertEqual(out, [])
        self.assertEqual(stack.counters["drop_tcp_options"], len(bad_options))
        self.assertEqual(stack.connections, {})
        self.assertNotIn("tcp_reset_sent", stack.counters)

    def test_malformed_options_on_an_established_connection(self) -> None:
        stack = listening_stack()
        peer, conn, _ = raw_established(stack)
        peer.send(ACK, T0, data=b"x", options=bytes([5, 30, 0, 0]))
        self.assertEqual(stack.counters["drop_tcp_options"], 1)
        self.assertEqual(conn.rcv_nxt, peer.seq)

    def test_options_after_end_of_list_are_ignored(self) -> None:
        stack = listening_stack()
        out = RawPeer(stack, C4, B4, 7000, 80).send(SYN, T0, options=bytes([0, 2, 99, 99]))
        self.assertEqual([s.flags for s in out], [SYN | ACK])

    def test_bad_header_lengths(self) -> None:
        stack = listening_stack()
        segment = bytearray(HEADER.pack(1234, 80, 1, 0, 0x40, SYN, 1000, 0, 0))  # offset 16
        stack.receive(build_ipv4(C4, B4, PROTO_TCP, bytes(segment)), T0)
        segment[12] = 0xF0  # 60-byte header in a 20-byte segment
        stack.receive(build_ipv4(C4, B4, PROTO_TCP, bytes(segment)), T0)
        stack.receive(build_ipv4(C4, B4, PROTO_TCP, bytes(segment[:19])), T0)
        self.assertEqual(stack.counters["drop_tcp_header"], 2)
        self.assertEqual(stack.connections, {})
        self.assertEqual(stack.outgoing, [])

    def test_short_tcp_in_ipv6(self) -> None:
        stack = listening_stack(B6)
        stack.receive(build_ipv6(A6, B6, PROTO_TCP, bytes(10)), T0)
        self.assertEqual(stack.counters["drop_tcp_short"], 1)

    def test_bad_ipv4_is_counted(self) -> None:
        stack = listening_stack()
        good = RawPeer(stack, C4, B4, 7000, 80).packet(SYN)
        bad = [
            b"",
            b"\x45",
            bytes([0x44]) + good[1:],  # IHL 4
            good[:2] + struct.pack("!H", len(good) + 1) + good[4:],  # longer than the packet
            good[:6] + b"\x20\x00" + good[8:],  # more fragments
            good[:6] + b"\x00\x10" + good[8:],  # fragment offset
            bytes([0x75]) + good[1:],  # version 7
        ]
        for packet in bad:
            stack.receive(packet, T0)
        self.assertEqual(stack.counters["drop_bad_ip"], len(bad))
        self.assertEqual(stack.connections, {})

    def test_checksums_verified_when_asked(self) -> None:
        stack = listening_stack(verify_checksums=True)
        good = RawPeer(stack, C4, B4, 7000, 80).packet(SYN)
        bad_tcp = bytearray(good)
        bad_tcp[-1] ^= 0xFF  # the urgent pointer: the TCP checksum is now wrong
        bad_ip = bytearray(good)
        bad_ip[10] ^= 0xFF
        stack.receive(bytes(bad_tcp), T0)
        stack.receive(bytes(bad_ip), T0)
        self.assertEqual(stack.counters["drop_tcp_checksum"], 1)
        self.assertEqual(stack.counters["drop_bad_ip"], 1)
        self.assertEqual(stack.connections, {})
        stack.receive(good, T0)
        self.assertEqual(len(stack.connections), 1)

    def test_checksums_not_verified_by_default(self) -> None:
        stack = listening_stack()
        bad = bytearray(RawPeer(stack, C4, B4, 7000, 80).packet(SYN))
        bad[36] ^= 0xFF  # the TCP checksum
        stack.receive(bytes(bad), T0)
        self.assertEqual(len(stack.connections), 1)
