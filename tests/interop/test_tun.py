"""``network = tun``: our WireGuard on a kernel TUN interface against wireguard-go.

Namespace A runs our side (``python -m tests.interop.ourpeer`` with ``network = tun`` in
node.ini) on 10.231.N.1; namespace B runs wireguard-go on 10.231.N.2. Overlay: ours 100.64.0.2 and
fd7a:115c:a1e0::2 on a TUN interface ``ftwK`` that our side creates inside A; wireguard-go
100.64.0.1 and fd7a:115c:a1e0::1. On both sides the kernel does TCP. Nothing outside the two
namespaces is touched.

``TunEndpointTests`` and ``TunErrorTests`` need no namespaces: they check the endpoint plumbing
on loopback addresses and the error a missing /dev/net/tun gives.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from ipaddress import ip_interface
from pathlib import Path
from typing import Any
from unittest import SkipTest

from twisted.internet import defer, error, protocol
from twisted.internet import reactor as _reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from funnel_tw.overlay.tun import TunOverlayInterface
from funnel_tw.overlay.tun_device import TunError
from tests.interop import netns as h

OUR4, OUR6 = "100.64.0.2", "fd7a:115c:a1e0::2"
WG4, WG6 = "100.64.0.1", "fd7a:115c:a1e0::1"
NOT_OURS = "100.64.0.9"  # in neither side's addresses
OUR_NETS = (f"{OUR4}/32", f"{OUR6}/128")
WG_NETS = (f"{WG4}/32", f"{WG6}/128")
OUR_PORT = 51820
WG_PORT = 51821
PEER_NAME = "wggo"
SINK_PORT = 7000  # ours (and the peerAPI port in the filter test)
OTHER_PORT = 7002  # ours, not reachable by a funnel-ingress peer
WG_SINK_PORT = 7001  # the kernel sink in B
BIG = 16 << 20

READY_TIMEOUT = 20.0

#: In B: accept COUNT connections on HOST:PORT; read each to EOF, answer "<bytes> <sha256>\n".
#: Prints {"event": "listening"} once bound, then one JSON line per connection.
SINK_SCRIPT = """
import hashlib, json, socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
srv = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, port))
srv.listen(8)
srv.settimeout(30)
print(json.dumps({"event": "listening"}), flush=True)
for _ in range(count):
    conn, peer = srv.accept()
    conn.settimeout(30)
    digest, n = hashlib.sha256(), 0
    while True:
        data = conn.recv(1 << 16)
        if not data:
            break
        digest.update(data)
        n += len(data)
    conn.sendall(f"{n} {digest.hexdigest()}\\n".encode())
    conn.close()
    print(json.dumps({"event": "sink", "bytes": n, "sha256": digest.hexdigest(),
                      "peer": peer[0]}), flush=True)
"""

#: Connect to HOST:PORT (connect timeout T), send N random bytes, half-close, read the answer to
#: EOF. Prints one JSON line: bytes, sha256, reply (text), reply_bytes, local, seconds; or error.
SEND_SCRIPT = """
import hashlib, json, os, socket, sys, time
host, port, total, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
digest = hashlib.sha256()
started = time.monotonic()
try:
    s = socket.create_connection((host, port), timeout=timeout)
except OSError as e:
    print(json.dumps({"error": repr(e)}))
    sys.exit(0)
s.settimeout(30)
left = total
while left:
    chunk = os.urandom(min(left, 1 << 18))
    digest.update(chunk)
    s.sendall(chunk)
    left -= len(chunk)
s.shutdown(socket.SHUT_WR)
reply = b""
while True:
    data = s.recv(1 << 16)
    if not data:
        break
    reply += data
print(json.dumps({"bytes": total, "sha256": digest.hexdigest(),
                  "reply": reply.decode(errors="replace").strip(), "reply_bytes": len(reply),
                  "local": s.getsockname()[0], "seconds": time.monotonic() - started}))
"""

#: Try to create a TUN interface with our code; print the TunError message (or "created").
CREATE_TUN_SCRIPT = """
from twisted.internet import reactor
from funnel_tw.overlay.tun_device import TunDevice, TunError
try:
    TunDevice(reactor, lambda packets: None).close()
except TunError as e:
    print("TunError:", e)
else:
    print("created")
"""


def tun_links(ns: h.Namespace) -> list[str]:
    """Names of the ``ftw*`` interfaces in ``ns``."""
    out = ns.run(["ip", "-o", "link", "show"]).stdout
    return re.findall(r"^\d+: (ftw\d+)[:@]", out, re.MULTILINE)


class TunInteropTests(SynchronousTestCase):
    """Each test builds namespaces A and B, wireguard-go in B, and our side in A in tun mode."""

    subnet = 210

    def setUp(self) -> None:
        h.skip_unless_interop(self)
        TunInteropTests.subnet = 211 + (TunInteropTests.subnet - 210) % 40  # 211..250
        self.tmp = h.make_tempdir(self.addCleanup)
        self.pair = h.make_pair(self.addCleanup, TunInteropTests.subnet)
        self.wg = h.start_wireguard_go(self.addCleanup, self.pair.b, self.tmp)
        self.ours = h.gen_keypair()
        # wireguard-go knows our endpoint and we know its: either side may initiate.
        peer = h.WgPeer(self.ours.public, OUR_NETS, f"{self.pair.ip_a}:{OUR_PORT}")
        self.wg.configure(WG_PORT, [peer], addresses=WG_NETS, routes=OUR_NETS)

    # ------------------------------------------------------------------ helpers

    def start_ours(self, *args: str, funnel_ingress: bool = False) -> h.OurPeer:
        """Our side in A with ``network = tun``; waits for ``ready``."""
        peer = h.IniPeer(PEER_NAME, self.wg.keys.public, WG_NETS, f"{self.pair.ip_b}:{WG_PORT}")
        ini = h.write_node_ini(self.tmp, self.ours.private, OUR_NETS, [peer], OUR_PORT)
        text = ini.read_text()
        text = text.replace("[node]\n", f"[node]\nnetwork = tun\npeerapi-port = {SINK_PORT}\n")
        if funnel_ingress:
            text = text.replace(
                f"[peer {PEER_NAME}]\n", f"[peer {PEER_NAME}]\nfunnel-ingress = yes\n"
            )
        ini.write_text(text)
        ours = h.run_our_peer(self.addCleanup, self.pair.a, self.tmp, ini, *args)
        ready = ours.wait_for("ready", READY_TIMEOUT)
        self.assertEqual(int(ready["port"]), OUR_PORT, ours.describe())
        return ours

    def stop(self, ours: h.OurPeer) -> dict[str, Any]:
        """SIGTERM our side: it must exit 0 after printing stats, leaving no TUN behind."""
        self.assertEqual(ours.stop(), 0, ours.describe())
        self.assertEqual(tun_links(self.pair.a), [], "the TUN interface outlived our side")
        routes = self.pair.a.run(["ip", "route", "show"]).stdout
        routes6 = self.pair.a.run(["ip", "-6", "route", "show"]).stdout
        self.assertNotIn(WG4, routes)
        self.assertNotIn(WG6, routes6)
        return ours.stats()

    def send_from_b(self, host: str, port: int, nbytes: int, timeout: float = 10) -> dict[str, Any]:
        """The kernel in B sends ``nbytes`` to ``host:port`` over the tunnel; returns its report."""
        result = self.pair.b.run(
            [sys.executable, "-c", SEND_SCRIPT, host, str(port), str(nbytes), str(timeout)],
            timeout=timeout + 40,
        )
        report: dict[str, Any] = json.loads(result.stdout)
        return report

    def assert_ping(self, ns: h.Namespace, addr: str, count: int = 3) -> None:
        result = h.ping(ns, addr, count=count)
        self.assertEqual(
            (result.returncode, h.ping_received(result)),
            (0, count),
            f"ping {addr} from {ns.name}\n{result.stdout}{result.stderr}\n{self.wg.log()}",
        )

    def wait_count(
        self, ours: h.OurPeer, names: tuple[str, ...], want: int, timeout: float
    ) -> None:
        """Read events until ``want`` of those named ``names`` have arrived in all."""
        deadline = time.monotonic() + timeout
        while sum(len(ours.of(name)) for name in names) < want:
            if ours.next_event(deadline - time.monotonic()) is None:
                self.fail(f"our side ended early; {ours.describe()}")

    # ------------------------------------------------------------------ tests

    def test_interface_and_ping_both_ways(self) -> None:
        """Our TUN carries our addresses and the peer's routes; ICMP echo works v4 and v6 both
        ways (B's echoes are answered by A's kernel, ours by B's), and stop removes it all."""
        ours = self.start_ours("--ping", WG4, "--ping", WG6, "--count", "3", "--duration", "60")
        links = tun_links(self.pair.a)
        self.assertEqual(len(links), 1, links)
        name = links[0]
        a = self.pair.a
        addrs = a.run(["ip", "-o", "addr", "show", "dev", name]).stdout
        self.assertIn(f"inet {OUR4}/32", addrs)
        self.assertIn(f"inet6 {OUR6}/128", addrs)
        self.assertEqual(len(addrs.splitlines()), 2, f"only our addresses: {addrs}")
        self.assertIn("mtu 1280", a.run(["ip", "link", "show", "dev", name]).stdout)
        self.assertIn(f"{WG4} dev {name}", a.run(["ip", "route", "show"]).stdout)
        self.assertIn(f"{WG6} dev {name}", a.run(["ip", "-6", "route", "show"]).stdout)

        self.wait_count(ours, ("pong", "lost"), 6, 20)
        for dst in (WG4, WG6):
            pongs = [e for e in ours.of("pong") if e["dst"] == dst]
            self.assertEqual(len(pongs), 3, f"{dst}: {ours.describe()}")
        self.assertEqual(ours.of("lost"), [], ours.describe())
        self.assert_ping(self.pair.b, OUR4)
        self.assert_ping(self.pair.b, OUR6)
        # And A's own kernel through the TUN (ping(8) from A, not our ping()).
        self.assert_ping(self.pair.a, WG4, count=2)
        self.assert_ping(self.pair.a, WG6, count=2)

        # A peer reaches our overlay addresses only: not another address of the host (here one
        # on A's veth, which A's kernel would answer), and the node routes nothing for it.
        a.run(["ip", "addr", "add", f"{NOT_OURS}/32", "dev", self.pair.veth_a])
        self.wg.set_peer(self.ours.public, "allowed-ips", f"{NOT_OURS}/32,{OUR4}/32,{OUR6}/128")
        self.pair.b.run(["ip", "route", "add", f"{NOT_OURS}/32", "dev", self.wg.name])
        self.assertEqual(h.ping_received(h.ping(self.pair.b, NOT_OURS, count=1, wait=1)), 0)

        stats = self.stop(ours)
        self.assertGreaterEqual(stats["drop_not_local"], 1, stats)
        self.assertGreaterEqual(stats["handshakes"], 1, stats)
        self.assertGreaterEqual(stats["tun_tx_packets"], 6, stats)  # B's requests to A's kernel
        self.assertGreaterEqual(stats["tun_rx_packets"], 10, stats)  # replies + A's requests
        self.assertEqual(stats["drop_tun_full"] + stats["drop_tun_write"], 0, stats)
        self.assertEqual(stats["drop_filtered"], 0, stats)
        self.assertEqual(
            stats.get("drop_no_route", 0), 0, f"the kernel sent stray packets: {stats}"
        )

    def test_tcp_both_ways(self) -> None:
        """16 MiB each way between the two kernels' TCP: B -> our --tcp-sink (v4, and 1 MiB
        over v6), our --tcp-send -> a sink in B. Hashes match, addresses are the overlay's."""
        sink = self.pair.b.popen(
            [sys.executable, "-c", SINK_SCRIPT, WG4, str(WG_SINK_PORT), "1"],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.addCleanup(h.kill_group, sink)
        assert sink.stdout is not None
        self.assertEqual(json.loads(sink.stdout.readline())["event"], "listening")

        ours = self.start_ours(
            "--tcp-sink", str(SINK_PORT), "--tcp-send", f"{WG4}:{WG_SINK_PORT}",
            "--bytes", str(BIG), "--duration", "60",
        )  # fmt: skip
        to_us = self.send_from_b(OUR4, SINK_PORT, BIG)
        to_us6 = self.send_from_b(OUR6, SINK_PORT, 1 << 20)
        self.wait_count(ours, ("sent", "tcp-error"), 1, 30)
        self.wait_count(ours, ("sink",), 2, 5)
        self.assertEqual(ours.of("tcp-error"), [], ours.describe())
        sent = ours.of("sent")[0]
        theirs = json.loads(sink.stdout.readline())

        for report, nbytes in ((to_us, BIG), (to_us6, 1 << 20)):
            self.assertNotIn("error", report, ours.describe())
            self.assertEqual(report["reply"], f"{nbytes} {report['sha256']}", report)
        self.assertEqual(to_us["local"], WG4)
        self.assertEqual(to_us6["local"], WG6)
        sinks = {(e["bytes"], e["sha256"]) for e in ours.of("sink")}
        self.assertEqual(
            sinks, {(BIG, to_us["sha256"]), (1 << 20, to_us6["sha256"])}, ours.describe()
        )

        self.assertEqual(sent["reply"], f"{BIG} {sent['sha256']}", ours.describe())
        self.assertEqual((theirs["bytes"], theirs["sha256"]), (BIG, sent["sha256"]))
        self.assertEqual(theirs["peer"], OUR4, "our client must be bound to our overlay address")

        stats = self.stop(ours)
        self.assertEqual(stats["drop_tun_write"], 0, stats)
        self.assertGreater(stats["tun_rx_bytes"], BIG, stats)
        self.assertGreater(stats["tun_tx_bytes"], BIG, stats)

    def test_filter_funnel_ingress_peer(self) -> None:
        """A funnel-ingress peer reaches the peerAPI port over the kernel's TCP and nothing else:
        not another listening port, not ICMP. The drops are counted."""
        ours = self.start_ours(
            "--tcp-sink", str(SINK_PORT), "--tcp-source", str(OTHER_PORT), "--bytes", "1000",
            "--duration", "60",
            funnel_ingress=True,
        )  # fmt: skip
        allowed = self.send_from_b(OUR4, SINK_PORT, 1 << 20)
        self.assertNotIn("error", allowed, ours.describe())
        self.assertEqual(allowed["reply"], f"{1 << 20} {allowed['sha256']}")
        allowed6 = self.send_from_b(OUR6, SINK_PORT, 1000)
        self.assertNotIn("error", allowed6, ours.describe())

        blocked = self.send_from_b(OUR4, OTHER_PORT, 0, timeout=1.5)
        self.assertIn("error", blocked, "a funnel-ingress peer reached a non-peerAPI port")
        self.assertIn("timed out", blocked["error"])
        blocked6 = self.send_from_b(OUR6, OTHER_PORT, 0, timeout=1.5)
        self.assertIn("error", blocked6)
        result = h.ping(self.pair.b, OUR4, count=2, wait=1, interval=0.2)
        self.assertEqual(h.ping_received(result), 0, result.stdout)

        # The port itself is open: A's kernel serves it to A (not through the tunnel).
        local = self.pair.a.run(
            [sys.executable, "-c", SEND_SCRIPT, OUR4, str(OTHER_PORT), "0", "5"], timeout=20
        )
        self.assertEqual(json.loads(local.stdout)["reply_bytes"], 1000, local.stdout)

        stats = self.stop(ours)
        self.assertEqual(len(ours.of("sink")), 2, ours.describe())
        self.assertEqual(len(ours.of("source")), 1, ours.describe())  # the local one only
        # at least the two SYNs and the two echo requests
        self.assertGreaterEqual(stats["drop_filtered"], 4, stats)

    def test_no_net_admin_is_a_clear_error(self) -> None:
        """Without CAP_NET_ADMIN the TUN cannot be made: a TunError that says why."""
        if shutil.which("setpriv") is None:
            raise SkipTest("setpriv (util-linux) not installed")
        result = self.pair.a.run(
            ["env", f"PYTHONPATH={h.REPO_ROOT}",
             "setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin",
             sys.executable, "-c", CREATE_TUN_SCRIPT],
            timeout=20,
        )  # fmt: skip
        self.assertIn("TunError:", result.stdout, result.stderr)
        self.assertIn("CAP_NET_ADMIN", result.stdout)
        self.assertNotIn("Traceback", result.stderr)
        self.assertEqual(tun_links(self.pair.a), [])


# --------------------------------------------------------------------------- without namespaces


def _loopback_overlay(addresses: tuple[str, ...]) -> TunOverlayInterface:
    """A TunOverlayInterface that is never started: its endpoints only need the addresses."""
    return TunOverlayInterface(
        _reactor,
        private_key=bytes(range(32)),
        addresses=[ip_interface(a) for a in addresses],  # type: ignore[misc]
        peers=[],
    )


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


class _Echo(protocol.Protocol):
    """Echoes the first data and closes (so the client sees the server's side gone first)."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


class _Client(protocol.Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.local: Any = None
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.local = self.transport.getHost()  # type: ignore[union-attr]
        self.transport.write(b"hello")  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class TunEndpointTests(TestCase):
    """server_endpoint listens on every overlay address on one port; client_endpoint binds the
    source to our overlay address of the destination's family. Loopback stands in for the TUN."""

    def addresses(self) -> tuple[str, ...]:
        return ("127.0.0.1/32", "::1/128") if _has_ipv6_loopback() else ("127.0.0.1/32",)

    async def _roundtrip(self, overlay: TunOverlayInterface, host: str, port: int) -> Any:
        """Connect, get the echo, wait until both sides are closed; our local address."""
        client = _Client()
        proto = await overlay.client_endpoint(host, port, timeout=5).connect(
            protocol.Factory.forProtocol(lambda: client)
        )
        self.assertIs(proto, client)
        await client.lost
        self.assertEqual(client.received, b"hello")
        return client.local

    @defer.inlineCallbacks
    def test_listen_all_addresses_one_port(self) -> Any:
        addresses = self.addresses()
        overlay = _loopback_overlay(addresses)
        listening = yield overlay.server_endpoint(0).listen(protocol.Factory.forProtocol(_Echo))
        self.addCleanup(listening.stopListening)
        self.assertEqual(len(listening.ports), len(addresses))
        port = listening.getHost().port
        self.assertNotEqual(port, 0)
        hosts = {(p.getHost().host, p.getHost().port) for p in listening.ports}
        self.assertEqual(hosts, {(str(ip_interface(a).ip), port) for a in addresses})
        for address in addresses:
            host = str(ip_interface(address).ip)
            local = yield defer.Deferred.fromCoroutine(self._roundtrip(overlay, host, port))
            self.assertEqual(local.host, host)

    @defer.inlineCallbacks
    def test_listen_failure_closes_the_others(self) -> Any:
        """One address that cannot be bound fails the listen and closes what was opened."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        overlay = _loopback_overlay(("127.0.0.1/32", "192.0.2.77/32"))  # the second is not ours
        with self.assertRaises(error.CannotListenError):
            yield overlay.server_endpoint(port).listen(protocol.Factory.forProtocol(_Echo))
        with socket.socket() as again:
            again.bind(("127.0.0.1", port))  # free again: the first listener was closed

    @defer.inlineCallbacks
    def test_connect_without_address_of_family(self) -> Any:
        overlay = _loopback_overlay(("127.0.0.1/32",))
        factory = protocol.Factory.forProtocol(_Client)
        with self.assertRaises(error.ConnectError) as raised:
            yield overlay.client_endpoint("fd7a:115c:a1e0::1", 80).connect(factory)
        self.assertIn("IPv6", str(raised.exception))


class TunErrorTests(SynchronousTestCase):
    def test_missing_device_is_a_clear_error(self) -> None:
        overlay = TunOverlayInterface(
            _reactor,
            private_key=bytes(range(32)),
            addresses=[ip_interface("100.64.0.2/32")],  # type: ignore[list-item]
            peers=[],
            tun_path=str(Path("/nonexistent") / "tun"),
        )
        with self.assertRaises(TunError) as raised:
            overlay.start()
        message = str(raised.exception)
        self.assertIn("cannot open /nonexistent/tun", message)
        self.assertIn("CAP_NET_ADMIN", message)
        self.assertIsNone(overlay.tunnel)
        self.assertIsNone(overlay.tun)

    def test_bad_name(self) -> None:
        overlay = TunOverlayInterface(
            _reactor,
            private_key=bytes(range(32)),
            addresses=[ip_interface("100.64.0.2/32")],  # type: ignore[list-item]
            peers=[],
            interface_name="x" * 16,
        )
        with self.assertRaises(TunError):
            overlay.start()
