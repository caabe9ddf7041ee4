"""Pools without a reactor: routes by name, the balance policies, and the health view fed
with fixed times."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.config import RelayConfig, RelayNode
from funnel_tw.relay import health as H
from funnel_tw.relay.balance import Balancer
from funnel_tw.relay.health import Health
from funnel_tw.relay.routes import Routes


def node(name: str, *hostnames: str) -> RelayNode:
    return RelayNode(
        name=name,
        public_key=bytes(32),
        allowed_ips=(ip_network("100.64.0.2/32"),),
        hostnames=hostnames,
        peerapi=(ip_address("100.64.0.2"), 41642),
        endpoint=None,
        persistent_keepalive=0,
        preshared_key=None,
    )


A, B, C = node("a", "x.test", "*.w.test"), node("b", "x.test"), node("c", "*.w.test", "c.test")


def config(balance: str = "round-robin", **by_name: str) -> RelayConfig:
    from pathlib import Path

    return RelayConfig(
        path=Path("relay.ini"),
        private_key=bytes(32),
        listen_port=0,
        addresses=(),
        public_address="127.0.0.1",
        public_ports=(443,),
        client_hello_timeout=10,
        max_connections=10,
        mtu=1280,
        nodes=(A, B, C),
        balance=balance,
        balance_by_name=tuple(by_name.items()),
    )


def names(nodes: list[RelayNode]) -> list[str]:
    return [n.name for n in nodes]


class RoutesTests(SynchronousTestCase):
    def test_pools_exact_first_then_wildcard(self) -> None:
        routes = Routes([A, B, C])
        pool = routes.pool("X.test.")
        assert pool is not None
        self.assertEqual((pool.key, names(list(pool.nodes))), ("x.test", ["a", "b"]))
        wild = routes.pool("app.w.test")
        assert wild is not None
        self.assertEqual((wild.key, names(list(wild.nodes))), ("*.w.test", ["a", "c"]))
        self.assertIsNone(routes.pool("a.b.w.test"))  # one label only
        self.assertIsNone(routes.pool("w.test"))
        self.assertEqual(routes.lookup("x.test"), A)  # the first in config order
        self.assertEqual(len(routes.pools()), 3)

    def test_replace(self) -> None:
        routes = Routes([A, B])
        routes.replace([B])
        pool = routes.pool("x.test")
        assert pool is not None
        self.assertEqual(names(list(pool.nodes)), ["b"])
        self.assertIsNone(routes.pool("q.w.test"))


class BalancerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.routes = Routes([A, B, C])
        self.health = Health()
        self.current = config()
        self.balancer = Balancer(self.routes, self.health, lambda: self.current)
        pool = self.routes.pool("x.test")
        assert pool is not None
        self.pool = pool

    def orders(self, n: int) -> list[list[str]]:
        return [names(self.balancer.order(self.pool)) for _ in range(n)]

    def test_round_robin_takes_turns(self) -> None:
        self.assertEqual(self.orders(3), [["a", "b"], ["b", "a"], ["a", "b"]])

    def test_first_is_config_order(self) -> None:
        self.current = config("first")
        self.assertEqual(self.orders(2), [["a", "b"], ["a", "b"]])

    def test_policy_per_name(self) -> None:
        self.current = config("first", **{"x.test": "round-robin"})
        self.assertEqual(self.orders(2), [["a", "b"], ["b", "a"]])
        wild = self.routes.pool("q.w.test")
        assert wild is not None
        self.assertEqual(self.balancer.policy(wild), "first")

    def test_least_connections(self) -> None:
        self.current = config("least-connections")
        self.balancer.opened("a")
        self.balancer.opened("a")
        self.balancer.opened("b")
        self.assertEqual(self.orders(2), [["b", "a"], ["b", "a"]])
        self.balancer.closed("a")
        self.balancer.closed("a")
        self.assertEqual(self.balancer.active, {"b": 1})
        self.assertEqual(self.orders(1), [["a", "b"]])
        self.balancer.closed("b")
        self.balancer.closed("b")  # never below zero
        self.assertEqual(self.balancer.active, {})

    def test_out_nodes_are_skipped_and_keep_their_turn(self) -> None:
        self.health.sync([("a", "b")], 0.0)
        self.health.failed("a", "refused", 0.0)
        self.assertEqual(self.orders(2), [["b"], ["b"]])
        self.health.succeeded("a", 1.0)
        self.assertEqual(self.orders(2), [["a", "b"], ["b", "a"]])
        self.health.failed("a", "x", 2.0)
        self.health.failed("b", "x", 2.0)
        self.assertEqual(self.orders(1), [[]])

    def test_refresh_reads_wireguard_first(self) -> None:
        seen: list[str] = []
        self.balancer.refresh = lambda pool: seen.append(pool.key)
        self.balancer.order(self.pool)
        self.assertEqual(seen, ["x.test"])


class HealthTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Health()
        self.h.sync([("a", "b"), ("c",)], 0.0)

    def wg(self, name: str, now: float, rx: int, handshake: float | None = 0.0) -> bool:
        return self.h.wireguard(
            name, now, endpoint_known=True, last_handshake=handshake, rx_packets=rx
        )

    def test_intervals_by_pool_size(self) -> None:
        self.assertEqual(self.h.nodes["a"].interval, H.POOL_INTERVAL)
        self.assertEqual(self.h.nodes["c"].interval, H.LONE_INTERVAL)
        self.h.sync([("a",)], 1.0)
        self.assertEqual(list(self.h.nodes), ["a"])
        self.assertEqual(self.h.nodes["a"].interval, H.LONE_INTERVAL)

    def test_never_heard_from_is_out_but_not_an_outage(self) -> None:
        went = self.h.wireguard("a", 0.0, endpoint_known=False, last_handshake=None, rx_packets=0)
        self.assertFalse(went)
        self.assertFalse(self.h.usable("a"))
        self.assertEqual(self.h.nodes["a"].outages, 0)
        self.assertEqual(self.h.due(0.0), [])  # nothing to probe: no endpoint
        # its first handshake brings it in at once
        self.wg("a", 1.0, rx=1, handshake=1.0)
        self.assertTrue(self.h.usable("a"))

    def test_probes_due_by_interval_one_at_a_time(self) -> None:
        self.wg("a", 0.0, rx=0)
        self.assertEqual(self.h.due(0.0), ["a"])
        self.assertEqual(self.h.due(0.5), [])  # still probing
        self.h.succeeded("a", 0.1, probe=True)
        self.assertEqual(self.h.due(0.5), [])
        self.assertEqual(self.h.due(0.1 + H.POOL_INTERVAL), ["a"])

    def test_failure_backoff_is_bounded_and_resets(self) -> None:
        self.wg("a", 0.0, rx=0)
        self.assertTrue(self.h.failed("a", "refused", 0.0))
        self.assertFalse(self.h.failed("a", "refused", 0.0))  # already out: one outage
        self.assertEqual(self.h.nodes["a"].outages, 1)
        self.assertEqual(self.h.reason("a"), "refused")
        waits = []
        now = 0.0
        for _ in range(8):
            self.h.nodes["a"].probing = False
            due = self.h.nodes["a"].next_probe
            waits.append(due - now)
            now = due
            self.assertEqual(self.h.due(now), ["a"])
            self.h.failed("a", "refused", now, probe=True)
        self.assertEqual(waits[:3], [H.BACKOFF_FIRST * 2, H.BACKOFF_FIRST * 4, 4.0])
        self.assertEqual(max(waits), H.BACKOFF_MAX)
        self.assertTrue(self.h.succeeded("a", now, probe=True))
        self.assertTrue(self.h.usable("a"))
        self.assertEqual(self.h.nodes["a"].failures, 0)

    def test_stale_session_goes_out(self) -> None:
        stale = H.STALE_AFTER_INTERVALS * H.POOL_INTERVAL
        self.assertFalse(self.wg("a", 0.0, rx=5))
        self.assertFalse(self.wg("a", stale - 0.1, rx=5))
        self.assertFalse(self.wg("a", stale + 0.5, rx=6))  # a packet came: fresh
        self.assertTrue(self.wg("a", 2 * stale + 1, rx=6))
        self.assertIn("no WireGuard packet", self.h.reason("a"))

    def test_new_handshake_after_failure_probes_at_once(self) -> None:
        self.wg("a", 0.0, rx=1, handshake=0.0)
        self.h.failed("a", "timeout", 1.0)
        self.assertEqual(self.h.due(1.1), [])  # backing off
        self.wg("a", 1.2, rx=2, handshake=1.2)  # the node restarted and greets the relay
        self.assertFalse(self.h.usable("a"))  # a probe must confirm first
        self.assertEqual(self.h.due(1.2), ["a"])

    def test_expired_session(self) -> None:
        self.assertTrue(self.wg("a", H.SESSION_LIFETIME + 31, rx=1, handshake=0.0))
        self.assertEqual(self.h.reason("a"), "WireGuard session expired")

    def test_unknown_names_are_ignored(self) -> None:
        self.assertTrue(self.h.usable("zz"))
        self.assertFalse(self.h.failed("zz", "x", 0.0))
        self.assertFalse(self.h.succeeded("zz", 0.0))
        self.assertFalse(self.wg("zz", 0.0, rx=1))

    def test_document(self) -> None:
        self.wg("a", 0.0, rx=0)
        self.h.failed("a", "refused", 2.0)
        doc = self.h.document(5.0)
        self.assertEqual(doc["a"], {"up": False, "reason": "refused", "for": 3.0, "outages": 1})
        self.assertEqual(doc["b"]["up"], True)


class StatusTextTests(SynchronousTestCase):
    def test_health_and_pools_shown(self) -> None:
        from funnel_tw.relay.statustext import format_relay_status

        node = {"name": "a", "endpoint": "127.0.0.1:1", "last_handshake_age": 3.0}
        text = format_relay_status(
            {
                "version": "1",
                "nodes": [
                    {**node, "session": True, "health": {"up": True}},
                    {**node, "name": "b", "health": {"up": False, "reason": "probe: refused"}},
                ],
                "pools": [
                    {"name": "x.test", "balance": "first", "nodes": ["a", "b"], "in_service": ["a"]}
                ],
            }
        )
        self.assertRegex(text, r"a\s+127\.0\.0\.1:1\s+handshake 3s ago\s+session up\s+in service")
        self.assertIn("NO SESSION  OUT (probe: refused)", text)
        self.assertRegex(text, r"pools:\n  x\.test\s+first\s+1 of 2 in service\s+a, b")
