"""Per-source handshake rate limiting (funnel_tw.wireguard.ratelimit)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.wireguard.ratelimit import PACKETS_BURSTABLE, PACKETS_PER_SECOND, RateLimiter

T0 = 5_000.0
COST = 1.0 / PACKETS_PER_SECOND

# wireguard-go ratelimiter_test.go's addresses.
IPS = [
    "127.0.0.1",
    "192.168.1.1",
    "172.167.2.3",
    "97.231.252.215",
    "248.97.91.167",
    "188.208.233.47",
    "104.2.183.179",
    "72.129.46.120",
    "2001:db8:a0b:12f0::1",
    "f5c2:818f:c052:655a:9860:b136:6894:25f0",
    "b2d7:15ab:48a7:b07c:a541:f144:a9fe:54fc",
    "a47b:786e:1671:a22b:d6f9:4ab0:abc7:c918",
    "ea1e:d155:7f7a:98fb:2bf5:9483:80f6:5445",
    "3f0e:54a2:f5b4:cd19:a21d:58e1:3746:84c4",
]


class RateLimiterTests(SynchronousTestCase):
    def test_constants(self) -> None:
        self.assertEqual((PACKETS_PER_SECOND, PACKETS_BURSTABLE), (20, 5))

    def test_wireguard_go_sequence(self) -> None:
        """ratelimiter_test.go, with fixed time instead of sleeps; every source independent."""
        expected: list[tuple[float, bool, str]] = [
            *[(0.0, True, "initial burst")] * PACKETS_BURSTABLE,
            (0.0, False, "after burst"),
            (COST, True, "filling tokens for single packet"),
            (0.0, False, "not having refilled enough"),
            (2 * COST, True, "filling tokens for two packet burst"),
            (0.0, True, "second packet in 2 packet burst"),
            (0.0, False, "packet following 2 packet burst"),
        ]
        limiter = RateLimiter()
        now = T0
        for i, (wait, allowed, text) in enumerate(expected):
            now += wait
            for ip in IPS:
                self.assertEqual(limiter.allow(ip, now), allowed, f"{i} {text} {ip}")

    def test_refill_is_capped_at_the_burst(self) -> None:
        limiter = RateLimiter()
        for _ in range(PACKETS_BURSTABLE):
            self.assertTrue(limiter.allow("10.0.0.1", T0))
        # Long idle (but kept from collection by activity every half second).
        now = T0
        for _ in range(20):
            now += 0.5
            limiter.allow("10.0.0.1", now)
        now += 0.5
        results = [limiter.allow("10.0.0.1", now) for _ in range(PACKETS_BURSTABLE + 3)]
        self.assertEqual(results, [True] * PACKETS_BURSTABLE + [False] * 3)

    def test_steady_rate(self) -> None:
        limiter = RateLimiter()
        for _ in range(PACKETS_BURSTABLE):
            limiter.allow("10.0.0.1", T0)
        allowed = 0
        for step in range(1, 201):  # 2 s in 10 ms steps
            allowed += limiter.allow("10.0.0.1", T0 + step * 0.01)
        self.assertIn(allowed, range(2 * PACKETS_PER_SECOND - 1, 2 * PACKETS_PER_SECOND + 2))

    def test_per_source(self) -> None:
        limiter = RateLimiter()
        for _ in range(PACKETS_BURSTABLE):
            self.assertTrue(limiter.allow("10.0.0.1", T0))
        self.assertFalse(limiter.allow("10.0.0.1", T0))
        self.assertTrue(limiter.allow("10.0.0.2", T0))
        self.assertTrue(limiter.allow("fd00::1", T0))

    def test_table_is_bounded(self) -> None:
        limiter = RateLimiter(max_sources=3)
        for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
            self.assertTrue(limiter.allow(ip, T0))
        self.assertFalse(limiter.allow("10.0.0.4", T0))
        self.assertEqual(len(limiter), 3)
        # Known sources still get their tokens.
        self.assertTrue(limiter.allow("10.0.0.1", T0))

    def test_idle_entries_are_collected(self) -> None:
        limiter = RateLimiter(max_sources=2)
        limiter.allow("10.0.0.1", T0)
        limiter.allow("10.0.0.2", T0)
        self.assertFalse(limiter.allow("10.0.0.3", T0 + 0.5))
        self.assertTrue(limiter.allow("10.0.0.3", T0 + 1.5))
        self.assertEqual(len(limiter), 1)

    def test_collection_resets_the_bucket(self) -> None:
        limiter = RateLimiter()
        for _ in range(PACKETS_BURSTABLE + 2):
            limiter.allow("10.0.0.1", T0)
        # Idle long enough to be forgotten: a fresh full burst.
        results = [limiter.allow("10.0.0.1", T0 + 2.0) for _ in range(PACKETS_BURSTABLE + 1)]
        self.assertEqual(results, [True] * PACKETS_BURSTABLE + [False])
