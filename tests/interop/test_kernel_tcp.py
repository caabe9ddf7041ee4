"""Our TCP/IP stack against the Linux kernel's TCP, through wireguard-go.

Namespace A runs our side (``python -m tests.interop.ourpeer``: userspace WireGuard + our own
TCP) on 10.232.N.1; namespace B runs wireguard-go on 10.232.N.2, so B's kernel TCP reaches our
stack through wireguard-go's TUN device. The kernel's side of each transfer is
``python -m tests.interop.kernel_tcp`` in B. Overlay: ours 100.64.0.2 and fd7a:115c:a1e0::2,
wireguard-go 100.64.0.1 and fd7a:115c:a1e0::1, MTU 1420 on both ends.

Covered: bulk transfers both ways over IPv4 and IPv6; random loss (nftables in A and B) and
delay plus reordering (the seeded relay ``tests.interop.impair`` between wireguard-go and us);
200 concurrent connections each way, closed cleanly on both sides; and the funnel-ingress
packet filter seen from the peer (nothing but the peerAPI port answers).

Throughput figures and counters of each transfer go to the trial log (_trial_temp/test.log).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from twisted.python import log
from twisted.trial.unittest import SynchronousTestCase

from tests.interop import netns as h
from tests.interop.kernel_tcp import (
    KernelTool,
    NodeIni,
    kernel_tool,
    snapshot_ss,
    write_tcp_node_ini,
)

OUR4, OUR6 = "100.64.0.2", "fd7a:115c:a1e0::2"
WG4, WG6 = "100.64.0.1", "fd7a:115c:a1e0::1"
OUR_NETS = (f"{OUR4}/32", f"{OUR6}/128")
WG_NETS = (f"{WG4}/32", f"{WG6}/128")
OUR_PORT = 51820
WG_PORT = 51821
RELAY_PORT = 51830
PEER_NAME = "wggo"
VETH_A = "veth-a"  # netns.veth_pair's default names
MTU = 1420

SINK_PORT = 5001  # TCP, ours and the kernel's
SOURCE_PORT = 5002
PEERAPI_PORT = 41642
#: TCP ports probed from B: the well-known ones, our sink's, the peerAPI's neighbours.
SCAN_PORTS = f"1-1024,{SINK_PORT},{PEERAPI_PORT - 1},{PEERAPI_PORT + 1}"
SCANNED = 1024 + 3
UDP_PORTS = f"53,123,{OUR_PORT},{PEERAPI_PORT},5353"

BULK = 64 << 20
IMPAIRED = 16 << 20
MANY = 200
SMALL = 64 << 10
LOSS_PCT = 2
RELAY_SEED = 20240607
#: Added to each direction (so +20 ms round trip, like netem's "delay 20ms" on one link).
RELAY_DELAY_MS = 10
RELAY_REORDER_PCT = 2  # of the datagrams, each way, held back ...
RELAY_REORDER_MS = 5  # ... this much longer, so the ones behind them overtake them
REORDERED = 8 << 20
READY_TIMEOUT = 20.0
PLAIN_INI = NodeIni(mtu=MTU)


def mbit(nbytes: int, seconds: float) -> float:
    return nbytes * 8 / max(seconds, 1e-9) / 1e6


def bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclass
class Pair:
    """Namespaces A (ours) and B (wireguard-go) on 10.232.<subnet>.0/24."""

    a: h.Namespace
    b: h.Namespace
    subnet: int

    @property
    def ip_a(self) -> str:
        return f"10.232.{self.subnet}.1"

    @property
    def ip_b(self) -> str:
        return f"10.232.{self.subnet}.2"


def make_pair(add_cleanup: h.AddCleanup, subnet: int) -> Pair:
    a = h.Namespace("ka")
    add_cleanup(a.delete)
    b = h.Namespace("kb")
    add_cleanup(b.delete)
    pair = Pair(a, b, subnet)
    h.veth_pair(a, b, f"{pair.ip_a}/24", f"{pair.ip_b}/24")
    return pair


def add_udp_loss(ns: h.Namespace, port: int, percent: int) -> None:
    """Drop ``percent`` % of the UDP datagrams arriving in ``ns`` for ``port`` (nftables).

    The table lives in the test's own namespace and goes away with it; delete() also runs as
    a cleanup so a failed test leaves no rule behind even if the namespace survived.
    """
    ns.run(["nft", "add", "table", "inet", "ftw"])
    ns.run(
        ["nft", "add", "chain", "inet", "ftw", "in",
         "{ type filter hook input priority 0; }"]
    )  # fmt: skip
    ns.run(
        ["nft", "add", "rule", "inet", "ftw", "in", "udp", "dport", str(port),
         "numgen", "random", "mod", "100", "<", str(percent), "counter", "drop"]
    )  # fmt: skip


def nft_dropped(ns: h.Namespace) -> int:
    out = ns.run(["nft", "list", "table", "inet", "ftw"]).stdout
    for line in out.splitlines():
        if "counter packets" in line:
            return int(line.split("counter packets")[1].split()[0])
    return 0


def del_udp_loss(ns: h.Namespace) -> None:
    ns.run(["nft", "delete", "table", "inet", "ftw"], check=False)


class KernelTCPTests(SynchronousTestCase):
    """Each test builds its own namespaces, wireguard-go in B and our side in A."""

    subnet = 0

    def setUp(self) -> None:
        h.skip_unless_interop(self)
        for tool in ("ss", "nft"):
            if shutil.which(tool) is None:
                h.require_interop(self, f"{tool} not installed")
        KernelTCPTests.subnet = KernelTCPTests.subnet % 200 + 1
        self.tmp = h.make_tempdir(self.addCleanup)
        self.pair = make_pair(self.addCleanup, KernelTCPTests.subnet)
        self.wg = h.start_wireguard_go(self.addCleanup, self.pair.b, self.tmp)
        self.ours = h.gen_keypair()

    # ------------------------------------------------------------------ helpers

    def note(self, text: str) -> None:
        """Figures for the trial log, with the datagrams B's sockets (wireguard-go's, whose
        receive buffer is the kernel default) dropped for lack of room."""
        overflow = self.pair.b.udp_snmp()["RcvbufErrors"]
        log.msg(f"{self.id()}: {text}; B UDP RcvbufErrors {overflow}")

    def configure_wg(self, endpoint: str | None) -> None:
        peer = h.WgPeer(self.ours.public, OUR_NETS, endpoint)
        self.wg.configure(WG_PORT, [peer], addresses=WG_NETS, routes=OUR_NETS)
        self.pair.b.run(["ip", "link", "set", self.wg.name, "mtu", str(MTU)])

    def start_ours(
        self, *args: str, endpoint: bool = True, extra: NodeIni = PLAIN_INI
    ) -> h.OurPeer:
        """Our side on OUR_PORT; it knows wireguard-go's endpoint unless ``endpoint`` is False."""
        ini = write_tcp_node_ini(
            self.tmp, self.ours.private, OUR_NETS, PEER_NAME, self.wg.keys.public, WG_NETS,
            listen_port=OUR_PORT,
            endpoint=f"{self.pair.ip_b}:{WG_PORT}" if endpoint else None,
            extra=extra,
        )  # fmt: skip
        ours = h.run_our_peer(self.addCleanup, self.pair.a, self.tmp, ini, *args)
        ready = ours.wait_for("ready", READY_TIMEOUT)
        self.assertEqual(int(ready["port"]), OUR_PORT, ours.describe())
        return ours

    def kernel(self, *args: str) -> KernelTool:
        return kernel_tool(self.addCleanup, self.pair.b, self.tmp, *args)

    def kernel_listen(self, *args: str) -> KernelTool:
        tool = self.kernel(*args)
        tool.wait_for("listening", 10)
        return tool

    def start_relay(self, *args: str) -> h.OurPeer:
        """``python -m tests.interop.impair ARGS`` in B, read as JSON lines like our side."""
        stderr_path = self.tmp / "impair.stderr"
        with open(stderr_path, "wb") as err:
            proc = self.pair.b.popen(
                [sys.executable, "-m", "tests.interop.impair", *args],
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=str(h.REPO_ROOT),
            )
        relay = h.OurPeer(proc, stderr_path)
        self.addCleanup(relay.kill)
        relay._start_reader()
        relay.wait_for("ready", 10)
        return relay

    def stop(self, ours: h.OurPeer) -> dict[str, Any]:
        self.assertEqual(ours.stop(), 0, ours.describe())
        return ours.stats()

    def kernel_sends_to_ours(
        self, ours: h.OurPeer, host: str, nbytes: int, timeout: float
    ) -> float:
        """Kernel client -> our sink: the reply and our sink event both carry its digest."""
        started = time.monotonic()
        tool = self.kernel(
            "send", f"{bracket(host)}:{SINK_PORT}", "--bytes", str(nbytes),
            "--duration", str(timeout),
        )  # fmt: skip
        events = tool.finish(timeout + 10)
        seconds = time.monotonic() - started
        sent = [e for e in events if e["event"] == "sent"]
        self.assertEqual(len(sent), 1, tool.describe())
        self.assertEqual(sent[0]["reply"], f"{nbytes} {sent[0]['sha256']}", tool.describe())
        sink = ours.wait_for("sink", 10)
        self.assertEqual((sink["bytes"], sink["sha256"]), (nbytes, sent[0]["sha256"]))
        return seconds

    def kernel_fetches_from_ours(
        self, ours: h.OurPeer, host: str, nbytes: int, timeout: float
    ) -> float:
        """Kernel client <- our source: the digest of what arrived is the one we sent."""
        started = time.monotonic()
        tool = self.kernel("fetch", f"{bracket(host)}:{SOURCE_PORT}", "--duration", str(timeout))
        events = tool.finish(timeout + 10)
        seconds = time.monotonic() - started
        fetched = [e for e in events if e["event"] == "fetched"]
        self.assertEqual(len(fetched), 1, tool.describe())
        source = ours.wait_for("source", 10)
        self.assertEqual(fetched[0]["bytes"], nbytes, tool.describe())
        self.assertEqual(fetched[0]["sha256"], source["sha256"], tool.describe())
        return seconds

    def our_send_to_kernel(self, host: str, nbytes: int, timeout: float) -> tuple[float, Any]:
        """Our client -> kernel sink, then our side exits; returns seconds and our counters."""
        sink = self.kernel_listen("sink", "--port", str(SINK_PORT), "--count", "1")
        started = time.monotonic()
        ours = self.start_ours(
            "--tcp-send", f"{bracket(host)}:{SINK_PORT}", "--bytes", str(nbytes),
        )  # fmt: skip
        self.assertEqual(ours.wait_exit(timeout), 0, ours.describe())
        seconds = time.monotonic() - started
        sent = ours.of("sent")
        self.assertEqual(len(sent), 1, ours.describe())
        self.assertEqual(sent[0]["reply"], f"{nbytes} {sent[0]['sha256']}", ours.describe())
        events = sink.finish(10)
        got = [e for e in events if e["event"] == "sink"]
        self.assertEqual(len(got), 1, sink.describe())
        self.assertEqual((got[0]["bytes"], got[0]["sha256"]), (nbytes, sent[0]["sha256"]))
        return seconds, ours.stats()

    def assert_no_state(self, stats: dict[str, Any]) -> None:
        self.assertEqual(stats.get("tcp_connections"), 0, f"{stats}")

    def ss_settled(self, timeout: float = 5.0) -> dict[str, int]:
        """B's TCP states once nothing is mid-close (bounded wait); TIME-WAIT may remain."""
        deadline = time.monotonic() + timeout
        while True:
            states = snapshot_ss(self.pair.b)
            busy = {k: v for k, v in states.items() if k not in ("TIME-WAIT", "LISTEN")}
            if not busy or time.monotonic() > deadline:
                return states
            time.sleep(0.1)

    # ------------------------------------------------------------------ 1. bulk

    def bulk(self, our_addr: str, wg_addr: str) -> None:
        self.configure_wg(f"{self.pair.ip_a}:{OUR_PORT}")
        ours = self.start_ours("--tcp-sink", str(SINK_PORT), "--duration", "60")
        to_ours = self.kernel_sends_to_ours(ours, our_addr, BULK, 40)
        stats_in = self.stop(ours)
        self.assert_no_state(stats_in)
        to_kernel, stats_out = self.our_send_to_kernel(wg_addr, BULK, 60)
        self.assert_no_state(stats_out)
        self.note(
            f"kernel->ours {mbit(BULK, to_ours):.0f} Mbit/s ({to_ours:.2f} s), "
            f"ours->kernel {mbit(BULK, to_kernel):.0f} Mbit/s ({to_kernel:.2f} s incl. start); "
            f"counters in {stats_in} out {stats_out}"
        )

    def test_bulk_ipv4(self) -> None:
        """64 MiB kernel client -> our server, 64 MiB our client -> kernel server, IPv4."""
        self.bulk(OUR4, WG4)

    def test_bulk_ipv6(self) -> None:
        """The same over IPv6 (MSS 1360 instead of 1380)."""
        self.bulk(OUR6, WG6)

    def test_exit_right_after_close(self) -> None:
        """Our client exits as soon as its connection is closed: the kernel's FIN (which came
        with the sink's answer) must be acknowledged by then, or B's socket stays in LAST-ACK,
        retransmitting to nobody."""
        self.configure_wg(f"{self.pair.ip_a}:{OUR_PORT}")
        sink = self.kernel_listen("sink", "--port", str(SINK_PORT), "--count", "1")
        ours = self.start_ours("--tcp-send", f"{WG4}:{SINK_PORT}", "--bytes", str(SMALL))
        self.assertEqual(ours.wait_exit(30), 0, ours.describe())
        sink.finish(10)
        states = self.ss_settled(2.0)
        self.assertEqual(states, {}, f"ss -tan in B after our side exited: {states}")

    # ------------------------------------------------------------------ 2. impaired paths

    def test_random_loss(self) -> None:
        """2 % of WireGuard datagrams dropped in each direction (nftables in A and in B)."""
        self.configure_wg(f"{self.pair.ip_a}:{OUR_PORT}")
        ours = self.start_ours(
            "--tcp-sink", str(SINK_PORT), "--tcp-source", str(SOURCE_PORT),
            "--bytes", str(IMPAIRED), "--duration", "120",
        )  # fmt: skip
        # Handshake first, so the loss is on data, not on a 5 s handshake retry.
        self.assertEqual(h.ping_received(h.ping(self.pair.b, OUR4, count=1)), 1)
        # Our UDP GSO batches would cross the veth as one skb, and one drop in B's input hook
        # would take up to 64 datagrams with it: segment on A's side so loss is per datagram.
        self.pair.a.run(["ip", "link", "set", VETH_A, "gso_max_segs", "1"])
        for ns, port in ((self.pair.a, OUR_PORT), (self.pair.b, WG_PORT)):
            self.addCleanup(del_udp_loss, ns)
            add_udp_loss(ns, port, LOSS_PCT)
        udp_before = self.pair.b.udp_snmp()
        to_ours = self.kernel_sends_to_ours(ours, OUR4, IMPAIRED, 60)
        to_kernel = self.kernel_fetches_from_ours(ours, OUR4, IMPAIRED, 60)
        dropped = (nft_dropped(self.pair.a), nft_dropped(self.pair.b))
        overflow = self.pair.b.udp_snmp()["RcvbufErrors"] - udp_before["RcvbufErrors"]
        stats = self.stop(ours)
        self.assert_no_state(stats)
        self.assertGreater(min(dropped), 0, "the loss rules dropped nothing")
        # Data we sent was lost in B: only our retransmissions can have repaired it.
        self.assertGreater(stats.get("tcp_retransmitted_segments", 0), 0, f"{stats}")
        self.note(
            f"nft dropped in A/B {dropped}, B socket overflows {overflow}; kernel->ours "
            f"{mbit(IMPAIRED, to_ours):.0f} Mbit/s ({to_ours:.2f} s), ours->kernel "
            f"{mbit(IMPAIRED, to_kernel):.0f} Mbit/s ({to_kernel:.2f} s); counters {stats}"
        )

    def test_delay_and_reordering(self) -> None:
        """The seeded relay between wireguard-go and us: +10 ms each way, 2 % held 5 ms more."""
        relay = self.start_relay(
            "--listen", f"127.0.0.1:{RELAY_PORT}", "--forward", f"{self.pair.ip_a}:{OUR_PORT}",
            "--seed", str(RELAY_SEED), "--delay-ms", str(RELAY_DELAY_MS),
            "--reorder-pct", str(RELAY_REORDER_PCT), "--reorder-ms", str(RELAY_REORDER_MS),
            "--duration", "150",
        )  # fmt: skip
        # wireguard-go talks to the relay; we learn the relay's far socket by roaming (we have
        # no endpoint, or our first packet would go around the relay and wireguard-go would
        # roam to us directly).
        self.configure_wg(f"127.0.0.1:{RELAY_PORT}")
        ours = self.start_ours(
            "--tcp-sink", str(SINK_PORT), "--tcp-source", str(SOURCE_PORT),
            "--bytes", str(REORDERED), "--duration", "150",
            endpoint=False,
        )  # fmt: skip
        to_ours = self.kernel_sends_to_ours(ours, OUR4, REORDERED, 60)
        to_kernel = self.kernel_fetches_from_ours(ours, OUR4, REORDERED, 60)
        stats = self.stop(ours)
        self.assert_no_state(stats)
        self.assertEqual(relay.stop(5), 0, relay.describe())
        relay_stats = relay.of("stats")[-1]
        for direction in ("up", "down"):
            counters = relay_stats[direction]
            self.assertGreater(counters["reordered"], 0, f"{relay_stats}")
            self.assertEqual(counters["sent"], counters["received"], f"{relay_stats}")
        self.assertEqual(self.wg.endpoints()[self.ours.public], f"127.0.0.1:{RELAY_PORT}")
        self.note(
            f"seed {RELAY_SEED}; relay {relay_stats}; kernel->ours "
            f"{mbit(REORDERED, to_ours):.0f} Mbit/s ({to_ours:.2f} s), ours->kernel "
            f"{mbit(REORDERED, to_kernel):.1f} Mbit/s ({to_kernel:.2f} s); counters {stats}"
        )

    # ------------------------------------------------------------------ 3. many connections

    def test_many_connections_ours_to_kernel(self) -> None:
        """200 concurrent connections from our side to a kernel sink, 64 KiB each."""
        self.configure_wg(f"{self.pair.ip_a}:{OUR_PORT}")
        sink = self.kernel_listen("sink", "--port", str(SINK_PORT), "--count", str(MANY))
        ours = self.start_ours(
            "--tcp-send", f"{WG4}:{SINK_PORT}", "--bytes", str(SMALL),
            "--connections", str(MANY), "--duration", "60",
        )  # fmt: skip
        for _ in range(MANY):
            ours.wait_for("sent", 30)
        sent = ours.of("sent")
        self.assertEqual(ours.of("tcp-error"), [], ours.describe())
        for event in sent:
            self.assertEqual(event["reply"], f"{SMALL} {event['sha256']}", event)
        sink.finish(10)
        got = sink.of("sink")
        self.assertEqual(len(got), MANY, sink.describe())
        self.assertEqual(sorted(e["sha256"] for e in sent), sorted(e["sha256"] for e in got))
        states = self.ss_settled()
        stats = self.stop(ours)
        self.assert_no_state(stats)
        # We closed first, so the TIME-WAITs are ours: up to 200. Fewer when the kernel
        # retransmitted its FIN (our ACK was lost), our second ACK found its socket gone and
        # its RST ended our TIME-WAIT (RFC 9293 3.10.7.4; Linux does the same by default).
        self.assertLessEqual(stats.get("tcp_time_wait", 0), MANY, f"{stats}")
        # The kernel sink has exited: nothing of it may be left, half-closed or otherwise.
        self.assertEqual(states, {}, f"ss -tan in B: {states}")
        self.note(f"B states {states}; counters {stats}")

    def test_many_connections_kernel_to_ours(self) -> None:
        """200 concurrent kernel connections into our sink, 64 KiB each."""
        self.configure_wg(f"{self.pair.ip_a}:{OUR_PORT}")
        ours = self.start_ours("--tcp-sink", str(SINK_PORT), "--duration", "60")
        tool = self.kernel(
            "send", f"{OUR4}:{SINK_PORT}", "--bytes", str(SMALL),
            "--connections", str(MANY), "--duration", "40",
        )  # fmt: skip
        tool.finish(50)
        sent = tool.of("sent")
        self.assertEqual(tool.of("tcp-error"), [], tool.describe())
        self.assertEqual(len(sent), MANY, tool.describe())
        for event in sent:
            self.assertEqual(event["reply"], f"{SMALL} {event['sha256']}", event)
        for _ in range(MANY):
            ours.wait_for("sink", 10)
        got = ours.of("sink")
        self.assertEqual(sorted(e["sha256"] for e in sent), sorted(e["sha256"] for e in got))
        states = self.ss_settled()
        stats = self.stop(ours)
        self.assert_no_state(stats)
        self.assertEqual(stats.get("tcp_time_wait", 0), 0, f"{stats}")
        # The kernel closed first: its TIME-WAITs, nothing established or half-closed.
        self.assertLessEqual(set(states), {"TIME-WAIT"}, f"ss -tan in B: {states}")
        self.assertLessEqual(states.get("TIME-WAIT", 0), MANY, f"ss -tan in B: {states}")
        self.note(f"B states {states}; counters {stats}")

    # ------------------------------------------------------------------ 4. ingress filter

    def test_ingress_filter(self) -> None:
        """A funnel-ingress peer reaches the peerAPI port and gets nothing back from any other.

        From B: TCP to ports 1..1024 and a few others (our sink listens on the peerAPI port),
        UDP datagrams and pings to our addresses. No RST, no ICMP, no reply: every packet that
        arrives on B's wireguard-go interface from our address is counted, and only the
        control connection to the peerAPI port may have any. TCP to the peerAPI port works
        before and after.
        """
        self.configure_wg(f"{self.pair.ip_a}:{OUR_PORT}")
        ours = self.start_ours(
            "--tcp-sink", str(PEERAPI_PORT), "--duration", "60",
            extra=NodeIni(mtu=MTU, peerapi_port=PEERAPI_PORT, funnel_ingress=True),
        )  # fmt: skip
        for addr in (OUR4, OUR6):
            self.kernel_to_peerapi(ours, addr)
        before = self.wg.transfer()[self.ours.public]
        probes = {}
        for addr in (OUR4, OUR6):
            tool = self.kernel(
                "probe", addr, "--tcp-ports", SCAN_PORTS, "--open", str(PEERAPI_PORT),
                "--udp-ports", UDP_PORTS, "--interface", self.wg.name, "--wait", "2",
            )  # fmt: skip
            tool.finish(20)
            probes[addr] = tool.of("probe")[0]
            ping = h.ping(self.pair.b, addr, count=3, wait=1)
            self.assertEqual(h.ping_received(ping), 0, ping.stdout)
        after = self.wg.transfer()[self.ours.public]
        for addr, probe in probes.items():
            # the one open port connected (the control), every other one is still waiting
            expected = {"connected": 0, "refused": 0, "pending": SCANNED, "other": 0}
            self.assertEqual(probe["tcp"], {**expected, "open_port": 1}, addr)
            self.assertEqual(probe["udp"], {"replies": 0, "refused": 0, "silent": 5}, addr)
            self.assertEqual(probe["arrived"]["capture_drops"], 0, f"{addr}: {probe}")
            self.assertEqual(probe["arrived"]["other"], 0, f"{addr}: {probe}")
            self.assertGreater(probe["arrived"]["open_port"], 0, f"{addr}: capture saw nothing")
        for addr in (OUR4, OUR6):
            self.kernel_to_peerapi(ours, addr)
        stats = self.stop(ours)
        self.assertEqual(stats.get("tcp_reset_sent", 0), 0, f"{stats}")
        self.assertEqual(stats.get("icmp_echo_answered", 0), 0, f"{stats}")
        # every SYN (with retries), datagram and echo request was dropped by the filter
        self.assertGreaterEqual(stats["drop_filtered"], 2 * (SCANNED + 5 + 3), f"{stats}")
        self.assertEqual(len(ours.of("sink")), 4 + 2, ours.describe())  # + the probes' control
        self.note(f"probes {probes}; wg rx/tx before {before} after {after}; counters {stats}")

    def kernel_to_peerapi(self, ours: h.OurPeer, addr: str) -> None:
        tool = self.kernel(
            "send", f"{bracket(addr)}:{PEERAPI_PORT}", "--bytes", str(SMALL),
            "--duration", "20",
        )  # fmt: skip
        tool.finish(30)
        sent = tool.of("sent")
        self.assertEqual(len(sent), 1, tool.describe())
        self.assertEqual(sent[0]["reply"], f"{SMALL} {sent[0]['sha256']}", tool.describe())
        ours.wait_for("sink", 10)
