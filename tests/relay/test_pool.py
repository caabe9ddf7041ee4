"""Node pools in process (one relay, two nodes, their backends; loopback, real reactor):
balance, transparent failover, graceful stop, tls-alpn-01 reaching the right node, status and
metrics."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from twisted.internet import reactor, threads
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from funnel_tw import keys
from funnel_tw.config import load_node_config, load_relay_config
from funnel_tw.node.service import NodeService
from funnel_tw.relay.service import RelayService
from funnel_tw.tls.challenges import tls_alpn_certificate
from tests._support import free_port, wait_until

from .test_clienthello import real_hello
from .test_public import LogCapture, raw_exchange

NAME = "pool.example.test"


class Says(resource.Resource):
    isLeaf = True

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text.encode()

    def render_GET(self, request: server.Request) -> bytes:
        return self.text


class Pool:
    """relay.ini with ``[node a]`` and ``[node b]`` serving one name, both nodes in process."""

    def __init__(
        self,
        test: TestCase,
        relay_extra: str = "",
        names: str = "ab",
        *,
        public: int | None = None,
        tls: dict[str, str] | None = None,
    ) -> None:
        """``names``: the nodes in relay.ini order; ``tls``: a node's ``[tls]`` section."""
        self.test = test
        self.dir = Path(test.mktemp()).absolute()
        self.dir.mkdir()
        rk = keys.generate_private_key()
        wg = free_port(socket.SOCK_DGRAM)
        self.public = public or free_port(socket.SOCK_STREAM)
        relay = f"""[relay]
private-key = {keys.encode_key(rk)}
listen-port = {wg}
address = 100.64.0.1/32
public-address = 127.0.0.1
public-ports = {self.public}
{relay_extra}
"""
        self.nodes: dict[str, NodeService] = {}
        for name in names:
            i = ord(name) - ord("a")
            nk = keys.generate_private_key()
            backend = reactor.listenTCP(0, server.Site(Says(f"node {name}")), interface="127.0.0.1")
            test.addCleanup(backend.stopListening)
            ip = f"100.64.0.{2 + i}"
            relay += f"""
[node {name}]
public-key = {keys.encode_key(keys.public_key(nk))}
allowed-ips = {ip}/32
hostnames = {NAME}
peerapi = {ip}:41642
"""
            folder = self.dir / name
            folder.mkdir()
            (folder / "node.ini").write_text(f"""[node]
private-key = {keys.encode_key(nk)}
listen-port = 0
address = {ip}/32
hostname = {NAME}

[peer relay]
public-key = {keys.encode_key(keys.public_key(rk))}
endpoint = 127.0.0.1:{wg}
allowed-ips = 100.64.0.1/32
persistent-keepalive = 25
funnel-ingress = yes

{(tls or {}).get(name, "")}

[serve {self.public}]
funnel = yes
/ = http://127.0.0.1:{backend.getHost().port}
""")
            self.nodes[name] = NodeService(load_node_config(folder / "node.ini"), reactor)
        (self.dir / "relay.ini").write_text(relay)
        self.relay = RelayService(load_relay_config(self.dir / "relay.ini"), reactor)
        self.relay.startService()
        self.running = set(self.nodes)
        for node in self.nodes.values():
            node.startService()
        test.addCleanup(self.stop)
        self.context = ssl.create_default_context()
        for node in self.nodes.values():
            ca = node.config.state_dir / "tls" / "ca.pem"
            if ca.exists():
                self.context.load_verify_locations(str(ca))

    async def stop_node(self, name: str) -> None:
        if name in self.running:
            self.running.discard(name)
            await self.nodes[name].stopService()

    def vanish(self, name: str) -> None:
        """The node's WireGuard goes silent at once (as a killed process): no FIN, no RST."""
        overlay = self.nodes[name].overlay
        assert overlay.tunnel is not None
        overlay.tunnel.stop()
        overlay.tunnel = None  # type: ignore[misc]

    async def stop(self) -> None:
        for name in list(self.running):
            await self.stop_node(name)
        await self.relay.stopService()

    async def ready(self) -> None:
        """Every node has a session and is in service."""

        def up() -> bool:
            peers = self.relay.overlay.device.peers
            return all(p.last_handshake is not None for p in peers) and all(
                self.relay.health.usable(n) and n in self.relay.health.nodes for n in self.nodes
            )

        await wait_until(up, 10, "every node in service")

    def get(self, name: str = NAME) -> str:
        """An HTTPS GET through the relay on a new connection: which node answered."""
        with (
            socket.create_connection(("127.0.0.1", self.public), timeout=10) as raw,
            self.context.wrap_socket(raw, server_hostname=name) as tls,
        ):
            tls.sendall(f"GET / HTTP/1.0\r\nHost: {name}\r\n\r\n".encode())
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
        return answer.rpartition(b"\r\n\r\n")[2].decode()

    async def gets(self, n: int) -> list[str]:
        return [await threads.deferToThread(self.get) for _ in range(n)]

    def counters(self) -> dict[str, int]:
        return self.relay.limits.counters


class PoolTests(TestCase):
    timeout = 60

    async def test_round_robin_spreads_new_connections(self) -> None:
        p = Pool(self)
        await p.ready()
        answers = await p.gets(6)
        self.assertEqual(sorted(answers), ["node a"] * 3 + ["node b"] * 3)
        self.assertNotEqual(answers[0], answers[1])  # turns, not halves

    async def test_first_is_active_standby(self) -> None:
        p = Pool(self, "balance = first")
        await p.ready()
        self.assertEqual(await p.gets(3), ["node a"] * 3)
        await p.stop_node("a")  # graceful: its peerAPI refuses at once
        self.assertEqual(await p.gets(3), ["node b"] * 3)
        self.assertLessEqual(p.counters().get("failover", 0), 1)
        self.assertNotIn("node_refused", p.counters())

    async def test_balance_per_name_overrides(self) -> None:
        p = Pool(self, f"balance = round-robin\nbalance {NAME} = first")
        await p.ready()
        self.assertEqual(await p.gets(3), ["node a"] * 3)

    async def test_vanished_node_costs_no_request(self) -> None:
        """A node that goes silent: the visitor that meets it is carried over to the other
        node within the attempt timeout; the node is out, and later visitors skip it."""
        p = Pool(self, "balance = first")
        await p.ready()
        log = LogCapture(self)
        p.vanish("a")
        answers = await p.gets(4)
        self.assertEqual(answers, ["node b"] * 4)
        self.assertFalse(p.relay.health.usable("a"))
        self.assertEqual(p.counters().get("failover", 0), 1)
        self.assertEqual(p.relay.health.nodes["a"].outages, 1)
        self.assertTrue(log.lines("node a out of service"))
        doc = p.relay.observer.status()
        health = {n["name"]: n["health"] for n in doc["nodes"]}
        self.assertFalse(health["a"]["up"])
        self.assertTrue(health["b"]["up"])
        self.assertEqual(
            doc["pools"],
            [{"name": NAME, "balance": "first", "nodes": ["a", "b"], "in_service": ["b"]}],
        )
        from prometheus_client import generate_latest

        metrics = generate_latest(p.relay.observer.registry).decode()
        self.assertIn('funnel_relay_node_up{node="a"} 0.0', metrics)
        self.assertIn('funnel_relay_node_up{node="b"} 1.0', metrics)
        self.assertIn('funnel_relay_events_total{event="failover"} 1.0', metrics)

    async def test_every_node_out_closes_at_once(self) -> None:
        p = Pool(self)
        await p.ready()
        await p.stop_node("a")
        await p.stop_node("b")
        await wait_until(
            lambda: not any(p.relay.health.usable(n) for n in "ab"), 5, "both nodes out"
        )
        received, took = await raw_exchange(p.public, real_hello(NAME))
        self.assertEqual(received, b"")
        self.assertLess(took, 0.5)
        self.assertEqual(p.counters()["no_node_in_service"], 1)

    async def test_restarted_node_back_in_service(self) -> None:
        p = Pool(self, "balance = first")
        await p.ready()
        await p.stop_node("a")
        await wait_until(lambda: not p.relay.health.usable("a"), 5, "a out")
        again = NodeService(p.nodes["a"].config, reactor)
        p.nodes["a"] = again
        again.startService()
        p.running.add("a")
        await wait_until(lambda: p.relay.health.usable("a"), 10, "a back")
        self.assertEqual(await p.gets(2), ["node a"] * 2)

    async def test_acme_validation_reaches_the_node_with_the_challenge(self) -> None:
        """A ClientHello offering acme-tls/1 is declined (421) by the node without a pending
        challenge and carried to the one that has it, whichever the turn."""
        p = Pool(self)
        await p.ready()
        key, cert = tls_alpn_certificate(NAME, "token.thumbprint")
        p.nodes["b"].store.set_challenge(NAME, key, cert)

        def validate() -> bytes:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            context.set_alpn_protocols(["acme-tls/1"])
            with (
                socket.create_connection(("127.0.0.1", p.public), timeout=10) as raw,
                context.wrap_socket(raw, server_hostname=NAME) as tls,
            ):
                der = tls.getpeercert(binary_form=True)
                assert der is not None
                return der

        from cryptography import x509

        for _ in range(3):
            der = await threads.deferToThread(validate)
            self.assertEqual(x509.load_der_x509_certificate(der), cert)
        self.assertEqual(p.nodes["b"].store.counters.get("tls_alpn_01_answered"), 3)
        self.assertGreaterEqual(p.nodes["a"].ingress.counters.get("ingress_421", 0), 1)
        self.assertNotIn("ingress_accepted", p.nodes["a"].ingress.counters)
        self.assertTrue(p.relay.health.usable("a"))  # declining is not failing
        # ordinary visitors still go to both
        self.assertEqual(sorted(await p.gets(2)), ["node a", "node b"])

    async def test_graceful_stop_finishes_open_flows(self) -> None:
        """A node told to stop refuses new ingress at once but keeps serving the connection
        it holds, and stops only when that one is done."""
        p = Pool(self, "balance = first")
        await p.ready()
        raw = socket.create_connection(("127.0.0.1", p.public), timeout=10)
        self.addCleanup(raw.close)
        tls = await threads.deferToThread(p.context.wrap_socket, raw, server_hostname=NAME)
        stopping = p.nodes["a"].stopService()
        p.running.discard("a")
        self.assertEqual(await p.gets(2), ["node b"] * 2)  # new ones: the other node
        self.assertFalse(stopping.called)  # still draining the held connection

        def finish() -> bytes:
            tls.sendall(f"GET / HTTP/1.0\r\nHost: {NAME}\r\n\r\n".encode())
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
            tls.close()
            return answer

        answer = await threads.deferToThread(finish)
        self.assertTrue(answer.endswith(b"node a"), answer[-100:])
        await stopping


class PoolACMETests(TestCase):
    timeout = 90

    async def test_pebble_validates_through_a_pool(self) -> None:
        """Pebble's tls-alpn-01 validator is declined by the standby node listed first (it has
        no pending challenge) and reaches the node that ordered the certificate."""
        from tests.interop import test_acme_pebble as pebble_tests

        pebble_tests.need(self)
        folder = Path(self.mktemp()).absolute()
        folder.mkdir()
        public = free_port(socket.SOCK_STREAM)
        pebble = pebble_tests.Pebble(self, folder, tls_port=public)
        await pebble.start()
        tls = f"""[tls]
source = acme
acme-directory = {pebble.directory}
acme-email = admin@example.test
acme-ca-file = {pebble.ca}
"""
        p = Pool(self, "balance = first", names="ba", public=public, tls={"a": tls})
        source = p.nodes["a"].certificates
        self.addCleanup(pebble_tests.settle, source)  # type: ignore[arg-type]
        why = pebble_tests.status_of(source, pebble)  # type: ignore[arg-type]
        await pebble_tests.first_check(source, why)  # type: ignore[arg-type]
        self.assertIsNone(source.status()["last_error"], why())
        self.assertGreaterEqual(p.nodes["a"].store.counters.get("tls_alpn_01_answered", 0), 1)
        self.assertGreaterEqual(p.nodes["b"].ingress.counters.get("ingress_421", 0), 1)
        self.assertGreaterEqual(p.counters().get("failover", 0), 1)
        self.assertTrue(p.relay.health.usable("b"))
