"""Our WireGuard against Debian's wireguard-go, each in its own network namespace.

Namespace A runs our side (``python -m tests.interop.ourpeer``) on 10.231.N.1, namespace B runs
wireguard-go on 10.231.N.2, N being the test's own subnet. Overlay: ours 100.64.0.2 and
fd7a:115c:a1e0::2, wireguard-go 100.64.0.1 and fd7a:115c:a1e0::1. Nothing else is touched.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.interop import netns as h

OUR4, OUR6 = "100.64.0.2", "fd7a:115c:a1e0::2"
WG4, WG6 = "100.64.0.1", "fd7a:115c:a1e0::1"
OUR_NETS = (f"{OUR4}/32", f"{OUR6}/128")
WG_NETS = (f"{WG4}/32", f"{WG6}/128")
OUR_PORT = 51820
WG_PORT = 51821
PEER_NAME = "wggo"

READY_TIMEOUT = 20.0

#: Sent from a third socket in B: random datagrams, a quarter of them starting with a WireGuard
#: type header (1..4, reserved zero) at that message's usual sizes but with random content.
#: Paced (20 datagrams per 2 ms) so the receiver's socket buffer is not the thing being measured.
GARBAGE_SCRIPT = """
import random, socket, sys
import time
dst, seed, count = (sys.argv[1], int(sys.argv[2])), int(sys.argv[3]), int(sys.argv[4])
r = random.Random(seed)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sizes = {1: [148], 2: [92], 3: [64], 4: [16, 32, 48, 96, 1200]}
for i in range(count):
    if i % 4 == 0:
        t = r.randint(1, 4)
        body = bytes([t, 0, 0, 0]) + r.randbytes(r.choice(sizes[t]) - 4)
    else:
        body = r.randbytes(r.randint(0, 1500))
    s.sendto(body, dst)
    if i % 20 == 19:
        time.sleep(0.002)
print(count)
"""
GARBAGE_COUNT = 10_000
GARBAGE_SEED = 20240601


def drops(counters: dict[str, Any]) -> int:
    return sum(int(v) for k, v in counters.items() if k.startswith("drop_"))


class WireGuardGoInteropTests(SynchronousTestCase):
    """Each test builds its own namespaces A and B, a wireguard-go in B, and our side in A."""

    subnet = 0

    def setUp(self) -> None:
        h.skip_unless_interop(self)
        WireGuardGoInteropTests.subnet = WireGuardGoInteropTests.subnet % 200 + 1
        self.tmp = h.make_tempdir(self.addCleanup)
        self.pair = h.make_pair(self.addCleanup, WireGuardGoInteropTests.subnet)
        self.wg = h.start_wireguard_go(self.addCleanup, self.pair.b, self.tmp)
        self.ours = h.gen_keypair()

    # ------------------------------------------------------------------ helpers

    def configure_wg(
        self, endpoint: str | None, our_public: str | None = None, psk: str | None = None
    ) -> None:
        """wireguard-go knows us as ``our_public`` (default: our real key)."""
        peer = h.WgPeer(our_public or self.ours.public, OUR_NETS, endpoint, psk)
        self.wg.configure(WG_PORT, [peer], addresses=WG_NETS, routes=OUR_NETS)

    def start_ours(
        self,
        *args: str,
        endpoint: str | None = None,
        psk: str | None = None,
        listen_port: int = OUR_PORT,
    ) -> tuple[h.OurPeer, int]:
        """Start our side and wait for ``ready``; returns it and its UDP port."""
        peer = h.IniPeer(PEER_NAME, self.wg.keys.public, WG_NETS, endpoint, psk)
        ini = h.write_node_ini(self.tmp, self.ours.private, OUR_NETS, [peer], listen_port)
        ours = h.run_our_peer(self.addCleanup, self.pair.a, self.tmp, ini, *args)
        ready = ours.wait_for("ready", READY_TIMEOUT)
        port = int(ready["port"])
        if listen_port:
            self.assertEqual(port, listen_port, ours.describe())
        return ours, port

    def assert_ping_ok(self, ns: h.Namespace, addr: str, why: str = "") -> None:
        result = h.ping(ns, addr)
        self.assertEqual(
            (result.returncode, h.ping_received(result)),
            (0, 3),
            f"ping {addr} from {ns.name} {why}\n{result.stdout}{result.stderr}\n"
            f"wireguard-go log:\n{self.wg.log()}",
        )

    def stop(self, ours: h.OurPeer) -> dict[str, Any]:
        """SIGTERM our side; it must exit 0 after printing stats."""
        self.assertEqual(ours.stop(), 0, ours.describe())
        return ours.stats()

    def wg_handshake(self, public: str | None = None) -> int:
        return self.wg.latest_handshakes().get(public or self.ours.public, 0)

    # ------------------------------------------------------------------ tests

    def test_wireguard_go_initiates(self) -> None:
        """We answer as responder (no endpoint configured) over IPv4 and IPv6 overlay pings."""
        ours, port = self.start_ours("--duration", "60", listen_port=0)
        self.configure_wg(f"{self.pair.ip_a}:{port}")
        self.assert_ping_ok(self.pair.b, OUR4)
        self.assert_ping_ok(self.pair.b, OUR6)
        stats = self.stop(ours)
        handshakes = ours.of("handshake")
        self.assertTrue(handshakes, ours.describe())
        self.assertEqual(handshakes[0]["peer"], PEER_NAME)
        self.assertIs(handshakes[0]["initiator"], False)
        self.assertGreaterEqual(stats["handshakes"], 1)
        self.assertGreater(self.wg_handshake(), 0)

    def test_we_initiate(self) -> None:
        """We dial wireguard-go (it has no endpoint for us); its kernel answers our echoes."""
        self.configure_wg(None)
        ours, _ = self.start_ours(
            "--ping", WG4, "--ping", WG6, "--count", "3",
            endpoint=f"{self.pair.ip_b}:{WG_PORT}",
        )  # fmt: skip
        self.assertEqual(ours.wait_exit(30), 0, ours.describe())
        for dst in (WG4, WG6):
            pongs = [e for e in ours.of("pong") if e["dst"] == dst]
            self.assertEqual(len(pongs), 3, f"{dst}: {ours.describe()}")
        self.assertEqual(ours.of("lost"), [], ours.describe())
        handshakes = ours.of("handshake")
        self.assertTrue(handshakes, ours.describe())
        self.assertIs(handshakes[0]["initiator"], True)
        self.assertGreaterEqual(ours.stats()["handshakes"], 1)
        self.assertGreater(self.wg_handshake(), 0)
        self.assertEqual(self.wg.endpoints()[self.ours.public], f"{self.pair.ip_a}:{OUR_PORT}")

    def test_roaming(self) -> None:
        """B moves to a new source address; our replies must follow it (the old one is gone)."""
        b, veth = self.pair.b, self.pair.veth_b
        old, new = self.pair.ip_b, self.pair.ip(3)
        ours, _ = self.start_ours("--duration", "60")
        self.configure_wg(f"{self.pair.ip_a}:{OUR_PORT}")
        self.assert_ping_ok(b, OUR4, "before roaming")

        # Keep the subnet route when the primary goes away, so .3 becomes the source.
        b.sysctl(f"net.ipv4.conf.{veth}.promote_secondaries", "1")
        b.run(["ip", "addr", "add", f"{new}/24", "dev", veth])
        b.run(["ip", "addr", "del", f"{old}/24", "dev", veth])
        route = b.run(["ip", "route", "get", self.pair.ip_a]).stdout
        self.assertIn(f"src {new}", route)
        # wireguard-go caches its source address per peer and only forgets it on EINVAL; the
        # vanished source gives ENETUNREACH. Re-setting the same endpoint clears that cache.
        self.wg.set_peer(self.ours.public, "endpoint", f"{self.pair.ip_a}:{OUR_PORT}")

        self.assert_ping_ok(b, OUR4, "after roaming to a new source address")
        self.assert_ping_ok(b, OUR6, "after roaming to a new source address")
        self.assertTrue(ours.alive(), ours.describe())
        self.stop(ours)

    def test_wrong_public_key(self) -> None:
        """wireguard-go holds a wrong public key for us: no handshake in either direction."""
        wrong = h.gen_keypair().public
        self.configure_wg(f"{self.pair.ip_a}:{OUR_PORT}", our_public=wrong)
        ours, _ = self.start_ours(
            "--ping", WG4, "--count", "3", "--timeout", "1",
            endpoint=f"{self.pair.ip_b}:{WG_PORT}",
        )  # fmt: skip
        result = h.ping(self.pair.b, OUR4, wait=1)
        self.assertEqual(ours.wait_exit(30), 0, ours.describe())
        self.assertNotEqual(result.returncode, 0, result.stdout)
        self.assertEqual(h.ping_received(result), 0, result.stdout)
        self.assertEqual(ours.of("pong"), [], ours.describe())
        self.assertEqual(len(ours.of("lost")), 3, ours.describe())
        self.assertEqual(ours.of("handshake"), [], ours.describe())
        stats = ours.stats()
        self.assertEqual(stats["handshakes"], 0, stats)
        self.assertGreater(drops(stats), 0, f"initiations for a key we lack must count: {stats}")
        self.assertEqual(self.wg_handshake(wrong), 0)

    def test_wrong_preshared_key(self) -> None:
        """Both sides use a preshared key, but different ones: no handshake either way."""
        self.configure_wg(f"{self.pair.ip_a}:{OUR_PORT}", psk=h.gen_psk())
        ours, _ = self.start_ours(
            "--ping", WG4, "--count", "3", "--timeout", "1",
            endpoint=f"{self.pair.ip_b}:{WG_PORT}", psk=h.gen_psk(),
        )  # fmt: skip
        result = h.ping(self.pair.b, OUR4, wait=1)
        self.assertEqual(ours.wait_exit(30), 0, ours.describe())
        self.assertEqual(h.ping_received(result), 0, result.stdout)
        self.assertEqual(ours.of("pong"), [], ours.describe())
        self.assertEqual(len(ours.of("lost")), 3, ours.describe())
        self.assertEqual(ours.of("handshake"), [], ours.describe())
        self.assertEqual(ours.stats()["handshakes"], 0, ours.describe())
        self.assertEqual(self.wg_handshake(), 0)

    def test_garbage(self) -> None:
        """10,000 junk datagrams: we drop and count them, stay up, and keep the session."""
        ours, _ = self.start_ours("--duration", "60")
        self.configure_wg(f"{self.pair.ip_a}:{OUR_PORT}")
        self.assert_ping_ok(self.pair.b, OUR4, "before garbage")
        ours.drain(0.3)
        our_handshakes = len(ours.of("handshake"))
        wg_handshake = self.wg_handshake()
        self.assertGreater(wg_handshake, 0)

        snmp_before = self.pair.a.udp_snmp()
        sent = self.pair.b.run(
            [sys.executable, "-c", GARBAGE_SCRIPT, self.pair.ip_a, str(OUR_PORT),
             str(GARBAGE_SEED), str(GARBAGE_COUNT)],
            timeout=30,
        )  # fmt: skip
        self.assertEqual(sent.stdout.strip(), str(GARBAGE_COUNT))
        snmp_after = self.pair.a.udp_snmp()
        kernel_dropped = snmp_after["InErrors"] - snmp_before["InErrors"]
        delivered = GARBAGE_COUNT - kernel_dropped

        self.assertTrue(ours.alive(), ours.describe())
        self.assert_ping_ok(self.pair.b, OUR4, "after garbage")
        self.assert_ping_ok(self.pair.b, OUR6, "after garbage")
        self.assertTrue(ours.alive(), ours.describe())
        stats = self.stop(ours)
        detail = f"delivered={delivered} (kernel dropped {kernel_dropped}) stats={stats}"
        self.assertGreaterEqual(drops(stats), delivered, detail)
        self.assertGreaterEqual(stats["rx_datagrams"], delivered, detail)
        self.assertEqual(len(ours.of("handshake")), our_handshakes, ours.describe())
        self.assertEqual(stats["handshakes"], our_handshakes, detail)
        self.assertEqual(self.wg_handshake(), wg_handshake)

    def test_rekey_under_traffic(self) -> None:
        """Rekeying every 2 s while pinging every 50 ms for 10 s loses nothing."""
        self.configure_wg(None)
        count = 200
        ours, _ = self.start_ours(
            "--ping", WG4, "--count", str(count), "--interval", "0.05", "--timeout", "2",
            "--rekey-after", "2",
            endpoint=f"{self.pair.ip_b}:{WG_PORT}",
        )  # fmt: skip
        self.assertEqual(ours.wait_exit(40), 0, ours.describe())
        lost = ours.of("lost")
        self.assertEqual(lost, [], f"lost {len(lost)}: {lost[:10]}\n{ours.stderr()}")
        self.assertEqual(len(ours.of("pong")), count, ours.stderr())
        self.assertGreaterEqual(len(ours.of("handshake")), 3, ours.of("handshake"))
        self.assertGreaterEqual(ours.stats()["handshakes"], 3)
        self.assertGreater(self.wg_handshake(), 0)
