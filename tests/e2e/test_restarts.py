"""Restarting either daemon (SIGTERM, then start again with the same config): the funnel is
back within 10 seconds, counted from the moment the new process is started."""

from __future__ import annotations

import signal
import socket

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e import harness

NAME = "restart.e2e.test"
RECOVERY = 10.0


class RestartTests(SynchronousTestCase):
    def start(self, relay_knows_endpoint: bool, keepalive: int = 25) -> None:
        self.funnel = harness.Funnel(self.addCleanup)
        port = harness.free_port(socket.SOCK_DGRAM)
        self.node = self.funnel.add_node(
            "home",
            [NAME],
            listen_port=port if relay_knows_endpoint else 0,
            endpoint_for_relay=f"127.0.0.1:{port}" if relay_knows_endpoint else None,
            keepalive=keepalive,
        )
        self.funnel.start()

    def stop(self, process: harness.Process) -> None:
        code = process.terminate(timeout=15)
        # Twisted re-raises the stopping signal once shut down.
        self.assertIn(code, (0, -signal.SIGTERM, 128 + signal.SIGTERM), process.log()[-3000:])
        log = process.log()
        self.assertIn("Server Shut Down", log)
        self.assertNotIn("Traceback", log)

    def test_relay_restart(self) -> None:
        """The relay has the node's endpoint in relay.ini, so the new relay process can start
        the handshake itself as soon as a public client needs the node."""
        self.start(relay_knows_endpoint=True)
        assert self.funnel.relay is not None
        self.stop(self.funnel.relay)
        self.funnel.start_relay()
        took = self.funnel.wait_fetch(self.node, NAME, timeout=RECOVERY)
        self.assertLess(took, RECOVERY)
        self.assertIn("handshake with home complete", self.funnel.relay.log())

    def test_relay_restart_without_node_endpoint(self) -> None:
        """The default set-up (and the only one for a node behind NAT): relay.ini has no
        endpoint for the node, which keeps its WireGuard session and sends keepalives (every
        2 s here) that the new relay process cannot decrypt and drops."""
        self.start(relay_knows_endpoint=False, keepalive=2)
        assert self.funnel.relay is not None and self.node.daemon is not None
        node_log = self.node.daemon.log_size()
        self.stop(self.funnel.relay)
        self.funnel.start_relay()
        try:
            self.funnel.wait_fetch(self.node, NAME, timeout=RECOVERY)
        except AssertionError:
            new = self.node.daemon.log()[node_log:]
            self.fail(
                f"not back within {RECOVERY}s; node re-handshakes: "
                f"{new.count('handshake with relay complete')}"
            )

    # WireGuard keepalives never start a new handshake, so without help a node whose relay
    # was restarted keeps sending on its dead session until it rekeys (120 s). The relay
    # therefore remembers learned endpoints (relay/endpoints.py) and greets them on start.

    def test_node_restart(self) -> None:
        """The relay has no endpoint for the node, and the node's new process listens on a
        new UDP port: the relay learns it from the new handshake (roaming)."""
        self.start(relay_knows_endpoint=False)
        assert self.node.daemon is not None and self.funnel.relay is not None
        old = self.node.daemon.log()
        old_port = old.rsplit("WireGuard listening on UDP port ", 1)[1].split(",")[0]
        self.stop(self.node.daemon)
        relay_offset = self.funnel.relay.log_size()
        self.funnel.start_node(self.node, wait=False)
        took = self.funnel.wait_fetch(self.node, NAME, timeout=RECOVERY)
        self.assertLess(took, RECOVERY)
        new = self.node.daemon.log()[len(old) :]
        new_port = new.split("WireGuard listening on UDP port ", 1)[1].split(",")[0]
        self.assertNotEqual(old_port, new_port)
        self.funnel.relay.wait_log(
            rf"handshake with home complete \(responder\), endpoint 127\.0\.0\.1:{new_port}",
            timeout=1,
            after=relay_offset,
        )

    def test_both_restart_twice(self) -> None:
        """Relay, then node, then both again: every cycle comes back within the bound."""
        self.start(relay_knows_endpoint=True)
        for _ in range(2):
            assert self.funnel.relay is not None and self.node.daemon is not None
            self.stop(self.funnel.relay)
            self.funnel.start_relay()
            self.assertLess(self.funnel.wait_fetch(self.node, NAME, timeout=RECOVERY), RECOVERY)
            self.stop(self.node.daemon)
            self.funnel.start_node(self.node, wait=False)
            self.assertLess(self.funnel.wait_fetch(self.node, NAME, timeout=RECOVERY), RECOVERY)
