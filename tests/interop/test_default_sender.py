"""Our default TCP sending over issue 12's two 20 ms paths, into wireguard-go and Linux.

Our node (the defaults: CUBIC with HyStart++, pacing, RACK-TLP, D-SACK and undo) sends to
Linux's TCP through Debian's wireguard-go and the seeded impairment relay (10 ms each way;
tests/interop/wan.py), then Linux's own default, CUBIC, sends to Linux the same way through
the same relay seed: the same receiver, only the sender differs. Ours must move at least 1.2x
what Linux's CUBIC moves, on the clean path and on the one where 3 % of the datagrams are
held 5 ms more. Debian's wireguard-go keeps the kernel's 208 KiB socket, which drops datagrams
whenever its reader falls behind; a sender that cuts its window on every drop without pacing,
or that reads reordering as loss, falls far below Linux's.

Issue 12 measured our sender at 33 Mbit/s clean and 4 reordered; Linux's CUBIC into this
receiver moves 36-52 and 81-97 (2026-12-08). Ours now: 173-192 and 152-166, 3.7-4.9x and
1.6-2.0x it (``bench/tcp_wan.py --rtt 20 --paths clean,reorder --pairs ours-linux,linux-linux
--linux-cc cubic``, seeds 1-3; docs/netstack.md). The issue's own ratio, ours sending against
Linux sending *to us*, compares two receivers (ours takes 400-650 Mbit/s, wireguard-go +
Linux 50-460) and stays an opt-in test (test_tcp_wan.py).
"""

from __future__ import annotations

from twisted.python import log
from twisted.trial.unittest import SynchronousTestCase

from tests.interop import netns as h
from tests.interop.wan import Cell, WanPairs

RTT_MS = 20
SECONDS = 4.0
SEED = 6_020
TARGET = 1.2  # issue 12's start: ~0.6-0.9 clean, ~0.05 reordered; now 3.7-4.9 and 1.6-2.0


class DefaultSenderTests(SynchronousTestCase):
    def setUp(self) -> None:
        h.skip_unless_interop(self)

    def check(self, path: str) -> None:
        pairs = WanPairs.for_test(self.addCleanup, SECONDS, log=log.msg, linux_cc="cubic")
        cell = pairs.run_pairs(Cell(RTT_MS, path, SEED), ("ours-linux", "linux-linux"), ("xy",))
        self.assertEqual(cell.failures, {}, f"{cell}")
        ours = cell.transfers[("ours-linux", "xy")]
        linux = cell.transfers[("linux-linux", "xy")]
        ratio = ours.mbit / max(linux.mbit, 1e-9)
        report = (
            f"{RTT_MS} ms {path} (seed {SEED}): ours (CUBIC) to Linux {ours.mbit:.1f} Mbit/s, "
            f"Linux's CUBIC to Linux {linux.mbit:.1f}, ratio {ratio:.2f} (at least {TARGET}); "
            f"drops at wireguard-go's socket {ours.drops} / {linux.drops}; our sender "
            f"{ours.sent.get('info')}; Linux {linux.sent.get('info')}; relay {cell.relay}"
        )
        log.msg(f"{self.id()}: {report}")
        for pair in ("ours-linux", "linux-linux"):  # the path is what it claims to be
            self.assertGreaterEqual(cell.ping[pair], RTT_MS / 1000, report)
            relay = cell.relay[pair]
            reordered = relay["up"]["reordered"] + relay["down"]["reordered"]
            self.assertEqual(reordered > 0, path == "reorder", report)
        self.assertGreater(linux.mbit, 0, report)
        self.assertGreaterEqual(ratio, TARGET, report)

    def test_clean_20ms(self) -> None:
        self.check("clean")

    def test_reordered_20ms(self) -> None:
        """3 % of the datagrams held 5 ms more."""
        self.check("reorder")
