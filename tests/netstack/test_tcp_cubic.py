"""CUBIC (RFC 9438) and HyStart++ (RFC 9406): the window arithmetic, and in a connection."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.netstack.tcp.cubic import BETA, CSS_GROWTH_DIVISOR, CSS_ROUNDS, C, Cubic

from .tcp_harness import LinkProfile, Net, connected_pair, payload

MSS = 1000


class CubicTests(SynchronousTestCase):
    def test_reduction_is_beta_and_fast_convergence(self) -> None:
        """RFC 9438 4.6-4.7: ssthresh = 0.7 W; a loss below the previous W_max lowers it to
        W (1 + beta) / 2."""
        cc = Cubic(MSS)
        self.assertEqual(cc.reduce(100 * MSS), int(100 * BETA * MSS))
        self.assertEqual(cc.w_max, 100)
        cc.reduce(80 * MSS)
        self.assertAlmostEqual(cc.w_max, 80 * (1 + BETA) / 2)

    def test_back_to_w_max_after_k_seconds(self) -> None:
        """K = cbrt(W_max (1 - beta) / C): from 0.7 W the window reaches W_max at K (RFC 9438
        4.2), flat around it, then beyond; with a 100 ms RTT the cubic dominates Reno."""
        cc = Cubic(MSS)
        cwnd = cc.reduce(1000 * MSS)
        k = (1000 * (1 - BETA) / C) ** (1 / 3)
        now, rtt = 0.0, 0.1
        windows: list[tuple[float, int]] = []
        while now < 2 * k:
            # one ACK per two segments for a whole window each round trip
            for _ in range(cwnd // (2 * MSS)):
                cwnd = cc.avoid(cwnd, 2 * MSS, now, rtt)
            now += rtt
            windows.append((now, cwnd // MSS))
        self.assertAlmostEqual(cc.k, k)
        at_k = min(windows, key=lambda w: abs(w[0] - k))[1]
        half_k = min(windows, key=lambda w: abs(w[0] - k / 2))[1]
        self.assertLess(abs(at_k - 1000), 15, windows[::10])
        # concave: most of the way back by K/2 (the cubic: 1000 - 300/8 = 962)
        self.assertLess(abs(half_k - (1000 - 300 / 8)), 15, windows[::10])
        # convex beyond: 2K after the loss, the cubic gives 1000 + 300 = 1300
        self.assertLess(abs(windows[-1][1] - 1300), 30, windows[::10])

    def test_reno_friendly_region_on_short_round_trips(self) -> None:
        """At 1 ms the cubic is slower than Reno would be: W_est rules (RFC 9438 4.3)."""
        cc = Cubic(MSS)
        cwnd = cc.reduce(20 * MSS)
        start = cwnd
        now = 0.0
        for _ in range(50):  # 50 round trips of 1 ms: the cubic barely moves
            for _ in range(cwnd // MSS):
                cwnd = cc.avoid(cwnd, MSS, now, 0.001)
            now += 0.001
        self.assertLess(cc.w_cubic(now) - start / MSS, 1.0)
        self.assertGreater(cwnd - start, 20 * MSS)  # ~0.53 segments per round trip

    def test_idle_time_does_not_count(self) -> None:
        cc = Cubic(MSS)
        cwnd = cc.reduce(100 * MSS)
        cc.avoid(cwnd, MSS, 0.0, 0.05)
        assert cc.epoch is not None
        cc.idle(10.0)
        self.assertAlmostEqual(cc.epoch, 10.0)
        grown = cc.avoid(cwnd, MSS, 10.01, 0.05)
        self.assertLess(grown - cwnd, MSS)

    def test_restore_after_an_undo(self) -> None:
        cc = Cubic(MSS)
        cc.reduce(100 * MSS)
        state = cc.state()
        cc.reduce(70 * MSS)
        cc.restore(state)
        self.assertEqual(cc.state(), state)
        self.assertIsNone(cc.epoch)


class HystartTests(SynchronousTestCase):
    def round(
        self, cc: Cubic, cwnd: int, ssthresh: int, rtt: float, una: int, acks: int = 10
    ) -> tuple[int, int, int]:
        """One round trip of ``acks`` ACKs of one segment each; (cwnd, ssthresh, una)."""
        end = una + cwnd
        for i in range(acks):
            cwnd, ssthresh = cc.slow_start(cwnd, ssthresh, MSS, rtt, una + i * MSS, end)
        return cwnd, ssthresh, end

    def test_rising_delay_enters_conservative_slow_start_then_avoidance(self) -> None:
        cc = Cubic(MSS)
        cwnd, ssthresh, una = 10 * MSS, 1 << 30, 0
        cwnd, ssthresh, una = self.round(cc, cwnd, ssthresh, 0.020, una)
        cwnd, ssthresh, una = self.round(cc, cwnd, ssthresh, 0.020, una)
        self.assertIsNone(cc.css_baseline)
        # the minimum of this round is 4 ms (the clamp's floor for 20 ms) above the last
        before = cwnd
        cwnd, ssthresh, una = self.round(cc, cwnd, ssthresh, 0.024, una)
        self.assertEqual(cc.css_baseline, 0.024)
        # from the 8th sample on, growth is a quarter
        self.assertLess(cwnd - before, 10 * MSS)
        before = cwnd
        cwnd, ssthresh, una = self.round(cc, cwnd, ssthresh, 0.024, una)
        self.assertEqual(cwnd - before, 10 * MSS // CSS_GROWTH_DIVISOR)
        for _ in range(CSS_ROUNDS - 1):
            cwnd, ssthresh, una = self.round(cc, cwnd, ssthresh, 0.024, una)
        cwnd, ssthresh, una = self.round(cc, cwnd, ssthresh, 0.024, una, acks=1)
        self.assertEqual(ssthresh, cwnd)  # congestion avoidance, no loss needed

    def test_delay_back_down_resumes_slow_start(self) -> None:
        cc = Cubic(MSS)
        cwnd, ssthresh, una = 10 * MSS, 1 << 30, 0
        for rtt in (0.020, 0.020, 0.025):
            cwnd, ssthresh, una = self.round(cc, cwnd, ssthresh, rtt, una)
        self.assertIsNotNone(cc.css_baseline)
        cwnd, ssthresh, una = self.round(cc, cwnd, ssthresh, 0.021, una)
        self.assertIsNone(cc.css_baseline)
        before = cwnd
        cwnd, ssthresh, una = self.round(cc, cwnd, ssthresh, 0.021, una)
        self.assertEqual(cwnd - before, 10 * MSS)

    def test_small_rises_are_noise(self) -> None:
        cc = Cubic(MSS)
        cwnd, ssthresh, una = 10 * MSS, 1 << 30, 0
        for rtt in (0.020, 0.0235, 0.020, 0.0239):
            cwnd, ssthresh, una = self.round(cc, cwnd, ssthresh, rtt, una)
            self.assertIsNone(cc.css_baseline)


class CubicConnectionTests(SynchronousTestCase):
    def test_window_after_a_loss_is_seventy_percent_then_follows_the_cubic(self) -> None:
        """One segment lost at 20 ms RTT in congestion avoidance: ssthresh is 0.7 of the
        window (not half), and a second later the window is what the cubic says."""
        net = Net.pair(profile=LinkProfile(latency=0.01), seed=8, receive_buffer=8 << 20)
        client, _ = connected_pair(net)
        client.ssthresh = 200 * client.mss  # congestion avoidance from 200 segments
        dropped: list[int] = []
        start = net.now

        def drop(sender: object, packet: bytes) -> bool:
            if sender is net.a and not dropped and net.now > start + 1.0 and len(packet) > 500:
                dropped.append(client.cwnd)
                return True
            return False

        net.drop = drop
        client.send(payload(30_000_000, 8))
        counters = net.a.stack.counters
        net.run(lambda: "tcp_fast_retransmits" in counters and not client.in_recovery, timeout=30)
        assert client.undo is not None  # the episode, awaiting D-SACKs that will not come
        self.assertEqual(client.ssthresh, int(BETA * client.undo.cwnd))
        self.assertLess(abs(client.cwnd - client.ssthresh), client.mss)
        net.run_for(0.05)
        epoch = client.cc.epoch
        assert epoch is not None
        net.run_for(1.0)
        expected = client.cc.w_cubic(net.now - epoch + (client.srtt or 0)) * client.mss
        self.assertLess(abs(client.cwnd - expected), 3 * client.mss)
        self.assertGreater(client.cwnd, client.ssthresh + 20 * client.mss)
        self.assertEqual(counters.get("tcp_fast_retransmits"), 1)
