"""What choosing a node costs per new public connection, pools beside the single-node lookup
(a benchmark, not a test).

    python bench/pool.py [--connections 200000]

In one process, no sockets: the reference is the lookup the relay did before pools (one dict
lookup by name, ``Routes.lookup``); the rows after it are what ``PublicConnection`` now does
per ClientHello: find the pool, read the nodes' WireGuard state into the health view
(``Prober.refresh``) and order the nodes in service (``Balancer.order``). Bytes of spliced
connections do not pass through any of it.
"""

from __future__ import annotations

import argparse
import sys
import time
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from twisted.internet import task  # noqa: E402

from funnel_tw.config import RelayConfig, RelayNode  # noqa: E402
from funnel_tw.relay.balance import Balancer  # noqa: E402
from funnel_tw.relay.health import Health  # noqa: E402
from funnel_tw.relay.probe import Prober  # noqa: E402
from funnel_tw.relay.routes import Routes  # noqa: E402


class FakePeer:
    def __init__(self, name: str) -> None:
        self.name = name
        self.endpoint = ("127.0.0.1", 1)
        self.last_handshake = 0.0
        self.rx_packets = 1


def node(i: int, hostname: str) -> RelayNode:
    return RelayNode(
        name=f"n{i}",
        public_key=bytes(32),
        allowed_ips=(ip_network(f"100.64.{1 + i // 256}.{i % 256}/32"),),
        hostnames=(hostname,),
        peerapi=(ip_address(f"100.64.{1 + i // 256}.{i % 256}"), 41642),
        endpoint=None,
        persistent_keepalive=0,
        preshared_key=None,
    )


def setup(pool_size: int, balance: str) -> tuple[Routes, Balancer]:
    # 1000 names, one of which is served by a pool of pool_size nodes
    nodes = [node(i, f"name{i}.example.com") for i in range(1000)]
    nodes += [node(1000 + i, "pool.example.com") for i in range(pool_size)]
    routes = Routes(nodes)
    clock = task.Clock()
    health = Health()
    config: Any = RelayConfig(
        path=Path("relay.ini"), private_key=bytes(32), listen_port=0, addresses=(),
        public_address="127.0.0.1", public_ports=(443,), client_hello_timeout=10,
        max_connections=10, mtu=1280, nodes=tuple(nodes), balance=balance,
    )  # fmt: skip
    balancer = Balancer(routes, health, lambda: config)
    peers = [FakePeer(n.name) for n in nodes]
    prober = Prober(clock, routes, health, lambda: peers, lambda h, p, t: None)  # type: ignore[arg-type,return-value]
    prober._loop = None
    health.sync((tuple(n.name for n in p.nodes) for p in routes.pools()), 0.0)
    prober._peers = {p.name: p for p in peers}  # what tick() reads
    balancer.refresh = prober.refresh
    return routes, balancer


def per_connection(n: int, work: Any) -> float:
    started = time.perf_counter()
    for _ in range(n):
        work()
    return (time.perf_counter() - started) / n * 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=200_000)
    n = parser.parse_args().connections
    routes, balancer = setup(1, "round-robin")
    rows = [("reference: Routes.lookup (before pools)", per_connection(
        n, lambda: routes.lookup("name7.example.com")))]  # fmt: skip

    def chooser(name: str, balancer: Balancer) -> Any:
        def work() -> None:
            pool = balancer.routes.pool(name)
            assert pool is not None
            balancer.order(pool)

        return work

    rows.append(("lone node: pool + refresh + order", per_connection(
        n, chooser("name7.example.com", balancer))))  # fmt: skip
    for size, balance in ((2, "round-robin"), (2, "first"), (4, "least-connections")):
        _, b = setup(size, balance)
        rows.append((f"pool of {size}, {balance}", per_connection(
            n, chooser("pool.example.com", b))))  # fmt: skip
    reference = rows[0][1]
    print(f"choosing a node per new public connection ({n} each):")
    for label, ns in rows:
        print(f"  {label:45s} {ns / 1000:7.2f} us  ({ns / reference:5.1f}x the reference)")


if __name__ == "__main__":
    main()
