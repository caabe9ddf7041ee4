"""``funnel-tw demo``: what works so far, end to end, in one process on loopback.

Today that is the WireGuard layer: a relay-side and a node-side device, each with its own
UDP port on 127.0.0.1, complete a handshake and ping each other's overlay addresses over
IPv4 and IPv6. The relay, the node's HTTPS serving and the sample backend join this demo as
they are built.
"""

from __future__ import annotations

import argparse
import sys
from ipaddress import ip_interface, ip_network
from typing import Any

import attrs
from twisted.internet import defer, task

from . import keys
from .overlay.interface import OverlayInterface, PingTimeout
from .wireguard.device import Peer


@attrs.frozen
class _Peer:
    name: str
    public_key: bytes
    allowed_ips: tuple[Any, ...]
    endpoint: tuple[str, int] | None
    persistent_keepalive: int = 0
    preshared_key: bytes | None = None


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def _run(reactor: Any, count: int) -> int:
    relay_key, node_key = keys.generate_private_key(), keys.generate_private_key()
    relay_addresses = [ip_interface("100.64.0.1/32"), ip_interface("fd7a:115c:a1e0::1/128")]
    node_addresses = [ip_interface("100.64.0.2/32"), ip_interface("fd7a:115c:a1e0::2/128")]
    relay = OverlayInterface(
        reactor,
        private_key=relay_key,
        addresses=relay_addresses,
        peers=[
            _Peer(
                "node",
                keys.public_key(node_key),
                tuple(ip_network(str(a)) for a in node_addresses),
                None,
            )
        ],
        listen_port=0,
    )
    relay.start()
    node = OverlayInterface(
        reactor,
        private_key=node_key,
        addresses=node_addresses,
        peers=[
            _Peer(
                "relay",
                keys.public_key(relay_key),
                tuple(ip_network(str(a)) for a in relay_addresses),
                ("127.0.0.1", relay.port),
                persistent_keepalive=25,
            )
        ],
        listen_port=0,
    )
    assert node.tunnel is None
    node.start()
    _say(
        f"relay: WireGuard on udp 127.0.0.1:{relay.port}, public key "
        f"{keys.encode_key(keys.public_key(relay_key))}"
    )
    _say(
        f"node:  WireGuard on udp 127.0.0.1:{node.port}, public key "
        f"{keys.encode_key(keys.public_key(node_key))}"
    )

    def on_event(side: str) -> Any:
        def report(kind: str, peer: Peer, initiator: bool) -> None:
            if kind == "handshake-complete":
                role = "initiator" if initiator else "responder"
                _say(f"{side}: handshake with {peer.name} complete ({role})")

        return report

    assert relay.tunnel is not None and node.tunnel is not None
    relay.tunnel.event_handlers.append(on_event("relay"))
    node.tunnel.event_handlers.append(on_event("node"))

    failures = 0
    for source, target in ((node, relay_addresses), (relay, node_addresses)):
        for address in target:
            for seq in range(count):
                try:
                    rtt = await source.ping(address.ip, seq, timeout=2.0)
                except PingTimeout:
                    failures += 1
                    _say(f"ping {address.ip} seq={seq}: no reply")
                else:
                    _say(f"ping {address.ip} seq={seq}: reply in {rtt * 1000:.2f} ms")
                await task.deferLater(reactor, 0.05, lambda: None)
    stats = node.stats()
    _say(
        f"node: {stats['tx_packets']} packets sent, {stats['rx_packets']} received, "
        f"{sum(v for k, v in stats.items() if k.startswith('drop_'))} dropped"
    )
    node.stop()
    relay.stop()
    _say("demo ok" if not failures else f"demo FAILED: {failures} pings lost")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="funnel-tw demo", description=__doc__)
    parser.add_argument("--count", type=int, default=3, help="pings per address")
    options = parser.parse_args(argv)
    result: list[int] = []

    async def go(reactor: Any) -> None:
        result.append(await _run(reactor, options.count))

    try:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(go(reactor)))
    except SystemExit as e:
        if e.code:
            return int(e.code)
    return result[0] if result else 1
