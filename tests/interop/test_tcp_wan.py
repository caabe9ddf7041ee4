"""Issue 12's targets on a 20 ms path: our TCP sending at least 0.8x what Linux sends.

One pair of namespaces: our userspace node overlay (WireGuard + our TCP) in X, wireguard-go and
the kernel's TCP in Y, and the seeded UDP impairment relay between the two WireGuard ends
adding 10 ms each way (tests/interop/wan.py). In the same run and through the same relay, we
send to the kernel for 4 s, then the kernel sends to us for 4 s; the rate of what we sent must
be at least 0.8x the rate of what Linux sent. Two paths: clean, and 3 % of the datagrams held
5 ms more (reordering).

These failed at the start of issue 12 (0.09 and 0.02). With RACK-TLP, D-SACK, pacing and
CUBIC the reordered path reaches 0.5-0.8 and the clean one 0.3-0.5 with Debian's wireguard-go
(0.0.20220316), whose UDP socket keeps the kernel's 208 KiB: our sender meets 50-300 drops
there a transfer, settles near the window of the first losses, and Linux sending to us is
not the same receiver (ours takes 600+ Mbit/s, wireguard-go + Linux ~450).
``CurrentWireGuardGoTests`` separates the two: wireguard-go's socket as current wireguard-go
sets it, and the same receiver on both sides of the ratio; there ours sends 0.82-1.10x what
Linux sends (2026-12-06, quiet machine; docs/netstack.md). Both classes stay skipped unless
FUNNEL_TW_TCP_WAN=1: a plain skip, not ``require_interop``, since the figures swing with the
machine's load and CI must not fail on a busy machine. Figures go to the trial log; for the
why, run ``bench/tcp_wan.py --rtt 20 --pairs ours-linux --trace DIR``.

The Linux sender here is BBR, this machine's default and what the issue's figures were taken
with; BBR does not back off on the 208 KiB socket's drops. Against Linux's own default,
CUBIC, into the same receiver our sender moves 2.2-3.3x more (2026-12-07:
``bench/tcp_wan.py --linux-cc cubic``, docs/netstack.md), and on the issue's ratio Linux's
own BBR sending into wireguard-go + Linux gets 0.56-0.67 of it sending to us: the ratio
compares two receivers. Measured 2026-12-07 (late): 0.31 clean, 0.44 reordered here; 1.25
and 2.08 with ``CurrentWireGuardGoTests``.
"""

from __future__ import annotations

import os
import shutil
import unittest

from twisted.python import log
from twisted.trial.unittest import SynchronousTestCase

from tests.interop import netns as h
from tests.interop.wan import Cell, WanPairs

ENV = "FUNNEL_TW_TCP_WAN"
TARGET = 0.8
RTT_MS = 20
SECONDS = 4.0
SEED = 12_020  # the relay's decisions; a failing run repeats with the same seed


class TcpOverDistanceTests(SynchronousTestCase):
    """Each test builds its pair, measures both directions, and deletes everything."""

    wg_rcvbuf = 0  # wireguard-go as Debian ships it
    # the Linux ends' congestion control: BBR, this machine's default, which the issue's
    # figures were taken with (Debian's and upstream Linux's default is CUBIC)
    linux_cc = "bbr"
    pairs: tuple[str, ...] = ("ours-linux",)
    reference = ("ours-linux", "yx")  # Linux sending to us on the same pair: the ratio
    node_keys: tuple[str, ...] = ()  # our node's [node] keys beyond the defaults

    def setUp(self) -> None:
        if os.environ.get(ENV) != "1":
            raise unittest.SkipTest(
                f"issue 12's TCP-over-distance targets (about 1 min; the figures swing with "
                f"the machine's load): set {ENV}=1 to run them"
            )
        reason = h.interop_unavailable_reason()
        if reason is None and shutil.which("ss") is None:
            reason = "ss not installed"
        if reason is not None:
            raise unittest.SkipTest(reason)

    def measure(self, path: str) -> Cell:
        pairs = WanPairs.for_test(
            self.addCleanup,
            SECONDS,
            log=log.msg,
            wg_rcvbuf=self.wg_rcvbuf,
            linux_cc=self.linux_cc,
            node_keys=self.node_keys,
        )
        cell = Cell(RTT_MS, path, SEED)
        for pair in self.pairs:
            pairs.run_cell(pair, cell)
            # the path is what it claims to be: 20 ms round trips, and reordering when asked
            self.assertGreaterEqual(cell.ping[pair], RTT_MS / 1000, f"{cell.ping}")
            relay = cell.relay[pair]
            reordered = relay["up"]["reordered"] + relay["down"]["reordered"]
            if path == "reorder":
                self.assertGreater(reordered, 0, f"{relay}")
            else:
                self.assertEqual(reordered, 0, f"{relay}")
        self.assertEqual(cell.failures, {}, f"{cell}")
        return cell

    def check(self, path: str) -> None:
        cell = self.measure(path)
        ours = cell.transfers[("ours-linux", "xy")]
        linux = cell.transfers[self.reference]
        ratio = ours.mbit / max(linux.mbit, 1e-9)
        report = (
            f"{RTT_MS} ms {path}, seed {SEED}, wireguard-go receive buffer "
            f"{self.wg_rcvbuf or 'as shipped'}, Linux {self.linux_cc}, our node "
            f"{self.node_keys or 'defaults'}: ours sending "
            f"{ours.mbit:.1f} Mbit/s, Linux sending ({' '.join(self.reference)}) "
            f"{linux.mbit:.1f} Mbit/s, ratio {ratio:.2f} "
            f"(target {TARGET}); our sender's counters {ours.sent.get('info')}; datagrams "
            f"wireguard-go's socket dropped {ours.drops} / {linux.drops}; Linux sender "
            f"{linux.sent.get('info')}; relay {cell.relay}"
        )
        log.msg(f"{self.id()}: {report}")
        self.assertGreater(linux.mbit, 0, report)
        self.assertGreaterEqual(ratio, TARGET, report)

    def test_clean_20ms(self) -> None:
        """Clean path, 20 ms RTT: ours >= 0.8x Linux (issue 12 measured 33 vs 352 Mbit/s)."""
        self.check("clean")

    def test_reordered_20ms(self) -> None:
        """3 % of datagrams held 5 ms more, 20 ms RTT (issue 12 measured 4 vs 198 Mbit/s)."""
        self.check("reorder")


class CurrentWireGuardGoTests(TcpOverDistanceTests):
    """The same paths with wireguard-go's UDP socket as wireguard-go sets it itself since
    0.0.20230223 (7 MiB asked, SO_RCVBUFFORCE; Debian's 0.0.20220316 keeps 208 KiB), and the
    same receiver on both sides of the ratio: ours -> wireguard-go + Linux against Linux +
    wireguard-go -> wireguard-go + Linux. With the 208 KiB socket every sender meets drops
    (Linux -> Linux 5,000-10,000 a transfer) and the comparison measures how a sender bears
    them; with it gone, it measures the sender. Measured 2026-12-06 on a quiet machine with
    this seed: 0.82-1.05 clean, 0.98-1.10 reordered (bench/tcp_wan.py, seeds 1-3: 0.92-1.09
    and 0.95-1.09)."""

    wg_rcvbuf = 7 << 20
    pairs = ("ours-linux", "linux-linux")
    reference = ("linux-linux", "xy")


class BbrOverDistanceTests(TcpOverDistanceTests):
    """The issue's own setting (Debian's wireguard-go, Linux's BBR sending to us as the
    reference) with our node's ``tcp-congestion = bbr``: a sender that, like Linux's BBR,
    does not read the 208 KiB socket's drops as congestion. Measured 2026-12-08: 0.74 clean
    (351 vs 475 Mbit/s), 0.91 reordered (283 vs 310); with ACK aggregation 1.32 (391 vs 296)
    and 0.87 (318 vs 364); at the session's end 1.25 (372 vs 298) and 1.59 (316 vs 198).
    bench/tcp_wan.py over the day: 0.59-1.04 and 0.74-1.06, and 1.01-1.45 / 0.92-1.24 x
    Linux's BBR into the same receiver (our CUBIC: 0.30-0.42 and 0.33-0.59; docs/netstack.md,
    "BBR")."""

    node_keys = ("tcp-congestion = bbr",)
