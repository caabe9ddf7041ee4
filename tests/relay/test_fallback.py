"""The relay's end of the TCP fallback, in process: ALPN funnel-wg/1 on a public port.

The real path (nftables dropping the node's UDP, twistd processes) is
tests/e2e/test_fallback.py; here the node's UDP goes to a port where nobody listens.
"""

from __future__ import annotations

import socket
import ssl
import time

from twisted.internet import reactor, threads
from twisted.trial.unittest import TestCase

from funnel_tw.config import load_node_config
from funnel_tw.node.service import NodeService
from funnel_tw.node.status.document import status_document
from funnel_tw.overlay.stream import ALPN, frame
from funnel_tw.relay.statustext import format_relay_status
from tests._support import free_port, wait_until

from .test_public import NAME, Funnel


def link_handshake(port: int, payload: bytes, alpn: bytes = ALPN) -> tuple[str | None, bytes]:
    """TLS with ALPN ``alpn`` and no SNI, as a node dials; send ``payload``; read to the end."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols([alpn.decode()])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        chosen = tls.selected_alpn_protocol()
        tls.sendall(payload)
        received = b""
        try:
            while chunk := tls.recv(65536):
                received += chunk
        except (ssl.SSLError, ConnectionResetError):
            pass
    return chosen, received


class RelayFallbackTests(TestCase):
    timeout = 60

    async def test_link_terminated_by_the_relay_and_hostile_framing_closes_it(self) -> None:
        funnel = Funnel(self)
        chosen, received = await threads.deferToThread(
            link_handshake, funnel.public, frame(b"\x09not wireguard") + b"\x00\x00"
        )
        self.assertEqual((chosen, received), ("funnel-wg/1", b""))
        self.assertEqual(funnel.counters().get("tcp_fallback"), 1)
        self.assertEqual(funnel.relay.fallback.counters, {"opened": 1, "closed": 1})
        # the junk datagram reached WireGuard, which dropped it as it drops junk over UDP
        await wait_until(lambda: not funnel.relay.limits.open, 5, "the link to be released")

    async def test_off_means_an_ordinary_connection_without_sni(self) -> None:
        funnel = Funnel(self, relay_extra="tcp-fallback = no")

        def dial() -> str:
            try:
                link_handshake(funnel.public, b"")
            except (ssl.SSLError, ConnectionResetError, OSError) as e:
                return type(e).__name__
            return "handshake completed"

        self.assertNotEqual(await threads.deferToThread(dial), "handshake completed")
        self.assertEqual(funnel.counters().get("no_sni"), 1)
        self.assertIsNone(funnel.counters().get("tcp_fallback"))

    async def test_node_without_udp_serves_through_the_link(self) -> None:
        """The node's UDP endpoint is dead; after 5 s it dials the public port, and funnel
        requests through the relay reach its backend over the link."""
        funnel = Funnel(self)
        await funnel.node.stopService()
        ini = funnel.dir / "node.ini"
        wg = funnel.relay.config.listen_port
        dead = free_port(socket.SOCK_DGRAM)
        ini.write_text(
            ini.read_text().replace(
                f"endpoint = 127.0.0.1:{wg}\n",
                f"endpoint = 127.0.0.1:{dead}\ntcp-fallback = 127.0.0.1:{funnel.public}\n",
            )
        )
        funnel.node = NodeService(load_node_config(ini), reactor)
        funnel.node.startService()
        await wait_until(
            lambda: funnel.relay.fallback.links, 15, "the node's fallback link to the relay"
        )
        await funnel.ready()
        # the relay put the stopped node out of service; its probe brings the new one back
        await wait_until(
            lambda: funnel.relay.health.usable("n"), 10, "the relay to take the node back"
        )
        answer = await threads.deferToThread(funnel.get, NAME)
        self.assertIn(b"hello from the backend", answer)
        peer = funnel.node.overlay.device.peers[0]
        assert peer.endpoint is not None
        self.assertTrue(peer.endpoint[0].startswith("tcp://127.0.0.1:"))
        self.assertEqual(funnel.node.counters()["fallback"]["links"], 1)
        # status on both sides says so
        doc = funnel.relay.observer.status()
        self.assertEqual(len(doc["tcp_fallback"]["links"]), 1)
        self.assertTrue(doc["nodes"][0]["endpoint"].startswith("tcp://127.0.0.1:"))
        text = format_relay_status(doc)
        self.assertIn("TCP fallback links (nodes whose UDP is blocked):", text)
        self.assertIn(doc["tcp_fallback"]["links"][0], text)
        node_doc = status_document(funnel.node, reactor.seconds())
        self.assertEqual(node_doc["peers"][0]["transport"], "tcp")

    async def test_shutdown_does_not_wait_for_links(self) -> None:
        """Links carry the connections being drained: they go last, not after the timeout."""
        funnel = Funnel(self, relay_extra="shutdown-timeout = 20")
        held = socket.create_connection(("127.0.0.1", funnel.public), timeout=10)
        self.addCleanup(held.close)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["funnel-wg/1"])
        tls = await threads.deferToThread(context.wrap_socket, held)
        self.addCleanup(tls.close)
        await wait_until(lambda: funnel.relay.fallback.links, 5, "the link")
        started = time.monotonic()
        await funnel.stop()
        self.assertLess(time.monotonic() - started, 5)
