"""A node behind NAT: the relay has no endpoint for it and learns it from its packets.

Four namespaces, made here and deleted even on failure::

    client 10.233.3.2 -- 10.233.3.1 relay 10.233.1.1 -- 10.233.1.2 router 10.233.2.1 -- node
                                    public :443           nftables: masquerade,  10.233.2.2
                                    WireGuard :41641      UDP to 50000-50999,
                                                          stateful forward

The node knows only the relay's endpoint and sends persistent keepalives; the relay has no
route to 10.233.2.0/24 and no ``endpoint`` for the node, so the only way back is the NAT
mapping the node's own packets open. curl runs in the client namespace.
"""

from __future__ import annotations

import re

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e import harness
from tests.interop.netns import Namespace, run, veth_pair

NAME = "natted.e2e.test"
NAT_RULES = """
table ip e2e_nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" meta l4proto udp masquerade to :50000-50999
        oifname "wan" masquerade
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan" oifname "wan" accept
    }
}
"""


class NatTests(SynchronousTestCase):
    def setUp(self) -> None:
        harness.require_netns(self)
        self.client = self.namespace("client")
        self.relay_ns = self.namespace("relay")
        self.router = self.namespace("router")
        self.home = self.namespace("home")
        veth_pair(self.client, self.relay_ns, "10.233.3.2/24", "10.233.3.1/24", "eth0", "pub")
        veth_pair(self.relay_ns, self.router, "10.233.1.1/24", "10.233.1.2/24", "wg", "wan")
        veth_pair(self.router, self.home, "10.233.2.1/24", "10.233.2.2/24", "lan", "uplink")
        self.home.run(["ip", "route", "add", "default", "via", "10.233.2.1"])
        self.router.sysctl("net.ipv4.ip_forward", "1")
        run([*self.router.exec_prefix(), "nft", "-f", "-"], input=NAT_RULES)
        self.addCleanup(self.router.run, ["nft", "delete", "table", "ip", "e2e_nat"], check=False)

        self.funnel = harness.Funnel(
            self.addCleanup,
            relay_prefix=self.relay_ns.exec_prefix(),
            public_address="0.0.0.0",
            relay_endpoint_host="10.233.1.1",
            public_port=443,
            relay_wg_port=41641,
        )
        self.node = self.funnel.add_node(
            "home", [NAME], listen_port=41641, prefix=self.home.exec_prefix(), keepalive=2
        )
        self.funnel.start(probe=False)

    def namespace(self, role: str) -> Namespace:
        ns = Namespace(role)
        self.addCleanup(ns.delete)
        return ns

    def curl(self) -> harness.CurlResult:
        return self.funnel.curl(
            self.node,
            connect_host="10.233.3.1",
            prefix=self.client.exec_prefix(),
            path="/behind/nat",
            http2=True,
            timeout=10,
        )

    def test_funnel_to_a_node_behind_nat(self) -> None:
        # the setup really is NAT: the relay cannot reach the node's address at all
        ping = self.relay_ns.run(["ping", "-c", "1", "-W", "1", "10.233.2.2"], check=False)
        self.assertNotEqual(ping.returncode, 0)
        self.assertNotIn("endpoint", self.funnel.relay_ini.read_text())

        results: list[harness.CurlResult] = []

        def works() -> bool:
            results.append(self.curl())
            return results[-1].status == 200

        try:
            harness.wait_until_blocking(works, 20, "curl through the NATed funnel", interval=0.3)
        except AssertionError as e:
            raise AssertionError(f"{e}: {results[-1:]}\n{self.funnel.logs()}") from None
        self.assertIn(self.node.text, results[-1].body)
        self.assertIn("path=/behind/nat", results[-1].body)
        self.assertEqual(results[-1].http_version, "2")

        # the relay learned the router's translated address, not the node's own
        assert self.funnel.relay is not None
        learned = re.findall(
            r"handshake with home complete \(responder\), endpoint ([\d.]+):(\d+)",
            self.funnel.relay.log(),
        )
        self.assertTrue(learned, self.funnel.relay.log()[-3000:])
        host, port = learned[-1]
        self.assertEqual(host, "10.233.1.2")
        self.assertTrue(50000 <= int(port) <= 50999, port)

        # more connections keep working over the learned endpoint
        for _ in range(3):
            again = self.curl()
            self.assertEqual((again.returncode, again.status), (0, 200), again.stderr)
