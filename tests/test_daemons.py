"""The two twistd daemons as separate processes: start, handshake over loopback, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from funnel_tw import keys
from tests._support import free_port, wait_until_blocking

_TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class DaemonTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        node_key, relay_key = keys.generate_private_key(), keys.generate_private_key()
        for name, key in (("node.key", node_key), ("relay.key", relay_key)):
            path = self.dir / name
            path.write_text(keys.encode_key(key) + "\n")
            path.chmod(0o600)
        self.relay_port = free_port(socket.SOCK_DGRAM)
        (self.dir / "node.ini").write_text(
            f"""[node]
private-key-file = node.key
listen-port = 0
address = 100.64.0.2/32, fd7a:115c:a1e0::2/128
hostname = node.example.com

[peer relay]
public-key = {keys.encode_key(keys.public_key(relay_key))}
endpoint = 127.0.0.1:{self.relay_port}
allowed-ips = 100.64.0.1/32, fd7a:115c:a1e0::1/128
persistent-keepalive = 25
funnel-ingress = yes
"""
        )
        (self.dir / "relay.ini").write_text(
            f"""[relay]
private-key-file = relay.key
listen-port = {self.relay_port}
address = 100.64.0.1/32, fd7a:115c:a1e0::1/128

[node home]
public-key = {keys.encode_key(keys.public_key(node_key))}
allowed-ips = 100.64.0.2/32, fd7a:115c:a1e0::2/128
hostnames = node.example.com
peerapi = 100.64.0.2:41642
"""
        )

    def start(self, plugin: str, config: str) -> subprocess.Popen[str]:
        log = open(self.dir / f"{plugin}.log", "w")  # noqa: SIM115 - closed in cleanup
        self.addCleanup(log.close)
        process = subprocess.Popen(
            [*_TWISTD, "-n", "--pidfile=", plugin, "--config", config],
            cwd=self.dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
        )

        def kill() -> None:
            if process.poll() is None:
                process.kill()
                process.wait()

        self.addCleanup(kill)
        return process

    def wait_for(self, plugin: str, text: str, timeout: float = 20.0) -> str:
        path = self.dir / f"{plugin}.log"
        wait_until_blocking(
            lambda: text in path.read_text(),
            timeout,
            f"{text!r} in {plugin} log",
            interval=0.1,
            detail=path.read_text,
        )
        return path.read_text()

    def stop(self, process: subprocess.Popen[str], plugin: str) -> str:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        return self.wait_for(plugin, "Server Shut Down")

    def test_relay_and_node_handshake_and_stop_on_sigterm(self) -> None:
        relay = self.start("funnel-relay", "relay.ini")
        self.wait_for("funnel-relay", "WireGuard listening on UDP port")
        node = self.start("funnel", "node.ini")
        self.wait_for("funnel", "handshake with relay complete (initiator)")
        self.wait_for("funnel-relay", "handshake with home complete (responder)")
        for process, plugin in ((node, "funnel"), (relay, "funnel-relay")):
            log = self.stop(process, plugin)
            self.assertNotIn("Traceback", log)
            # Twisted re-raises the stopping signal once shut down: 128 + SIGTERM.
            self.assertIn(process.returncode, (0, -signal.SIGTERM, 128 + signal.SIGTERM))

    def test_bad_config_exits_nonzero_with_the_error_not_a_traceback(self) -> None:
        (self.dir / "bad.ini").write_text("[node]\naddress = 100.64.0.2/33\nbogus = 1\n")
        result = subprocess.run(
            [*_TWISTD, "-n", "--pidfile=", "funnel", "--config", "bad.ini"],
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
        )
        output = result.stdout + result.stderr
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("bad.ini:2: [node] address:", output)
        self.assertIn("bad.ini:3: [node] bogus: unknown key", output)
        self.assertNotIn("Traceback", output)

    def test_missing_config_option(self) -> None:
        result = subprocess.run(
            [*_TWISTD, "-n", "--pidfile=", "funnel-relay"],
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--config FILE is required", result.stdout + result.stderr)
