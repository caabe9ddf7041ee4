"""The relay's attempts at a pool's nodes, with fake node endpoints and a task.Clock: which
answers move on to the next node, which put a node out, and how the ingress deadline bounds
the whole search (no sockets, no reactor)."""

from __future__ import annotations

from ipaddress import ip_address, ip_network
from typing import Any

from twisted.internet import defer, error, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.config import RelayNode
from funnel_tw.relay.public import ConnectionLimits, PublicFactory
from funnel_tw.relay.routes import Routes

from .test_clienthello import real_hello

NAME = "pool.example.test"
ACCEPT = b"HTTP/1.1 101 Switching Protocols\r\n\r\n"


def node(name: str, last: int) -> RelayNode:
    return RelayNode(
        name=name,
        public_key=bytes(32),
        allowed_ips=(ip_network(f"100.64.0.{last}/32"),),
        hostnames=(NAME,),
        peerapi=(ip_address(f"100.64.0.{last}"), 41642),
        endpoint=None,
        persistent_keepalive=0,
        preshared_key=None,
    )


class FakeNode:
    """What connecting to one node's peerAPI does: ``answer`` bytes, ``refuse`` the
    connection, or nothing at all (``silent``)."""

    def __init__(self, behaviour: str, answer: bytes = b"") -> None:
        self.behaviour = behaviour
        self.answer = answer
        self.requests: list[bytes] = []
        self.transports: list[StringTransport] = []

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        if self.behaviour == "refuse":
            return defer.fail(error.ConnectionRefusedError("refused"))
        if self.behaviour == "silent":
            return defer.Deferred()
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        self.transports.append(transport)
        proto.makeConnection(transport)
        self.requests.append(transport.value())
        proto.dataReceived(self.answer)
        if self.behaviour == "close":
            proto.connectionLost(Failure(error.ConnectionDone()))
        return defer.succeed(proto)


class FailoverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.nodes = {"a": node("a", 2), "b": node("b", 3), "c": node("c", 4)}
        self.fakes: dict[str, FakeNode] = {}
        self.limits = ConnectionLimits(100, 100)
        by_ip = {str(n.peerapi[0]): name for name, n in self.nodes.items()}
        self.factory = PublicFactory(
            reactor=self.clock,
            routes=Routes(list(self.nodes.values())),
            node_endpoint=lambda host, port: self.fakes[by_ip[host]],  # type: ignore[arg-type,return-value]
            public_port=443,
            client_hello_timeout=10,
            idle_timeout=600,
            limits=self.limits,
            ingress_timeout=5.0,
        )
        self.factory.balancer.health.sync([("a", "b", "c")], 0.0)  # what the prober does

    def visit(self, hello: bytes | None = None) -> tuple[Any, StringTransport]:
        conn = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "203.0.113.5", 5555))
        conn.makeConnection(transport)
        conn.clock = self.clock  # a splice's close bound: on this clock, not the reactor
        conn.dataReceived(hello or real_hello(NAME))
        if conn.node_end is not None:
            conn.node_end.clock = self.clock
        return conn, transport

    def test_first_node_takes_it(self) -> None:
        self.fakes = {n: FakeNode("answer", ACCEPT) for n in "abc"}
        conn, _transport = self.visit()
        self.assertEqual(conn.node_name, "a")
        self.assertEqual(conn.outcome, "spliced")
        self.assertNotIn("failover", self.limits.counters)
        self.assertNotIn(b"Funnel-Ingress-ALPN", self.fakes["a"].requests[0])

    def tearDown(self) -> None:
        from twisted.internet import reactor

        self.assertEqual(reactor.getDelayedCalls(), [])  # type: ignore[attr-defined]

    def test_refused_and_5xx_put_nodes_out_and_move_on(self) -> None:
        self.fakes = {
            "a": FakeNode("refuse"),
            "b": FakeNode("answer", b"HTTP/1.1 503 Service Unavailable\r\n\r\nshutting down\n"),
            "c": FakeNode("answer", ACCEPT),
        }
        conn, _ = self.visit()
        self.assertEqual((conn.node_name, conn.outcome), ("c", "spliced"))
        self.assertEqual(self.limits.counters["failover"], 2)
        health = self.factory.balancer.health
        self.assertEqual([health.usable(n) for n in "abc"], [False, False, True])
        self.assertEqual(self.factory.balancer.active, {"c": 1})
        conn.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(self.factory.balancer.active, {})

    def test_4xx_declines_without_putting_out(self) -> None:
        self.fakes = {
            "a": FakeNode("answer", b"HTTP/1.1 403 Forbidden\r\n\r\ndenied\n"),
            "b": FakeNode("answer", ACCEPT),
            "c": FakeNode("answer", ACCEPT),
        }
        conn, _ = self.visit()
        self.assertEqual(conn.node_name, "b")
        self.assertTrue(self.factory.balancer.health.usable("a"))

    def test_silent_node_gets_the_attempt_timeout(self) -> None:
        self.fakes = {"a": FakeNode("silent"), "b": FakeNode("answer", ACCEPT)}
        self.fakes["c"] = self.fakes["b"]
        conn, _ = self.visit()
        self.assertEqual(conn.state.value, "ingress")
        self.clock.advance(0.99)
        self.assertEqual(conn.state.value, "ingress")
        self.clock.advance(0.02)
        self.assertEqual((conn.node_name, conn.outcome), ("b", "spliced"))
        self.assertFalse(self.factory.balancer.health.usable("a"))

    def test_all_fail_closes_with_every_reason(self) -> None:
        self.fakes = {
            "a": FakeNode("refuse"),
            "b": FakeNode("close"),
            "c": FakeNode("answer", b"HTTP/1.1 403 Forbidden\r\n\r\ndenied\n"),
        }
        conn, transport = self.visit()
        self.assertEqual(conn.outcome, "node_refused")
        self.assertTrue(transport.disconnected or transport.disconnecting)
        self.assertEqual(len(conn.tried), 3)
        self.assertIn("refused", conn.tried[0])
        self.assertIn("lost before its answer", conn.tried[1])
        self.assertIn("403 Forbidden: denied", conn.tried[2])
        # the next visitor finds only c in service (a and b are out), which declines again
        conn2, _ = self.visit()
        self.assertEqual(conn2.tried, [conn.tried[2]])

    def test_deadline_bounds_the_whole_search(self) -> None:
        self.fakes = {n: FakeNode("silent") for n in "abc"}
        self.factory.ingress_timeout = 2.5
        conn, _transport = self.visit()
        self.clock.advance(1.0)  # a: out after 1 s
        self.clock.advance(1.0)  # b: out after 1 s
        self.assertEqual(conn.state.value, "ingress")
        self.clock.advance(0.5)  # c: the 0.5 s left
        self.assertEqual(conn.outcome, "node_timeout")
        self.assertEqual(conn.state.value, "closed")
        self.assertEqual(self.limits.counters["failover"], 2)

    def test_acme_hello_says_so(self) -> None:
        self.fakes = {n: FakeNode("answer", ACCEPT) for n in "abc"}
        self.visit(real_hello(NAME, alpn=["acme-tls/1"]))
        self.assertIn(b"\r\nFunnel-Ingress-ALPN: acme-tls/1\r\n", self.fakes["a"].requests[0])

    def test_late_answer_of_an_abandoned_attempt_is_dropped(self) -> None:
        slow = FakeNode("silent")
        pending: list[defer.Deferred[Any]] = []
        factories: list[Any] = []

        def connect(factory: Any) -> defer.Deferred[Any]:
            factories.append(factory)
            d: defer.Deferred[Any] = defer.Deferred()
            pending.append(d)
            return d

        slow.connect = connect  # type: ignore[method-assign]
        self.fakes = {"a": slow, "b": FakeNode("answer", ACCEPT), "c": FakeNode("silent")}
        conn, _ = self.visit()
        self.clock.advance(1.01)
        self.assertEqual(conn.node_name, "b")
        late = factories[0].buildProtocol(None)
        late_transport = StringTransport()
        late.makeConnection(late_transport)
        late.dataReceived(ACCEPT)
        self.assertTrue(late_transport.disconnecting or late_transport.disconnected)
        self.assertEqual(conn.node_name, "b")
        self.assertEqual(self.limits.counters["spliced"], 1)
