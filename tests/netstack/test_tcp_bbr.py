"""BBR (tcp-congestion = bbr): the model's arithmetic fed fixed numbers, then connections over
a simulated bottleneck, against CUBIC on the same link."""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.netstack import tcp
from funnel_tw.netstack.stack import Stack
from funnel_tw.netstack.tcp.bbr import (
    CWND_GAIN,
    CYCLE,
    DRAIN,
    HIGH_GAIN,
    MIN_RTT_WINDOW,
    MIN_SEGMENTS,
    PACING_MARGIN,
    PROBE_BW,
    PROBE_RTT,
    PROBE_RTT_TIME,
    STARTUP,
    Bbr,
)

from .tcp_harness import (
    LinkProfile,
    Net,
    Transfer,
    connected_pair,
    payload,
    random_profile,
    sha,
)

MSS = 1000
RTT = 0.02
T = 1000.0  # a clock far from zero, as the stack's


class Path:
    """A fixed path for the model alone: ``rate`` bytes per second, ``RTT``; one call of
    :meth:`round` is a round trip of ACKs, each for ``ack`` bytes."""

    def __init__(self, bbr: Bbr, rate: float, ack: int = 2 * MSS) -> None:
        self.bbr = bbr
        self.rate = rate
        self.ack = ack
        self.now = T
        self.una = 0
        self.cwnd = 10 * MSS
        self.rtt = RTT

    def round(
        self, lost: int = 0, app_limited: bool = False, within: tuple[float, float] = (0, 1)
    ) -> None:
        """What the window allows, at most the path's rate, is delivered over one RTT; each
        ACK lets the sender send as much again (what is in flight stays a round's worth).
        ``within``: the part of the round the ACKs come back in (bunched), as fractions."""
        deliver = int(min(self.cwnd, self.rate * self.rtt))
        steps = max(deliver // self.ack, 1)
        start = self.now
        lo, hi = within
        for i in range(steps):
            self.now = start + self.rtt * (lo + (hi - lo) * (i + 1) / steps)
            self.una += self.ack
            snd_max = self.una + deliver
            if app_limited:
                self.bbr.note_app_limited(snd_max)
            self.cwnd = self.bbr.ack(
                self.cwnd, self.ack, lost if i == 0 else 0, self.rtt, self.now, self.una,
                snd_max, deliver, 2 * MSS,
            )  # fmt: skip
        self.now = start + self.rtt


class ModelTests(SynchronousTestCase):
    def test_startup_exits_when_growth_stops_not_before(self) -> None:
        """A rate that keeps doubling keeps STARTUP going (no full pipe from a slow first
        round or two)."""
        bbr = Bbr(MSS)
        path = Path(bbr, rate=1e12)
        for _ in range(12):
            path.round()
        self.assertEqual(bbr.state, STARTUP)
        self.assertFalse(bbr.full_bw_reached)

    def test_a_round_lasts_a_round_trip(self) -> None:
        """A paced sender with little in flight gets it all delivered within a few ms: each
        such ACK must not end a round, or three "rounds" without growth end STARTUP within
        one round trip (a run of ours to ours at 20 ms left STARTUP at 8 Mbit/s that way and
        spent its 4 s climbing back in PROBE_BW: 100 instead of 800 Mbit/s)."""
        bbr = Bbr(MSS)
        una, now, cwnd = 0, T, 10 * MSS
        for _ in range(25):  # 50 ms: two segments every 2 ms, two in flight
            now += 0.002
            una += 2 * MSS
            cwnd = bbr.ack(cwnd, 2 * MSS, 0, RTT, now, una, una + 2 * MSS, 2 * MSS, 2 * MSS)
        self.assertFalse(bbr.full_bw_reached)
        self.assertEqual(bbr.state, STARTUP)
        self.assertLessEqual(bbr.rounds, 2)

    def test_the_first_rtt_sample_does_not_start_probe_rtt(self) -> None:
        """min_rtt's 10 s begin at its first sample, not at time zero (the bug that sent a
        connection on a clock far from zero to PROBE_RTT at its first ACK)."""
        bbr = Bbr(MSS)
        cwnd = bbr.ack(10 * MSS, MSS, 0, RTT, T, 1 * MSS, 10 * MSS, 9 * MSS, 2 * MSS)
        self.assertEqual(bbr.state, STARTUP)
        self.assertEqual(cwnd, 11 * MSS)

    def test_app_limited_rounds_do_not_lower_the_estimate(self) -> None:
        bbr = Bbr(MSS, phase=0)
        path = Path(bbr, rate=5e6)
        for _ in range(15):
            path.round()
        bw = bbr.bw
        self.assertLessEqual(abs((bw) - (5e6)), 5e6 * 0.05)
        path.rate = 1e6  # the application sends a fifth of what the path carries
        for _ in range(30):
            path.round(app_limited=True)
        self.assertGreaterEqual(bbr.bw, bw * 0.95)
        for _ in range(30):  # the same rounds not app-limited: the path did slow down
            path.round()
        self.assertLess(bbr.bw, 1.1e6)

    def test_bunched_acks_do_not_read_as_more_bandwidth(self) -> None:
        """A receiver that drains its socket in bursts (wireguard-go) returns a round's ACKs
        late in one round and early in the next: over the ACKs alone the short round reads
        as several times the rate; bounded by how long its data took to send, it does not
        (Linux's max(ack_elapsed, send_elapsed))."""
        bbr = Bbr(MSS, phase=0)
        path = Path(bbr, rate=5e6)
        for k in range(40):
            path.round(within=(0.7, 1.0) if k % 2 else (0.0, 0.3))
        self.assertTrue(bbr.full_bw_reached)
        self.assertLess(bbr.bw, 5e6 * 1.3)

    def test_acks_in_batches_widen_the_window_by_what_they_run_ahead(self) -> None:
        """A round's ACKs all in its last tenth (a receiver that reads in batches): the window
        grows by what the ACKs deliver beyond bw in their burst (0.9 BDP here), so the sender
        still has data in flight when the next batch comes; evenly spaced ACKs add ~nothing."""
        windows = {}
        for within in ((0.0, 1.0), (0.9, 1.0)):
            bbr = Bbr(MSS, phase=0)
            path = Path(bbr, rate=5e6)
            for _ in range(40):
                path.round(within=within)
            windows[within] = path.cwnd / (5e6 * RTT)
        self.assertLess(windows[(0.0, 1.0)], 2.2, f"{windows}")
        self.assertGreater(windows[(0.9, 1.0)], 2.8, f"{windows}")

    def test_a_loss_costs_what_was_lost_not_a_share_of_the_rate(self) -> None:
        """Recovery: packet conservation for one round from what is in flight, then the
        window from before; bw and pacing stay; CUBIC would have cut 30 %."""
        bbr = Bbr(MSS, phase=0)
        path = Path(bbr, rate=5e6)
        for _ in range(15):
            path.round()
        self.assertTrue(bbr.full_bw_reached)
        before, bw = path.cwnd, bbr.bw
        pipe = before - 10 * MSS
        cwnd = bbr.loss_episode(before, pipe, path.una + before)
        self.assertEqual(cwnd, pipe)
        cwnd = bbr.ack(cwnd, MSS, 2 * MSS, RTT, path.now + 0.001, path.una + MSS,
                       path.una + before, pipe - 3 * MSS, 2 * MSS)  # fmt: skip
        self.assertEqual(cwnd, pipe - 3 * MSS + MSS)  # conservation: in flight + delivered
        self.assertEqual(bbr.episode_over(cwnd), before)
        self.assertEqual(bbr.bw, bw)

    def test_timeout_restarts_from_one_segment(self) -> None:
        bbr = Bbr(MSS)
        self.assertEqual(bbr.loss_episode(50 * MSS, 0, 100 * MSS, timeout=True), MSS)
        self.assertIsNone(bbr.conservation_end)
        self.assertEqual(bbr.episode_over(20 * MSS), 50 * MSS)

    def test_drain_paces_below_and_startup_above(self) -> None:
        bbr = Bbr(MSS)
        self.assertEqual(bbr.pacing_rate(10 * MSS, RTT), HIGH_GAIN * 10 * MSS / RTT)
        bbr.bw = 1e6
        bbr._enter(DRAIN, T)
        self.assertLess(bbr.pacing_rate(10 * MSS, RTT), 1e6)


def _bulk(congestion: str, profile: LinkProfile, seconds: float, seed: int = 3) -> Net:
    """A client sends for ``seconds`` after its first one over ``profile``."""
    net = Net.pair(profile=profile, seed=seed, receive_buffer=8 << 20, congestion=congestion)
    client, _ = connected_pair(net)
    client.send(payload(int(profile.rate * (seconds + 2)), seed))
    net.run_for(1.0, max_steps=3_000_000)
    net.start_bytes = len(net.b.data_received())  # type: ignore[attr-defined]
    net.run_for(seconds, max_steps=3_000_000)
    return net


def _rate(net: Net, seconds: float) -> float:
    return (len(net.b.data_received()) - net.start_bytes) / seconds  # type: ignore[attr-defined]


class StateTests(SynchronousTestCase):
    """The states over a real connection and a 2 MB/s bottleneck at 20 ms."""

    RATE = 2e6

    def connection(self, queue: int = 100_000) -> tuple[Net, tcp.Connection]:
        profile = LinkProfile(latency=RTT / 2, rate=self.RATE, queue=queue)
        net = Net.pair(profile=profile, seed=4, receive_buffer=8 << 20, congestion="bbr")
        client, _ = connected_pair(net)
        client.send(payload(int(self.RATE * 16), 4))
        return net, client

    def test_startup_finds_the_bandwidth_then_drains_and_probes(self) -> None:
        """STARTUP until bw stops growing by a quarter for three rounds; DRAIN; then
        PROBE_BW through all its gains, with a window of about 2 BDP (+ the pacer's quanta)
        and the pacer at the gain over bw."""
        net, client = self.connection()
        bbr = client.bbr
        assert bbr is not None
        states: list[int] = []
        gains: set[float] = set()
        for _ in range(300):  # 1.5 s
            net.run_for(0.005)
            if not states or states[-1] != bbr.state:
                states.append(bbr.state)
            if bbr.state == PROBE_BW:
                gains.add(bbr.pacing_gain)
        self.assertEqual(states[:3], [STARTUP, DRAIN, PROBE_BW], states)
        self.assertEqual(gains, set(CYCLE))
        self.assertLessEqual(abs((bbr.bw) - (self.RATE)), self.RATE * 0.1)
        self.assertLessEqual(abs((bbr.min_rtt or 0) - (RTT)), 0.002)
        bdp = self.RATE * RTT
        self.assertLess(client.cwnd, CWND_GAIN * bdp * 1.1 + 3 * 2 * client.mss + client.mss)
        self.assertGreater(client.cwnd, bdp)
        self.assertLessEqual(
            abs((client.pace_rate) - (bbr.pacing_gain * bbr.bw * PACING_MARGIN)), 1.0
        )

    def test_probe_rtt_when_min_rtt_was_not_seen_for_ten_seconds(self) -> None:
        """The path's delay grows by half: after 10 s the old min_rtt is let go, the window
        falls to four segments for 200 ms and a round trip, and min_rtt is the new delay."""
        net, client = self.connection()
        bbr = client.bbr
        assert bbr is not None
        net.run_for(1.0)
        net.profile.latency = RTT * 0.75
        windows: list[int] = []
        for _ in range(int((MIN_RTT_WINDOW + 1) / 0.005)):
            net.run_for(0.005)
            if bbr.state == PROBE_RTT:
                windows.append(client.cwnd)
        self.assertTrue(windows, "no PROBE_RTT")
        self.assertEqual(min(windows), MIN_SEGMENTS * client.mss)
        self.assertGreaterEqual(len(windows) * 0.005, PROBE_RTT_TIME)
        self.assertEqual(bbr.state, PROBE_BW)
        self.assertLessEqual(abs((bbr.min_rtt or 0) - (RTT * 1.5)), 0.002)


class BottleneckTests(SynchronousTestCase):
    """A 4 MB/s bottleneck, 20 ms round trip: the shapes that cost a loss-based sender."""

    RATE = 4e6

    def test_random_loss_on_a_shallow_buffer(self) -> None:
        """0.5 % of packets lost at random, a 30 KB queue (a sixth of the BDP): BBR fills the
        path, CUBIC is held to its loss-rate bound (Mathis: ~1.2 MSS / (RTT sqrt p)), a
        fraction of it."""
        profile = LinkProfile(latency=RTT / 2, rate=self.RATE, queue=30_000, loss=0.005)
        bbr = _rate(_bulk("bbr", profile, 3.0), 3.0)
        cubic = _rate(_bulk("cubic", profile, 3.0), 3.0)
        self.assertGreater(bbr, 0.85 * self.RATE, f"bbr {bbr:.0f}, cubic {cubic:.0f} B/s")
        self.assertLess(cubic, 0.6 * self.RATE, f"bbr {bbr:.0f}, cubic {cubic:.0f} B/s")

    def test_a_deep_buffer_is_not_filled(self) -> None:
        """A 1 MB queue (12 BDPs): CUBIC fills it (a round trip of several times the path's),
        BBR keeps the round trip near the propagation delay, at the same rate."""
        profile = LinkProfile(latency=RTT / 2, rate=self.RATE, queue=1_000_000)
        nets = {cc: _bulk(cc, profile, 3.0) for cc in ("bbr", "cubic")}
        srtt = {cc: net.a.stack.connections and next(iter(net.a.stack.connections.values())).srtt
                for cc, net in nets.items()}  # fmt: skip
        for net in nets.values():
            self.assertGreater(_rate(net, 3.0), 0.9 * self.RATE)
        self.assertLess(srtt["bbr"], 1.6 * RTT, f"{srtt}")
        self.assertGreater(srtt["cubic"], 3 * RTT, f"{srtt}")

    def test_transfers_are_exact_on_random_links(self) -> None:
        """Every byte, in order, closed cleanly, over seeded random links (loss up to 20 %,
        duplication, reordering), some of them with a shallow bottleneck."""
        rng = random.Random(2026)
        failures = []
        for i in range(20):
            profile = random_profile(rng)
            if i % 2:
                profile.rate, profile.queue = rng.uniform(2e5, 4e6), rng.randrange(3_000, 60_000)
            up, down = rng.randrange(20_000, 400_000), rng.randrange(0, 100_000)
            net = Net.pair(profile=profile, seed=i, congestion="bbr")
            t = Transfer(net, payload(up, i), payload(down, i + 1)).start()
            try:
                t.run(timeout=300.0, max_steps=80_000)
                assert t.client is not None and t.server is not None
                self.assertEqual(sha(net.b.data_received(t.server)), sha(t.up))
                self.assertEqual(sha(net.a.data_received(t.client)), sha(t.down))
                self.assertEqual(net.a.closed, {t.client: None})
                self.assertIsNotNone(t.client.bbr)
            except AssertionError as e:
                failures.append(f"#{i} {profile}: {str(e)[:300]}")
        self.assertEqual(failures, [])

    def test_every_byte_is_delivered_once_in_the_model(self) -> None:
        """Over a link that holds and loses packets, what the model counts as delivered adds up
        to what was sent: an ACK that arrives behind a newer one (lower ``ack``) still counts
        the news in its SACK blocks, and not its ``ack`` going back (that had made the sum
        short by a segment, and a round's rate negative: a pacer whose next send lay in the
        past, a livelock)."""
        for seed in range(1, 4):
            self.assertEqual(self._delivered_in_model(seed), 3_000_000, f"seed {seed}")

    def _delivered_in_model(self, seed: int) -> int:
        profile = LinkProfile(latency=0.005, reorder=0.2, reorder_delay=0.01, loss=0.02)
        net = Net.pair(profile=profile, seed=seed, congestion="bbr")
        client, _ = connected_pair(net)
        client.send(payload(3_000_000, seed))
        net.run(
            lambda: client.snd_una == client.snd_max and len(net.b.data_received()) == 3_000_000,
            timeout=100,
            max_steps=200_000,
        )
        assert client.bbr is not None
        return client.bbr.delivered

    def test_the_stack_refuses_an_unknown_congestion_control(self) -> None:
        with self.assertRaises(ValueError):
            Stack([b"\x0a\x00\x00\x01"], congestion="vegas")
