"""The reload plan (config/plan.py, a pure function) and the Reloader's steps (daemon/reload.py),
without a reactor: what a SIGHUP would change, refuse, and log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.config import (
    ConfigError,
    NodeConfig,
    PeerConfig,
    RelayConfig,
    RelayNode,
    TCPBuffers,
    load_node_config,
    load_relay_config,
)
from funnel_tw.config.plan import Change, Plan, node_plan, peer_changes, plan, relay_plan
from funnel_tw.daemon.reload import Reloader, ReloadRefused
from funnel_tw.keys import encode_key, generate_private_key, public_key

NODE_KEY, RELAY_KEY, OTHER_KEY = (generate_private_key() for _ in range(3))


def node_ini(
    *,
    listen_port: int = 41641,
    hostnames: str = "a.example.com, b.example.com",
    endpoint: str = "203.0.113.7:41641",
    extra_peer: str = "",
    serve: str = "[serve 443]\nfunnel = yes\n/ = http://127.0.0.1:8080\n",
    state_dir: str = "state",
    key: bytes = NODE_KEY,
) -> str:
    return f"""[node]
private-key = {encode_key(key)}
listen-port = {listen_port}
address = 100.64.0.2/32
hostname = {hostnames}
state-dir = {state_dir}

[peer relay]
public-key = {encode_key(public_key(RELAY_KEY))}
endpoint = {endpoint}
allowed-ips = 100.64.0.1/32
funnel-ingress = yes
{extra_peer}
[tls]
source = self-signed

{serve}"""


def relay_ini(
    *, ports: str = "443", hello: str = "10", nodes: str = "", listen: int = 41641
) -> str:
    home = f"""[node home]
public-key = {encode_key(public_key(NODE_KEY))}
allowed-ips = 100.64.0.2/32
hostnames = a.example.com
peerapi = 100.64.0.2:41642
"""
    return f"""[relay]
private-key = {encode_key(RELAY_KEY)}
listen-port = {listen}
address = 100.64.0.1/32
public-ports = {ports}
client-hello-timeout = {hello}

{home}
{nodes}"""


OFFICE = f"""[node office]
public-key = {encode_key(public_key(OTHER_KEY))}
allowed-ips = 100.64.0.3/32
hostnames = office.example.com
peerapi = 100.64.0.3:41642
"""


class PlanCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.n = 0

    def node(self, **kw: Any) -> NodeConfig:
        self.n += 1
        path = self.dir / f"node{self.n}.ini"
        path.write_text(node_ini(**kw))
        return load_node_config(path)

    def relay(self, **kw: Any) -> RelayConfig:
        self.n += 1
        path = self.dir / f"relay{self.n}.ini"
        path.write_text(relay_ini(**kw))
        return load_relay_config(path)


class NodePlanTests(PlanCase):
    def test_same_file_no_changes(self) -> None:
        self.assertEqual(node_plan(self.node(), self.node()), Plan())

    def test_restart_keys_refuse_the_whole_reload(self) -> None:
        old = self.node()
        new = self.node(listen_port=41700, hostnames="c.example.com")
        result = node_plan(old, new)
        self.assertEqual(result.refused, ("listen-port changed: restart to apply",))
        self.assertEqual(result.changes, ())  # the hostname change is not applied either
        self.assertEqual(
            node_plan(old, self.node(key=OTHER_KEY, state_dir="other")).refused,
            (
                "private-key changed: restart to apply",
                "state-dir changed: restart to apply",
            ),
        )

    def test_tcp_buffer_keys_need_a_restart(self) -> None:
        """The userspace stack is built once: its caps change at the next start only."""
        old = self.node()
        new = attrs.evolve(old, tcp=attrs.evolve(old.tcp, memory=64 << 20))
        self.assertEqual(node_plan(old, new).refused, ("tcp-memory changed: restart to apply",))
        new = attrs.evolve(old, tcp=TCPBuffers(12 << 20, 16 << 20, old.tcp.memory))
        self.assertEqual(
            node_plan(old, new).refused,
            (
                "tcp-receive-buffer-max changed: restart to apply",
                "tcp-send-buffer-max changed: restart to apply",
            ),
        )
        relay = self.relay()
        new_relay = attrs.evolve(relay, tcp=attrs.evolve(relay.tcp, send_buffer_max=4 << 20))
        self.assertEqual(
            relay_plan(relay, new_relay).refused, ("tcp-send-buffer-max changed: restart to apply",)
        )

    def test_hostnames(self) -> None:
        result = node_plan(self.node(), self.node(hostnames="a.example.com, c.example.com"))
        self.assertEqual(
            [str(c) for c in result.changes],
            ["[hostname b.example.com] removed", "[hostname c.example.com] added"],
        )

    def test_peers(self) -> None:
        laptop = encode_key(public_key(OTHER_KEY))
        extra = f"[peer laptop]\npublic-key = {laptop}\nallowed-ips = 100.64.0.9/32\n"
        old = self.node()
        new = self.node(endpoint="203.0.113.8:41641", extra_peer=extra)
        result = node_plan(old, new)
        self.assertEqual(
            [str(c) for c in result.changes],
            # tcp-fallback = auto follows the endpoint's host
            ["[peer relay] changed (endpoint, tcp-fallback)", "[peer laptop] added"],
        )
        remove, add, update = peer_changes(result, "peer", PeerConfig)
        self.assertEqual(remove, [])
        self.assertEqual([p.name for p in add], ["laptop"])
        self.assertEqual(
            [(o.endpoint, n.endpoint) for o, n in update],
            [(("203.0.113.7", 41641), ("203.0.113.8", 41641))],
        )
        back = node_plan(new, old)
        self.assertEqual(peer_changes(back, "peer", PeerConfig)[0], ["laptop"])

    def test_a_new_key_is_a_removal_and_an_addition(self) -> None:
        old = self.node()
        relay = old.peers[0]
        new = attrs.evolve(old, peers=(attrs.evolve(relay, public_key=public_key(OTHER_KEY)),))
        remove, add, update = peer_changes(node_plan(old, new), "peer", PeerConfig)
        self.assertEqual(
            (remove, [p.public_key for p in add], update), (["relay"], [public_key(OTHER_KEY)], [])
        )

    def test_funnel_ingress_alone_does_not_touch_the_device(self) -> None:
        old = self.node()
        new = attrs.evolve(old, peers=(attrs.evolve(old.peers[0], funnel_ingress=False),))
        result = node_plan(old, new)
        self.assertEqual(
            [str(c) for c in result.changes], ["[peer relay] changed (funnel-ingress)"]
        )
        self.assertEqual(peer_changes(result, "peer", PeerConfig), ([], [], []))

    def test_serve_sections(self) -> None:
        old = self.node()
        new = self.node(
            serve="[serve 443]\nfunnel = yes\n/ = http://127.0.0.1:9090\n\n"
            "[serve 8443]\ntcp-forward = 127.0.0.1:9443\n"
        )
        self.assertEqual(
            [str(c) for c in node_plan(old, new).changes],
            ["[serve 443] changed (handler)", "[serve 8443] added"],
        )
        self.assertEqual(str(node_plan(new, old).changes[0]), "[serve 8443] removed")


class AccessReloadTests(PlanCase):
    def test_access_policies_are_a_section_kind(self) -> None:
        serve = "[serve 443]\nfunnel = yes\naccess = office\n/ = http://127.0.0.1:8080\n"
        old = self.node(serve="[access office]\nallow = 198.51.100.0/24\n\n" + serve)
        new = self.node(serve="[access office]\nallow = 203.0.113.0/24\n\n" + serve)
        self.assertEqual(
            [str(c) for c in node_plan(old, new).changes], ["[access office] changed (allow)"]
        )

    def test_a_reload_swaps_the_policies_for_new_flows(self) -> None:
        from twisted.internet.task import Clock

        from funnel_tw.node.reload import apply_node_plan
        from funnel_tw.node.service import NodeService

        serve = "[serve 443]\nfunnel = yes\naccess = office\n/ = http://127.0.0.1:8080\n"
        old = self.node(serve="[access office]\nallow = 198.51.100.0/24\n\n" + serve)
        new = self.node(serve="[access office]\nallow = 203.0.113.0/24\n\n" + serve)
        node = NodeService(old, Clock())
        before = node.access
        apply_node_plan(node, new, node_plan(old, new))
        self.assertIsNot(node.access, before)
        self.assertIs(node.dispatcher.access, node.access)
        (policy,) = node.access.policies.values()
        self.assertEqual([str(n) for n in policy.config.allow], ["203.0.113.0/24"])


class RelayPlanTests(PlanCase):
    def test_nodes_ports_and_settings(self) -> None:
        old = self.relay()
        new = self.relay(ports="443, 8443", hello="5", nodes=OFFICE)
        result = relay_plan(old, new)
        self.assertEqual(
            [str(c) for c in result.changes],
            [
                "[node office] added",
                "[public-port 8443] added",
                "client-hello-timeout 10 -> 5",
            ],
        )
        self.assertEqual(
            [str(c) for c in relay_plan(new, old).changes][:2],
            ["[node office] removed", "[public-port 8443] removed"],
        )
        remove, add, update = peer_changes(result, "node", RelayNode)
        self.assertEqual(([n.name for n in add], remove, update), (["office"], [], []))

    def test_listen_port_refused(self) -> None:
        result = relay_plan(self.relay(), self.relay(listen=41000, nodes=OFFICE))
        self.assertEqual(result, Plan(refused=("listen-port changed: restart to apply",)))

    def test_hostnames_only_moves_routes(self) -> None:
        old = self.relay()
        home = attrs.evolve(old.nodes[0], hostnames=("z.example.com",))
        result = relay_plan(old, attrs.evolve(old, nodes=(home,)))
        self.assertEqual([str(c) for c in result.changes], ["[node home] changed (hostnames)"])
        self.assertEqual(peer_changes(result, "node", RelayNode), ([], [], []))


class ExtensionTests(SynchronousTestCase):
    def test_a_new_section_kind_is_one_table_entry(self) -> None:
        """How [access NAME] (or any later section type) plugs in: one (kind, items) line."""

        @attrs.frozen
        class Conf:
            port: int
            access: tuple[tuple[str, str], ...]

        sections = [("access", lambda c: dict(c.access))]
        restart = [("port", lambda c: c.port)]
        result = plan(
            Conf(1, (("office", "10.0.0.0/8"), ("old", "x"))),
            Conf(1, (("office", "10.1.0.0/16"), ("admins", "y"))),
            restart=restart,
            sections=sections,
        )
        self.assertEqual(
            [str(c) for c in result.changes],
            ["[access old] removed", "[access office] changed", "[access admins] added"],
        )
        self.assertTrue(result.touches("access"))


class ReloaderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.current = "old"
        self.loaded: object = "new"
        self.applied: list[tuple[object, Plan]] = []
        self.sent: list[tuple[str, ...]] = []
        self.plan = Plan(changes=(Change("peer", "added", "laptop"),))
        self.logged: list[tuple[LogLevel, str]] = []

        def observe(event: dict[str, Any]) -> None:
            from twisted.logger import formatEvent

            if event.get("log_namespace") == "funnel_tw.daemon.reload":
                self.logged.append((event["log_level"], formatEvent(event)))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def load(self, old: object) -> object:
        if isinstance(self.loaded, Exception):
            raise self.loaded
        return self.loaded

    def apply(self, new: object, plan: Plan) -> None:
        if new == "refuse":
            raise ReloadRefused("cannot listen on 0.0.0.0:443: in use")
        self.applied.append((new, plan))
        self.current = str(new)

    def reloader(self) -> Reloader[object]:
        return Reloader(
            current=lambda: self.current,
            load=self.load,
            plan=lambda old, new: self.plan,
            apply=self.apply,
            notify=lambda *lines: self.sent.append(lines),
        )

    def test_applied_logs_one_line_per_change(self) -> None:
        r = self.reloader()
        self.assertEqual(r.reload(), "applied")
        self.assertEqual(self.applied, [("new", self.plan)])
        self.assertIn((LogLevel.info, "reload: [peer laptop] added"), self.logged)
        self.assertEqual(self.sent[0][0], "RELOADING=1")
        self.assertTrue(self.sent[0][1].startswith("MONOTONIC_USEC="))
        self.assertEqual(self.sent[-1], ("READY=1",))
        self.assertEqual(r.counters["applied"], 1)

    def test_config_errors_refuse_with_file_line(self) -> None:
        self.loaded = ConfigError(["/etc/node.ini:7: [serve 443] /: not a URL"])
        r = self.reloader()
        self.assertEqual(r.reload(), "refused")
        self.assertEqual(self.applied, [])
        self.assertEqual(self.current, "old")
        [(level, text)] = self.logged
        self.assertEqual(level, LogLevel.error)
        self.assertIn("/etc/node.ini:7: [serve 443] /: not a URL", text)
        self.assertEqual(self.sent[-1], ("READY=1",))  # systemd hears the daemon is fine

    def test_restart_keys_refuse(self) -> None:
        self.plan = Plan(refused=("listen-port changed: restart to apply",))
        r = self.reloader()
        self.assertEqual(r.reload(), "refused")
        self.assertEqual(self.applied, [])
        self.assertIn("listen-port changed: restart to apply", self.logged[0][1])

    def test_applier_refusal(self) -> None:
        self.loaded = "refuse"
        r = self.reloader()
        self.assertEqual(r.reload(), "refused")
        self.assertIn("cannot listen on 0.0.0.0:443", self.logged[0][1])
        self.assertEqual(r.counters["refused"], 1)

    def test_unchanged(self) -> None:
        self.plan = Plan()
        self.assertEqual(self.reloader().reload(), "unchanged")
        self.assertEqual(self.applied, [])
