"""Tailscale "serve": a port without ``funnel = yes`` is reachable by the node's ordinary
WireGuard peers on its overlay address (never through a relay)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import defer, endpoints, protocol, reactor, ssl
from twisted.trial.unittest import TestCase

from funnel_tw import keys
from funnel_tw.config import load_node_config
from funnel_tw.node.service import NodeService
from funnel_tw.overlay.interface import StaticPeer
from funnel_tw.overlay.userspace import UserspaceOverlayInterface

NAME = "node.example.com"


class Fetch(protocol.Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(f"GET / HTTP/1.0\r\nHost: {NAME}\r\n\r\n".encode())

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.data)


class TailnetServeTests(TestCase):
    timeout = 30

    async def test_overlay_peer_reaches_a_serve_port(self) -> None:
        from ipaddress import ip_interface, ip_network

        folder = Path(self.mktemp()).absolute()
        folder.mkdir()
        node_key, laptop_key = keys.generate_private_key(), keys.generate_private_key()
        (folder / "node.ini").write_text(f"""[node]
private-key = {keys.encode_key(node_key)}
listen-port = 0
address = 100.64.0.2/32
hostname = {NAME}

[peer laptop]
public-key = {keys.encode_key(keys.public_key(laptop_key))}
allowed-ips = 100.64.0.3/32

[serve 8443]
/ = text:tailnet only
""")
        node = NodeService(load_node_config(folder / "node.ini"), reactor)
        node.startService()
        self.addCleanup(node.stopService)
        laptop = UserspaceOverlayInterface(
            reactor,
            private_key=laptop_key,
            addresses=[ip_interface("100.64.0.3/32")],
            listen_port=0,
            peers=[
                StaticPeer(
                    "node",
                    keys.public_key(node_key),
                    (ip_network("100.64.0.2/32"),),
                    ("127.0.0.1", node.overlay.port),
                )
            ],
        )
        laptop.start()
        self.addCleanup(laptop.stop)
        ca = ssl.Certificate.loadPEM((node.config.state_dir / "tls" / "ca.pem").read_bytes())
        tls = endpoints.wrapClientTLS(
            ssl.optionsForClientTLS(NAME, trustRoot=ca),
            laptop.client_endpoint("100.64.0.2", 8443),
        )
        fetch = Fetch()
        await tls.connect(protocol.Factory.forProtocol(lambda: fetch))
        answer = await fetch.done
        self.assertTrue(answer.startswith(b"HTTP/1.0 200"), answer[:80])
        self.assertTrue(answer.endswith(b"tailnet only"))
        # the same port is not offered to the internet: no funnel for it
        self.assertFalse(node.admits_funnel(NAME, 8443))
