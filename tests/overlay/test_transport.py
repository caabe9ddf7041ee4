"""What the overlay transport hands its protocol: bounded reads, and nothing while paused.

The stack queues DATA events and may hand over a filled hole's megabytes as one; a protocol
that pauses (its consumer is full) must get no more until it resumes, or it would buffer what
the paused stream was meant to hold back (the plugin proxy's backend side grew to 2.3 MiB so).
Driven by hand on a real connection of the sans-IO stack, with a fake clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from funnel_tw.netstack import tcp
from funnel_tw.overlay.transport import READ_CHUNK, OverlayTCPTransport
from tests.netstack.tcp_harness import Net, connected_pair, payload


class Owner:
    """Runs the stack's events to the transports, as the userspace interface does."""

    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self.reactor = Clock()
        self.dispatched = 0  # DATA events handed to a transport

    def flush_soon(self) -> None:
        pass

    def dispatch_and_flush(self) -> None:
        while self.stack.events:
            events, self.stack.events = self.stack.events, []
            for kind, conn, data in events:
                if kind == tcp.DATA:
                    self.dispatched += 1
                    conn.app._data(data)


class Pausing(protocol.Protocol):
    """Records each read; pauses its transport once it has ``limit`` bytes unconsumed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.reads: list[bytes] = []
        self.unconsumed = 0

    def dataReceived(self, data: bytes) -> None:
        self.reads.append(data)
        self.unconsumed += len(data)
        if self.unconsumed >= self.limit:
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def consume(self) -> None:
        self.unconsumed = 0
        self.transport.resumeProducing()  # type: ignore[union-attr]

    def received(self) -> bytes:
        return b"".join(self.reads)


class DeliveryTests(TestCase):
    def setUp(self) -> None:
        net = Net.pair()
        _client, self.conn = connected_pair(net)
        self.owner = Owner(net.b.stack)
        net.b.stack.events.clear()

    def attach(self, proto: Pausing) -> OverlayTCPTransport:
        return OverlayTCPTransport(self.owner, self.conn, proto)  # type: ignore[arg-type]

    def test_a_large_delivery_is_read_in_chunks_up_to_a_pause(self) -> None:
        proto = Pausing(limit=2 * READ_CHUNK)
        proto.makeConnection(self.attach(proto))
        data = payload(3 * 1024 * 1024)
        self.conn.app._data(data)
        self.assertEqual([len(r) for r in proto.reads], [READ_CHUNK, READ_CHUNK])
        self.assertEqual(self.conn.held_bytes, len(data) - 2 * READ_CHUNK)  # still in the window
        while self.conn.held_bytes:
            before = len(proto.received())
            proto.consume()
            self.assertLessEqual(len(proto.received()) - before, 2 * READ_CHUNK)
            self.assertTrue(all(len(r) <= READ_CHUNK for r in proto.reads))
        self.assertEqual(proto.received(), data)

    def test_queued_data_after_a_pause_is_held_in_order(self) -> None:
        proto = Pausing(limit=1000)
        transport = self.attach(proto)
        proto.makeConnection(transport)
        parts = [payload(1500, seed) for seed in range(5)]
        for part in parts:  # five DATA events queued before the protocol runs
            self.conn.stack.emit(tcp.DATA, self.conn, part)
        self.owner.dispatch_and_flush()
        self.assertEqual(proto.reads, parts[:1])  # paused by the first: no more
        self.assertEqual(self.conn.held_bytes, 4 * 1500)
        while self.conn.held_bytes:
            proto.consume()
        self.assertEqual(proto.received(), b"".join(parts))

    def test_resume_hands_over_what_the_reader_takes_not_every_held_chunk(self) -> None:
        # The relay splices a download into a public socket that pauses it after each 64 KiB;
        # behind it, a full window (~4,000 segments) was held. Each resume used to queue
        # every held segment as an event, to be handed back and copied again at once: the
        # download fell to 16 MB/s. Now a resume costs the chunks taken.
        proto = Pausing(limit=READ_CHUNK)
        proto.makeConnection(self.attach(proto))
        self.conn.pause_reading()
        parts = [payload(1400, seed) for seed in range(3000)]
        for part in parts:
            self.conn.hold(part)
        rounds = 0
        while self.conn.held_bytes:
            reads = len(proto.reads)
            proto.consume()
            # held segments are joined into reads of up to READ_CHUNK, as a socket reads:
            # the reader pauses after its second one (64 KiB unconsumed)
            self.assertLessEqual(len(proto.reads) - reads, 2)
            rounds += 1
        self.assertEqual(self.owner.dispatched, 0)  # taken from the held list, no events
        self.assertEqual(proto.received(), b"".join(parts))
        self.assertTrue(all(len(r) <= READ_CHUNK for r in proto.reads))
        self.assertLess(len(proto.reads), len(parts) // 40)  # a read per 46 segments, not 1
        self.assertGreater(rounds, 30)

    def test_a_pause_and_resume_inside_a_read_keeps_the_order(self) -> None:
        proto = Pausing(limit=10**9)
        transport = self.attach(proto)
        proto.makeConnection(transport)
        self.conn.pause_reading()
        parts = [payload(1400, seed) for seed in range(300)]
        for part in parts:
            self.conn.hold(part)

        def read(data: bytes) -> None:
            proto.reads.append(data)
            if len(proto.reads) % 2:  # e.g. a TLS layer pausing and resuming at once
                transport.pauseProducing()
                transport.resumeProducing()

        proto.dataReceived = read  # type: ignore[method-assign]
        transport.resumeProducing()
        self.assertEqual(proto.received(), b"".join(parts))
        self.assertGreater(len(proto.reads), 4)  # several reads, each resumed inside one
        self.assertTrue(all(len(r) <= READ_CHUNK for r in proto.reads))
        self.assertEqual(self.conn.held_bytes, 0)

    def test_nothing_after_the_protocol_lets_go(self) -> None:
        proto = Pausing(limit=10**9)
        transport = self.attach(proto)
        proto.makeConnection(transport)
        proto.dataReceived = lambda data: (  # type: ignore[method-assign]
            proto.reads.append(data),
            transport.loseConnection(),
        )
        self.conn.app._data(payload(4 * READ_CHUNK))
        self.assertEqual(len(proto.reads), 1)
        self.assertEqual(self.conn.held_bytes, 0)  # dropped, not held: it let go
