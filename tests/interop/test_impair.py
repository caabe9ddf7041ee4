"""The WAN emulator itself (tests/interop/impair.py), on loopback: delay, reordering and order.

The bench and the over-distance tests measure through it, so what it does to datagrams is
tested here: each is held the path's delay (plus at most the slack), a reordered one its extra
hold as well, and the others keep their order whatever is held beside them.
"""

from __future__ import annotations

import socket
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.interop.impair import Direction, Impairment, Relay

COUNT = 400


class ImpairmentRelayTests(SynchronousTestCase):
    def through(
        self, impairment: Impairment, slack: float
    ) -> tuple[list[int], dict[int, float], dict[int, float]]:
        """Send COUNT numbered datagrams (in bursts of 20, 1 ms apart) into a relay; the
        numbers in the order they came out, and when each was sent and arrived."""
        far = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        far.bind(("127.0.0.1", 0))
        far.settimeout(0.5)
        self.addCleanup(far.close)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            listen = probe.getsockname()
        relay = Relay(listen, far.getsockname(), 7, impairment, slack)
        runner = threading.Thread(target=relay.run, args=(10.0,), daemon=True)
        runner.start()
        self.addCleanup(runner.join, 5)
        self.addCleanup(relay.stop)
        order: list[int] = []
        arrived: dict[int, float] = {}

        def receive() -> None:  # at once, so the far socket's buffer never overflows
            try:
                while len(order) < COUNT:
                    data = far.recv(2048)
                    arrived[int.from_bytes(data[:4], "big")] = time.monotonic()
                    order.append(int.from_bytes(data[:4], "big"))
            except OSError:  # timed out: what came is the answer
                pass

        receiver = threading.Thread(target=receive, daemon=True)
        receiver.start()
        near = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(near.close)
        sent: dict[int, float] = {}
        for n in range(COUNT):
            if n % 20 == 0:
                time.sleep(0.001)
            sent[n] = time.monotonic()
            near.sendto(n.to_bytes(4, "big") + bytes(996), listen)
        receiver.join(10)
        return order, sent, arrived

    def test_delay_keeps_the_order(self) -> None:
        delay, slack = 0.02, 0.0005
        order, sent, arrived = self.through(Impairment(delay=delay), slack)
        self.assertEqual(order, list(range(COUNT)))
        late = [arrived[n] - sent[n] for n in order]
        self.assertGreaterEqual(min(late), delay)
        self.assertLess(sorted(late)[COUNT // 2], delay + slack + 0.005)

    def test_held_datagrams_are_overtaken_and_the_rest_stay_in_order(self) -> None:
        """With 10 % held 5 ms more, exactly the datagrams the seeded draws pick come late
        (the same draws as ``Direction`` makes), and the others arrive in their order."""
        impairment = Impairment(delay=0.01, reorder=0.1, reorder_extra=0.005)
        order, sent, arrived = self.through(impairment, 0.0005)
        self.assertEqual(sorted(order), list(range(COUNT)))
        same = Direction("up", 7, impairment)
        held = {n for n in range(COUNT) if same.fate() != impairment.delay}
        self.assertTrue(20 < len(held) < 60, len(held))
        rest = [n for n in order if n not in held]
        self.assertEqual(rest, sorted(rest))
        overtaken = [n for n in held if order.index(n) > order.index(min(n + 1, COUNT - 1))]
        self.assertGreater(len(overtaken), len(held) // 2)
        for n in held:
            self.assertGreaterEqual(arrived[n] - sent[n], 0.015)

    def test_the_draws_do_not_depend_on_timing(self) -> None:
        """The n-th datagram's fate is the seed's, not the clock's: two relays with one seed
        drop the same datagrams."""
        impairment = Impairment(delay=0.002, loss=0.2)
        first = self.through(impairment, 0.0)[0]
        second = self.through(impairment, 0.002)[0]
        self.assertEqual(first, second)
        self.assertTrue(0.6 * COUNT < len(first) < 0.95 * COUNT)
