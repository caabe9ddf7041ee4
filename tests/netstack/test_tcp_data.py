"""Moving data: bulk transfers, segment sizes, checksums, the advertised window, ACK policy."""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.netstack import tcp
from funnel_tw.netstack.segment import ACK, FIN, PSH
from funnel_tw.netstack.stack import Stack
from funnel_tw.netstack.tcp import State

from .tcp_harness import (
    A4,
    B4,
    MASK,
    T0,
    LinkProfile,
    Net,
    Seg,
    Transfer,
    connected_pair,
    listening_stack,
    payload,
    raw_established,
    sha,
)

MIB = 1 << 20


class FixedIss(random.Random):
    """A Random whose 32-bit draws (initial sequence numbers) are ``iss``."""

    def __init__(self, iss: int, seed: int) -> None:
        super().__init__(seed)
        self.iss = iss

    def getrandbits(self, k: int) -> int:
        return self.iss if k == 32 else super().getrandbits(k)


def data_segments(segs: list[Seg]) -> list[Seg]:
    return [s for s in segs if s.payload]


class BulkTransferTests(SynchronousTestCase):
    def transfer(self, v6: bool, mtu: int, up: int, down: int) -> Net:
        net = Net.pair(v6=v6, mtu=mtu, seed=up + down)
        t = Transfer(net, payload(up, 1), payload(down, 2)).start()
        t.run(timeout=60)
        assert t.client is not None and t.server is not None
        self.assertEqual(sha(net.b.data_received(t.server)), sha(t.up))
        self.assertEqual(sha(net.a.data_received(t.client)), sha(t.down))
        self.assertEqual(net.b.eof, [t.server])
        self.assertEqual(net.a.eof, [t.client])
        self.assertEqual(net.a.closed, {t.client: None})
        self.assertEqual(net.b.closed, {t.server: None})
        # never a packet over the MTU, and every checksum right
        self.assertEqual(net.problems, [])
        for host in net.hosts:
            self.assertLessEqual(max(len(p) for p in host.sent), mtu)
        # full-sized segments: only the last one of each direction may be short (the MSS
        # less the 12 bytes of timestamps every segment carries)
        mss = mtu - (60 if v6 else 40) - 12
        for host, size in ((net.a, up), (net.b, down)):
            sizes = [len(s.payload) for s in data_segments(host.segments())]
            self.assertEqual(sum(sizes), size)  # no loss: nothing sent twice
            self.assertEqual(sizes[:-1], [mss] * (len(sizes) - 1))
        return net

    def test_ipv4_upload(self) -> None:
        self.transfer(False, 1280, 2_000_000, 0)

    def test_ipv4_download(self) -> None:
        self.transfer(False, 1280, 0, 2_000_000)

    def test_ipv4_both_ways(self) -> None:
        self.transfer(False, 1420, 700_000, 900_000)

    def test_ipv6_both_ways(self) -> None:
        self.transfer(True, 1280, 900_000, 700_000)

    def test_ipv6_large_mtu(self) -> None:
        self.transfer(True, 9000, 1_000_000, 10)

    def test_small_mtu(self) -> None:
        self.transfer(False, 576, 100_000, 100_000)

    def test_advertised_window_is_the_scaled_receive_buffer(self) -> None:
        net = Net.pair(receive_buffer=MIB, receive_buffer_max=MIB)  # no autotuning
        client, server = connected_pair(net)
        client.send(payload(500_000))
        net.run(lambda: len(net.b.data_received()) == 500_000)
        acks = [s for s in net.b.segments() if s.is_pure_ack]
        self.assertGreater(len(acks), 5)
        for seg in acks:
            self.assertEqual(seg.window, MIB >> 7)
            self.assertEqual(seg.window << 7, MIB)
        self.assertEqual(client.snd_wnd, MIB)
        self.assertEqual(server.receive_buffer, MIB)

    def test_window_follows_a_smaller_receive_buffer(self) -> None:
        net = Net.pair(receive_buffer=200_000)
        client, server = connected_pair(net)
        self.assertEqual(client.snd_wnd, 0xFFFF)  # the SYN-ACK's, unscaled
        self.assertEqual(server.snd_wnd, (200_000 >> 7) << 7)  # the third ACK's, scaled

    def test_data_written_before_established_is_sent(self) -> None:
        net = Net.pair()
        net.b.stack.listen(80)
        conn = net.a.connect(B4, 80)
        conn.send(b"early ")
        conn.send(b"bird")
        net.run(lambda: net.b.data_received() == b"early bird")
        self.assertIs(conn.state, State.ESTABLISHED)

    def test_psh_on_the_last_segment_of_a_write(self) -> None:
        net = Net.pair()
        client, _ = connected_pair(net)
        client.send(bytes(3000))
        net.run(lambda: len(net.b.data_received()) == 3000)
        segs = data_segments(net.a.segments())
        self.assertEqual([bool(s.flags & PSH) for s in segs], [False, False, True])

    def test_fin_rides_on_the_last_data_segment(self) -> None:
        net = Net.pair()
        client, server = connected_pair(net)
        client.send(bytes(2000))
        client.close()
        net.run(lambda: server in net.b.eof)
        segs = data_segments(net.a.segments())
        self.assertEqual([s.flags & FIN for s in segs], [0, FIN])
        self.assertEqual(net.b.data_received(), bytes(2000))

    def test_a_write_of_whole_segments_ends_as_any_write(self) -> None:
        """A write of exactly k full segments goes out as a burst: only its last segment
        carries PSH, and after close() also the FIN (the burst stops short of the data's end)."""
        for close in (False, True):
            net = Net.pair()
            client, _ = connected_pair(net)
            client.send(bytes(5 * client.mss))
            if close:
                client.close()
            net.run_for(0.5)
            self.assertEqual(net.b.data_received(), bytes(5 * client.mss))
            segs = data_segments(net.a.segments())
            self.assertEqual([len(s.payload) for s in segs], [client.mss] * 5)
            self.assertEqual([bool(s.flags & PSH) for s in segs], [False] * 4 + [True])
            self.assertEqual([s.flags & FIN for s in segs], [0] * 4 + [FIN if close else 0])

    def test_sequence_numbers_wrap(self) -> None:
        for loss in (0.0, 0.03):
            iss = MASK - 50_000
            a = Stack([A4], rng=FixedIss(iss, 1))
            b = Stack([B4], rng=FixedIss(iss - 7, 2))
            net = Net(a, b, LinkProfile(loss=loss, reorder=0.1), seed=5)
            t = Transfer(net, payload(300_000, 3), payload(200_000, 4)).start()
            t.run()
            assert t.client is not None and t.server is not None
            self.assertEqual(t.client.iss, iss)
            self.assertEqual(net.b.data_received(t.server), t.up)
            self.assertEqual(net.a.data_received(t.client), t.down)
            self.assertEqual(net.a.closed, {t.client: None})
            self.assertEqual(net.b.closed, {t.server: None})
            self.assertGreater(t.client.snd_max, 1 << 32)  # really went past the wrap


class ReceiverAckTests(SynchronousTestCase):
    """What the receiving side acknowledges, and when (fed by a hand-driven peer)."""

    def setUp(self) -> None:
        self.stack = listening_stack()
        self.peer, self.conn, _ = raw_established(self.stack)
        self.mss = self.conn.mss
        self.assertEqual(self.mss, 1240)

    def received(self) -> bytes:
        return b"".join(d for k, c, d in self.stack.events if k == tcp.DATA and c is self.conn)

    def test_one_ack_per_two_full_segments(self) -> None:
        peer = self.peer
        start = peer.seq
        for i in range(6):
            out = peer.push(bytes([i]) * self.mss, T0 + 0.001 * i)
            if i % 2 == 0:
                self.assertEqual(out, [], f"segment {i} was acknowledged at once")
            else:
                self.assertEqual(len(out), 1)
                self.assertTrue(out[0].is_pure_ack)
                self.assertEqual(out[0].ack, peer.seq & MASK)
        self.assertEqual(peer.seq - start, 6 * self.mss)
        self.assertEqual(len(self.received()), 6 * self.mss)

    def test_two_segments_in_one_batch_get_one_ack(self) -> None:
        peer, stack = self.peer, self.stack
        for _ in range(2):
            stack.receive(peer.packet(ACK, data=bytes(self.mss)), T0)
            peer.seq += self.mss
        stack.flush(T0)
        out = peer.take()
        self.assertEqual([s.ack for s in out], [peer.seq & MASK])

    def test_lone_segment_acked_after_the_delayed_ack_timeout(self) -> None:
        peer, stack = self.peer, self.stack
        self.assertEqual(tcp.DELAYED_ACK, 0.02)
        self.assertEqual(peer.push(b"lonely", T0), [])
        self.assertEqual(stack.next_deadline(), T0 + 0.02)
        stack.tick(T0 + 0.019)
        self.assertEqual(peer.take(), [])
        stack.tick(T0 + 0.02)
        out = peer.take()
        self.assertEqual(len(out), 1)
        self.assertTrue(out[0].is_pure_ack)
        self.assertEqual(out[0].ack, peer.seq & MASK)
        self.assertIsNone(stack.next_deadline())
        self.assertEqual(self.received(), b"lonely")

    def test_out_of_order_segment_gets_immediate_dup_ack_with_sack(self) -> None:
        peer, mss = self.peer, self.mss
        base = peer.seq
        chunks = [bytes([i]) * mss for i in range(5)]
        self.assertEqual(peer.push(chunks[0], T0), [])  # in order: delayed
        peer.seq += mss  # chunk 1 is "lost"
        out = peer.push(chunks[2], T0)
        self.assertEqual(len(out), 1)
        self.assertTrue(out[0].is_pure_ack)
        self.assertEqual(out[0].ack, (base + mss) & MASK)
        self.assertEqual(out[0].options.sack, [((base + 2 * mss) & MASK, (base + 3 * mss) & MASK)])
        out = peer.push(chunks[3], T0)
        self.assertEqual(out[0].ack, (base + mss) & MASK)
        self.assertEqual(out[0].options.sack, [((base + 2 * mss) & MASK, (base + 4 * mss) & MASK)])
        # the hole filled: everything acknowledged at once, no SACK left
        peer.seq = base + mss
        out = peer.push(chunks[1], T0)
        self.assertEqual(len(out), 1)
        self.assertEqual(out[0].ack, (base + 4 * mss) & MASK)
        self.assertEqual(out[0].options.sack, [])
        self.assertEqual(out[0].raw_options, b"")
        self.assertEqual(self.received(), b"".join(chunks[:4]))
        self.assertEqual(self.conn.ooo, [])
        self.assertEqual(self.conn.ooo_bytes, 0)

    def test_at_most_three_sack_blocks(self) -> None:
        peer, mss = self.peer, self.mss
        base = peer.seq
        for i in (1, 3, 5, 7, 9):
            peer.seq = base + i * mss
            out = peer.push(bytes(mss), T0)
        blocks = out[0].options.sack
        self.assertEqual(len(blocks), 3)
        self.assertLessEqual(len(out[0].raw_options), 40)
        self.assertEqual(out[0].ack, base & MASK)

    def test_first_sack_block_holds_the_segment_just_received(self) -> None:
        """RFC 2018 section 4: the first SACK block MUST contain the segment that triggered
        the ACK. BUG: _sack_blocks (tcp.py:250-252) reports the highest block first instead."""
        peer, mss = self.peer, self.mss
        base = peer.seq
        peer.seq = base + 5 * mss
        peer.push(bytes(mss), T0)
        peer.seq = base + 2 * mss
        out = peer.push(bytes(mss), T0)
        first = out[0].options.sack[0]
        self.assertEqual(first, ((base + 2 * mss) & MASK, (base + 3 * mss) & MASK))

    def test_overlapping_retransmission_delivers_only_new_bytes(self) -> None:
        peer = self.peer
        base = peer.seq
        peer.push(b"abcdef", T0)
        peer.seq = base + 3
        peer.push(b"defghi", T0)
        self.assertEqual(self.received(), b"abcdefghi")

    def test_duplicate_segment_is_acked_not_delivered_twice(self) -> None:
        peer = self.peer
        peer.push(b"once", T0)
        peer.seq -= 4
        out = peer.push(b"once", T0)
        self.assertEqual(len(out), 1)
        self.assertEqual(out[0].ack, peer.seq & MASK)
        self.assertEqual(self.received(), b"once")

    def test_out_of_order_segments_merge_into_blocks(self) -> None:
        """Held segments that touch form one block (one SACK block); overlaps keep only the
        new bytes; filling the hole delivers everything in order."""
        peer = self.peer
        base = peer.seq
        data = bytes(range(256)) * 4
        for start, end in ((300, 400), (500, 600), (250, 450), (400, 500), (350, 700), (200, 310)):
            peer.seq = base + start
            peer.push(data[start:end], T0)
        self.assertEqual(
            [(b.start - self.conn.rcv_nxt, b.end - self.conn.rcv_nxt) for b in self.conn.ooo],
            [(200, 700)],
        )
        self.assertEqual(self.conn.ooo_bytes, 500)
        peer.seq = base + 800
        out = peer.push(data[800:900], T0)
        sack = out[-1].options.sack
        self.assertEqual([(s - base) & MASK for s, _ in sack], [800, 200])
        peer.seq = base
        peer.push(data[:200], T0)
        self.assertEqual(self.received(), data[:700])
        self.assertEqual(len(self.conn.ooo), 1)
        peer.seq = base + 700
        peer.push(data[700:800], T0)
        self.assertEqual(self.received(), data[:900])
        self.assertEqual((self.conn.ooo, self.conn.ooo_bytes, self.conn.ooo_count), ([], 0, 0))

    def test_duplicate_out_of_order_segment_stored_once(self) -> None:
        peer = self.peer
        base = peer.seq
        for _ in range(50):
            peer.seq = base + 100
            peer.push(b"x" * 100, T0)
        self.assertEqual(len(self.conn.ooo), 1)
        self.assertEqual(self.conn.ooo_bytes, 100)

    def test_data_segments_carry_sack_blocks_without_exceeding_the_mtu(self) -> None:
        """Every packet must fit the MTU (REFERENCE.md). BUG: _send_segment (tcp.py:264) adds
        SACK blocks to full-sized data segments, which are then 12-28 bytes over the MTU:
        the MSS is not reduced by the option length (RFC 9293 3.7.1, Linux tcp_current_mss)."""
        peer, conn, stack = self.peer, self.conn, self.stack
        peer.seq += 500  # a hole: the next segment goes into the out-of-order queue
        peer.push(b"y" * 100, T0)
        conn.send(bytes(5000))
        stack.flush(T0)
        segs = [s for s in peer.take() if s.payload]
        self.assertGreater(len(segs), 1)
        for seg in segs:
            self.assertLessEqual(seg.length, stack.mtu, f"{seg.length}-byte packet")
