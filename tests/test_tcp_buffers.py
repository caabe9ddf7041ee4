"""The tcp-* keys reach the userspace stack of both daemons (built from their files, not
started): what the operator wrote is what each new connection gets."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.config import load_node_config, load_relay_config
from funnel_tw.keys import encode_key, generate_private_key
from funnel_tw.netstack import checksum
from funnel_tw.netstack.stack import Stack
from funnel_tw.overlay.userspace import UserspaceOverlayInterface
from funnel_tw.wireguard import transport_key

KEYS = (
    "tcp-receive-buffer-max = 12M\ntcp-send-buffer-max = 16M\ntcp-memory = 96M\n"
    "tcp-max-connections = 20000\ntcp-path-memory = 120\ntcp-timestamps = off\n"
    "tcp-congestion = bbr\n"
)


class _Files(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()

    def write(self, name: str, section: str, address: str, extra: str) -> Path:
        path = self.dir / name
        path.write_text(
            f"[{section}]\nprivate-key = {encode_key(generate_private_key())}\n"
            f"address = {address}\nstate-dir = {self.dir / 'state'}\n{extra}"
        )
        return path


class DaemonStackTests(_Files):
    def assertStack(self, stack: Stack, receive: int, send: int, memory: int) -> None:
        self.assertEqual(
            (
                stack.receive_buffer_max,
                stack.send_buffer_max,
                stack.receive_memory,
                stack.max_connections,
                stack.paths.lifetime if stack.paths else 0,
                stack.timestamps,
                stack.congestion,
            ),
            (receive, send, memory, 20000, 120.0, False, "bbr"),
        )

    def test_node(self) -> None:
        from funnel_tw.node.service import NodeService

        config = load_node_config(self.write("node.ini", "node", "100.64.0.2/32", KEYS))
        overlay = NodeService(config, Clock()).overlay
        assert isinstance(overlay, UserspaceOverlayInterface)
        self.assertStack(overlay.stack, 12 << 20, 16 << 20, 96 << 20)

    def test_relay(self) -> None:
        from funnel_tw.relay.service import RelayService

        config = load_relay_config(self.write("relay.ini", "relay", "100.64.0.1/32", KEYS))
        self.assertStack(RelayService(config, Clock()).overlay.stack, 12 << 20, 16 << 20, 96 << 20)


class CongestionChoicesTests(SynchronousTestCase):
    def test_config_offers_what_the_stack_has(self) -> None:
        """config sits below netstack, so tcp-congestion's values are written out there too:
        they must stay netstack's, the default first."""
        from funnel_tw.config.model import CONGESTION, TCP_DEFAULTS
        from funnel_tw.netstack import stack

        self.assertEqual(CONGESTION, stack.CONGESTION)
        self.assertEqual(TCP_DEFAULTS.congestion, stack.CONGESTION[0])


class StatusTests(_Files):
    """``funnel-tw status`` shows the caps next to the overlay, as the keys that set them."""

    LINE = (
        "  TCP buffers: tcp-receive-buffer-max 12M, tcp-send-buffer-max 16M, tcp-memory 96M,"
        " tcp-max-connections 20000, tcp-path-memory 120s, tcp-timestamps off,"
        " tcp-congestion bbr"
    )

    def test_node(self) -> None:
        from funnel_tw.node.service import NodeService
        from funnel_tw.node.status.document import status_document
        from funnel_tw.node.status.text import format_status

        config = load_node_config(self.write("node.ini", "node", "100.64.0.2/32", KEYS))
        doc = status_document(NodeService(config, Clock()), 0.0)
        self.assertEqual(
            doc["tcp"],
            {
                "receive_buffer_max": 12 << 20,
                "send_buffer_max": 16 << 20,
                "memory": 96 << 20,
                "connections": 20000,
                "path_memory": 120.0,
                "timestamps": False,
                "congestion": "bbr",
                "checksum": checksum.IMPLEMENTATION,
                "transport": transport_key.IMPLEMENTATION,
            },
        )
        lines = format_status(doc).splitlines()
        self.assertEqual(lines[2], self.LINE)
        self.assertEqual(lines[3], f"  TCP checksum: {checksum.IMPLEMENTATION}")
        self.assertEqual(lines[4], f"  WireGuard transport: {transport_key.IMPLEMENTATION}")

    def test_node_on_tun_shows_none(self) -> None:
        from funnel_tw.node.service import NodeService
        from funnel_tw.node.status.document import status_document
        from funnel_tw.node.status.text import format_status

        tun = "network = tun\n"
        config = load_node_config(self.write("node.ini", "node", "100.64.0.2/32", tun))
        doc = status_document(NodeService(config, Clock()), 0.0)  # not started: no device yet
        self.assertIsNone(doc["tcp"])
        self.assertNotIn("TCP buffers", format_status(doc))
        self.assertNotIn("TCP checksum", format_status(doc))
        self.assertNotIn("WireGuard transport", format_status(doc))

    def test_relay(self) -> None:
        from funnel_tw.relay.service import RelayService
        from funnel_tw.relay.statustext import format_relay_status

        config = load_relay_config(self.write("relay.ini", "relay", "100.64.0.1/32", KEYS))
        doc = RelayService(config, Clock()).observer.status()
        self.assertEqual(doc["tcp"]["send_buffer_max"], 16 << 20)
        lines = format_relay_status(doc).splitlines()
        self.assertEqual(lines[2], self.LINE)
        self.assertEqual(lines[3], f"  TCP checksum: {checksum.IMPLEMENTATION}")
        self.assertEqual(lines[4], f"  WireGuard transport: {transport_key.IMPLEMENTATION}")
