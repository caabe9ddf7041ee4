"""``funnel-tw join`` and the relay commands without a relay to talk to: what a node.ini needs
before a join, the key join makes, and one clear line (exit 1) for every failure."""

from __future__ import annotations

import socket
import stat
import threading
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.config import ConfigError
from funnel_tw.daemon.enroll import Token
from funnel_tw.keys import encode_key, generate_private_key
from funnel_tw.node.join import JoinError, join, join_settings, node_key
from tests.test_cli import run


class JoinSettingsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()

    def ini(self, text: str) -> Path:
        path = self.dir / "node.ini"
        path.write_text(text)
        return path

    def test_a_key_file_is_made_0600_once(self) -> None:
        settings = join_settings(self.ini("[node]\nprivate-key-file = node.key\n"))
        self.assertEqual(settings.state_dir, self.dir.absolute() / "state")
        self.assertEqual(settings.peerapi_port, 41642)
        key, made = node_key(settings)
        self.assertEqual(made, self.dir.absolute() / "node.key")
        self.assertEqual(stat.S_IMODE((self.dir / "node.key").stat().st_mode), 0o600)
        again, made_again = node_key(settings)
        self.assertEqual((again, made_again), (key, None))
        (self.dir / "node.key").chmod(0o644)
        error = self.assertRaises(JoinError, node_key, settings)
        self.assertIn("node.key", str(error))

    def test_an_inline_key_is_used(self) -> None:
        key = generate_private_key()
        settings = join_settings(self.ini(f"[node]\nprivate-key = {encode_key(key)}\n"))
        self.assertEqual(node_key(settings), (key, None))

    def test_what_node_ini_needs_before_a_join(self) -> None:
        path = self.ini("[node]\npeerapi-port = 99999\n")
        error = self.assertRaises(ConfigError, join_settings, path)
        self.assertEqual(
            error.errors,
            [
                f"{path}:1: [node] private-key-file: required: the file join creates "
                "(private-key-file = node.key)",
                f"{path}:2: [node] peerapi-port: 99999 is out of range (1..65535)",
            ],
        )
        path = self.ini("[peer x]\n")
        self.assertIn(
            "[node]: missing section", str(self.assertRaises(ConfigError, join_settings, path))
        )

    def test_not_a_token_writes_nothing(self) -> None:
        path = self.ini("[node]\nprivate-key-file = node.key\n")
        error = self.assertRaises(JoinError, join, path, "hello")
        self.assertIn("not a funnel-tw token", str(error))
        self.assertFalse((self.dir / "node.key").exists())

    def test_a_server_that_is_not_tls(self) -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        self.addCleanup(listener.close)

        def answer() -> None:
            conn, _ = listener.accept()
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            conn.close()

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        token = Token(bytes(32), bytes(32), "127.0.0.1", listener.getsockname()[1])
        path = self.ini("[node]\nprivate-key-file = node.key\n")
        error = self.assertRaises(JoinError, join, path, token.text(), 5.0)
        self.assertIn("TLS with 127.0.0.1:", str(error))
        thread.join(5)
        self.assertFalse((self.dir / "state" / "enrollment.json").exists())


class CommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        (self.dir / "relay.ini").write_text(
            f"[relay]\nprivate-key = {encode_key(generate_private_key())}\n"
            "address = 100.64.0.1/32\nstate-dir = state\n"
        )

    def test_relay_commands_without_a_relay(self) -> None:
        relay = str(self.dir / "relay.ini")
        for argv in (
            ["invite", "--config", relay, "--hostnames", "a.example.com"],
            ["nodes", "--config", relay],
            ["remove-node", "--config", relay, "x"],
        ):
            with self.subTest(argv=argv[0]):
                result = run(argv)
                self.assertEqual(result.code, 1)
                self.assertEqual(
                    result.stderr,
                    f"funnel-tw {argv[0]}: the relay is not running (no local API socket at "
                    f"{self.dir.absolute() / 'state' / 'funnel-tw-relay.sock'})\n",
                )

    def test_join_failures_are_one_line(self) -> None:
        node = self.dir / "node.ini"
        node.write_text("[node]\nprivate-key-file = node.key\n")
        result = run(["join", "--config", str(node), "ftw1.AAAA"])
        self.assertEqual(result.code, 1)
        self.assertEqual(
            result.stderr, "funnel-tw join: not a funnel-tw token: too short (copied whole?)\n"
        )
        token = Token(bytes(32), bytes(32), "127.0.0.1", 9).text()
        result = run(["join", "--config", str(self.dir / "missing.ini"), token])
        self.assertEqual(result.code, 1)
        self.assertIn("missing.ini:0: cannot read", result.stderr)
        self.assertEqual(run(["join"]).code, 2)
        self.assertEqual(run(["invite", "--config", "relay.ini"]).code, 2)  # --hostnames

    def test_check_config_counts_enrolled_nodes(self) -> None:
        import json
        from ipaddress import ip_interface

        from funnel_tw.config.enrolled import enrolled_node_record
        from funnel_tw.keys import public_key

        (self.dir / "state").mkdir()
        record = enrolled_node_record(
            "laptop",
            public_key(generate_private_key()),
            (ip_interface("100.64.0.9/32"),),
            ("a.example.com",),
            41642,
            0.0,
        )
        (self.dir / "state" / "enrolled-nodes.json").write_text(json.dumps({"nodes": [record]}))
        result = run(["check-config", str(self.dir / "relay.ini")])
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn(
            "relay, 1 node, 1 public port, 1 of the nodes enrolled by token", result.stdout
        )
