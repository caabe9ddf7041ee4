"""The send buffer: writes kept as they came, segments cut from them by sequence number.

Byte-exactness over lossy, reordering links with writes of every size (pieces joined, pieces
split across segments, retransmissions that span pieces), nothing copied when written, and
the acknowledged front let go while the transfer runs.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.netstack import tcp
from funnel_tw.netstack.tcp.sendq import CHUNK_JOIN

from .tcp_harness import LinkProfile, Net, connected_pair, payload

MIB = 1 << 20


def write_all(client: tcp.Connection, data: bytes, sizes: list[int]) -> None:
    at = 0
    for size in sizes:
        client.send(data[at : at + size])
        at += size
    client.send(data[at:])


class PiecesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = Net.pair(seed=1)
        self.client, _ = connected_pair(self.net)

    def test_a_large_write_is_kept_not_copied(self) -> None:
        data = payload(100_000)
        self.client.send(data)
        self.assertIs(self.client.sndq[-1], data)
        self.assertEqual(self.client.send_buffered, 100_000)

    def test_small_writes_are_joined_up_to_the_limit(self) -> None:
        client = self.client
        for i in range(40):
            client.send(bytes([i]) * 1000)
        # 16 writes of 1000 fill a piece of at most CHUNK_JOIN, the next begins another
        self.assertEqual([len(c) for c in client.sndq], [16000, 16000, 8000])
        self.assertEqual(client.sndq_starts, [0, 16000, 32000])
        self.assertLessEqual(max(map(len, client.sndq)), CHUNK_JOIN)
        # joined in place: a tiny write costs its own bytes, not a copy of the piece so far
        tail = client.sndq[-1]
        client.send(b"y")
        self.assertIs(client.sndq[-1], tail)
        self.assertEqual(client._segment_bytes(client._data_end() - 2, 2), bytes([39, 121]))

    def test_bytes_are_found_across_pieces(self) -> None:
        client = self.client
        data = payload(70_000, 5)
        write_all(client, data, [17_000, 5, 20_000, 1, 1, 16_390])
        una = client.buf_seq
        spans = [(0, 1240), (16_990, 1240), (16_999, 20_010), (37_000, 33_000), (0, 70_000)]
        for start, n in spans:
            self.assertEqual(client._segment_bytes(una + start, n), data[start : start + n])
            buffer, offset = client._run_data(una + start, n)
            self.assertEqual(bytes(buffer[offset : offset + n]), data[start : start + n])
        buffer, offset = client._run_data(una + 100, 1240)
        self.assertIs(buffer, client.sndq[0])  # within one piece: that piece, no copy
        self.assertEqual(offset, 100)


class TransferTests(SynchronousTestCase):
    def transfer(self, profile: LinkProfile, sizes: list[int], seed: int) -> None:
        net = Net.pair(profile=profile, seed=seed)
        client, server = connected_pair(net)
        total = sum(sizes) + 1000
        data = payload(total, seed)
        write_all(client, data, sizes)

        def done() -> bool:
            received = sum(map(len, net.b.received.values()))
            return received >= total and client.send_buffered == 0

        net.run(done, timeout=600, max_steps=400_000)
        self.assertEqual(net.b.data_received(server), data)
        self.assertEqual((client.sndq, client.sndq_starts, client.buf_len), ([], [], 0))

    @settings(max_examples=25, deadline=None)
    @given(
        sizes=st.lists(st.integers(1, 40_000), min_size=1, max_size=60),
        seed=st.integers(0, 10_000),
    )
    def test_any_writes_arrive_exact_over_a_lossy_reordering_link(
        self, sizes: list[int], seed: int
    ) -> None:
        profile = LinkProfile(latency=0.005, loss=0.05, duplicate=0.02, reorder=0.1)
        self.transfer(profile, sizes, seed)

    def test_the_acknowledged_front_is_let_go_during_a_transfer(self) -> None:
        """16 MiB written in TLS-record-sized pieces over a 20 ms path by a producer that
        keeps the buffer at its limit: while it runs, the pieces before ``sndq_head`` are
        released, and the list is trimmed now and then, so what is held stays what is
        unacknowledged."""
        net = Net.pair(profile=LinkProfile(latency=0.01), seed=2)
        client, _ = connected_pair(net)
        record = 16_406
        chunks = [random.Random(i).randbytes(record) for i in range(4)]
        written = 0
        total = 16 * MIB
        peaks: list[int] = []
        lengths: list[int] = []

        def limit() -> int:
            return client.send_limit

        def produce(kind: int = tcp.DRAINED, conn: object = None, data: object = None) -> None:
            nonlocal written
            # as the overlay transport does: write until above the limit, then wait for DRAINED
            while kind == tcp.DRAINED and written < total and client.send_buffered <= limit():
                client.send(chunks[(written // record) % 4])
                written += record

        def done() -> bool:
            held = sum(map(len, client.sndq))
            peaks.append(held - client.send_buffered)  # bytes held that were acknowledged
            lengths.append(len(client.sndq))
            self.assertTrue(all(c == b"" for c in client.sndq[: client.sndq_head]))
            return written >= total and client.send_buffered == 0

        net.a.on_event = produce
        produce()
        net.run(done, timeout=120, max_steps=2_000_000)
        self.assertEqual(sum(map(len, net.b.received.values())), written)
        self.assertLessEqual(max(peaks), record)  # at most the piece the ACK points into
        # the places of released pieces are dropped once they are half the list
        most = (tcp.SEND_BUFFER_MAX + 2 * record) // record
        self.assertGreater(max(lengths), most // 2)
        self.assertLessEqual(max(lengths), 2 * most + 64)
