"""UDP blocked: the node carries WireGuard over TLS to the relay's public port, and back.

Three namespaces, made here and deleted even on failure::

    client 10.233.8.2 -- 10.233.8.1 relay 10.233.7.1 -- 10.233.7.2 home (the node)
                                    public :443                    nftables: no UDP on its uplink
                                    WireGuard :41641

The node's only configuration for its relay is the usual ``[peer]`` (``tcp-fallback = auto``:
the endpoint's host, port 443). Nothing reaches the relay's WireGuard port, so the node must
find the fallback on its own; curl in the client namespace then goes through the funnel as
always. Lifting the block moves the node back to UDP at its next probe.
"""

from __future__ import annotations

import os
import re
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e import harness
from tests.interop.netns import Namespace, run, veth_pair

NAME = "fallback.e2e.test"
BLOCK_UDP = """
table inet e2e_noudp {
    chain output {
        type filter hook output priority filter; policy accept;
        oifname "uplink" meta l4proto udp counter drop
    }
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "uplink" meta l4proto udp counter drop
    }
}
"""


class FallbackTests(SynchronousTestCase):
    def setUp(self) -> None:
        harness.require_netns(self)
        # the daemons inherit it: UDP is tried again every 3 s instead of every minute
        os.environ["FUNNEL_TW_FALLBACK_PROBE"] = "3"
        self.addCleanup(os.environ.pop, "FUNNEL_TW_FALLBACK_PROBE", None)
        self.client = self.namespace("client")
        self.relay_ns = self.namespace("relay")
        self.home = self.namespace("home")
        veth_pair(self.client, self.relay_ns, "10.233.8.2/24", "10.233.8.1/24", "eth0", "pub")
        veth_pair(self.relay_ns, self.home, "10.233.7.1/24", "10.233.7.2/24", "wg", "uplink")
        run([*self.home.exec_prefix(), "nft", "-f", "-"], input=BLOCK_UDP)
        self.funnel = harness.Funnel(
            self.addCleanup,
            relay_prefix=self.relay_ns.exec_prefix(),
            public_address="0.0.0.0",
            relay_endpoint_host="10.233.7.1",
            public_port=443,
            relay_wg_port=41641,
        )
        self.node = self.funnel.add_node(
            "home", [NAME], prefix=self.home.exec_prefix(), keepalive=5
        )

    def namespace(self, role: str) -> Namespace:
        ns = Namespace(role)
        self.addCleanup(ns.delete)
        return ns

    def curl(self) -> harness.CurlResult:
        return self.funnel.curl(
            self.node,
            connect_host="10.233.8.1",
            prefix=self.client.exec_prefix(),
            path="/over/tcp",
            timeout=10,
        )

    def download_mb_s(self, size: int = 16 << 20) -> float:
        """One download through the funnel; MB/s as the client saw it (reported, not judged)."""
        started = time.monotonic()
        result = self.funnel.curl(
            self.node,
            connect_host="10.233.8.1",
            prefix=self.client.exec_prefix(),
            path=f"/big/{size}",
            extra=["-o", "/dev/null"],
            timeout=60,
        )
        self.assertEqual((result.returncode, result.status), (0, 200), result.stderr)
        return size / (time.monotonic() - started) / 1e6

    def test_udp_blocked_node_reaches_relay_over_tcp(self) -> None:
        started = time.monotonic()
        self.funnel.start(probe=False)
        results: list[harness.CurlResult] = []

        def works() -> bool:
            results.append(self.curl())
            return results[-1].status == 200

        try:
            harness.wait_until_blocking(works, 30, "curl through the fallback", interval=0.5)
        except AssertionError as e:
            raise AssertionError(f"{e}: {results[-1:]}\n{self.funnel.logs()}") from None
        took = time.monotonic() - started
        self.assertIn(self.node.text, results[-1].body)
        self.assertLess(took, 15.0, f"the bound: over TCP within 15 s\n{self.funnel.logs()}")
        assert self.node.daemon is not None and self.funnel.relay is not None
        node_log = self.node.daemon.log()
        self.assertIn("TCP fallback to relay open", node_log)
        self.assertRegex(self.funnel.relay.log(), r"TCP fallback link from 10\.233\.7\.2:\d+ open")
        # the block is real: the node's UDP was dropped, and no handshake went over it
        counters = self.home.run(["nft", "list", "table", "inet", "e2e_noudp"]).stdout
        dropped = [int(n) for n in re.findall(r"packets (\d+)", counters)]
        self.assertGreater(sum(dropped), 0, counters)
        self.assertRegex(node_log, r"handshake with relay complete \(initiator\), endpoint tcp://")
        for _ in range(3):
            again = self.curl()
            self.assertEqual((again.returncode, again.status), (0, 200), again.stderr)
        over_tcp = self.download_mb_s()
        print(f"\n  funnel over the TCP fallback answered {took:.1f} s after the node started")

        # UDP comes back: the next probe's handshake is answered over UDP, roaming moves both
        # ends back, and the node closes the link
        offset = self.node.daemon.log_size()
        self.home.run(["nft", "delete", "table", "inet", "e2e_noudp"])
        self.node.daemon.wait_log(r"UDP to relay works again", timeout=20, after=offset)
        self.funnel.relay.wait_log(r"TCP fallback link from 10\.233\.7\.2:\d+ closed")
        self.assertRegex(
            self.funnel.relay.log(),
            r"handshake with home complete \(responder\), endpoint 10\.233\.7\.2:\d+",
        )
        for _ in range(3):
            again = self.curl()
            self.assertEqual((again.returncode, again.status), (0, 200), again.stderr)
        over_udp = self.download_mb_s()
        print(
            f"  16 MiB download: {over_tcp:.1f} MB/s over the TCP fallback, {over_udp:.1f} MB/s "
            f"over UDP ({over_tcp / over_udp:.2f}x)"
        )
