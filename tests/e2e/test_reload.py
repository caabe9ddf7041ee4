"""Live reload with real processes: the relay and the node reread their ini files on SIGHUP.

Nothing is restarted: the tests rewrite relay.ini / node.ini, send SIGHUP, and check from the
outside (TLS clients through the relay) what changed, what did not, and that a download in
flight across the reload finishes byte-exact.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e import harness

HOME = "home.reload.e2e.test"
BIG = "big.reload.e2e.test"
OFFICE = "office.reload.e2e.test"
NEW = "new.reload.e2e.test"
SIZE = 8 << 20


class Download:
    """A GET of the big file, read in two halves so a reload can happen in between."""

    def __init__(self, port: int, ca: str) -> None:
        context = ssl.create_default_context(cafile=ca)
        raw = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.tls = context.wrap_socket(raw, server_hostname=BIG)
        self.tls.sendall(
            f"GET /big.bin HTTP/1.1\r\nHost: {BIG}\r\nConnection: close\r\n\r\n".encode()
        )
        self.data = b""

    def read(self, until: int | None = None) -> None:
        while until is None or len(self.data) < until:
            chunk = self.tls.recv(65536)
            if not chunk:
                break
            self.data += chunk

    def body(self) -> bytes:
        self.tls.close()
        head, _, body = self.data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        return body


def status_text(ini: Path) -> str:
    """``funnel-tw status --config INI``, or why it could not be had (for a failure's message)."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "funnel_tw", "status", "--config", str(ini)],
            capture_output=True, text=True, timeout=15, env=harness.child_env(),
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as e:
        return f"(no status: {e})"
    return done.stdout + done.stderr


def refused(port: int, name: str, ca: str) -> bool:
    try:
        status, _ = harness.fetch(port, name, harness.Path(ca), timeout=3.0)
    except (OSError, ssl.SSLError):
        return True
    return status != 200


class RelayReloadTests(SynchronousTestCase):
    def hup(self, pattern: str) -> None:
        relay = self.funnel.relay
        assert relay is not None
        offset = relay.log_size()
        os.kill(relay.pid, signal.SIGHUP)
        relay.wait_log(pattern, after=offset)
        self.assertTrue(relay.alive())

    def test_nodes_added_and_removed_live(self) -> None:
        self.funnel = funnel = harness.Funnel(self.addCleanup)
        serve_big, blob = funnel.big_file(BIG, SIZE)
        home = funnel.add_node("home", [HOME, BIG], extra_serve=serve_big)
        office = funnel.add_node("office", [OFFICE])
        for node in funnel.nodes:
            node.backend, node.backend_port = harness.start_backend(
                f"backend-{node.name}", node.text, node.dir, self.addCleanup
            )
            funnel.write_node_ini(node)
        funnel.nodes = [home]  # relay.ini knows home only
        funnel.write_relay_ini()
        funnel.nodes = [home, office]
        funnel.start_relay()
        funnel.start_node(home)
        funnel.start_node(office, wait=False)
        funnel.wait_fetch(home, HOME)
        harness.wait_until_blocking(office.ca.exists, 15, "office's certificate")
        self.assertTrue(refused(funnel.public_port, OFFICE, str(office.ca)))

        # a node added to relay.ini becomes reachable (its handshake retries get answered)
        funnel.write_relay_ini()
        self.hup(r"reload: \[node office\] added")
        funnel.wait_fetch(office, OFFICE, timeout=15)

        # a download in flight across a reload that removes another node
        download = Download(funnel.public_port, str(home.ca))
        download.read(until=1 << 20)
        funnel.nodes = [home]
        funnel.write_relay_ini()
        self.hup(r"reload: \[node office\] removed")
        try:
            download.read()
        except TimeoutError:
            # seen three times in CI runs (2026-12-07), never when run alone; very likely the
            # producer that was never woken (fixed: test_paused_reader.py). If it comes back:
            # where it stood, with both daemons' status (their TCP counters, probes...)
            logs = [(p.name, p.log()[-6000:]) for p in (funnel.relay, home.daemon) if p]
            logs += [
                (f"status {ini.name}", status_text(ini)) for ini in (funnel.relay_ini, home.ini)
            ]
            self.fail(
                f"download stalled 20 s after {len(download.data)} of ~{SIZE} bytes\n"
                + "\n".join(f"--- {name}:\n{text}" for name, text in logs)
            )
        body = download.body()
        self.assertEqual(len(body), SIZE)
        self.assertEqual(hashlib.sha256(body).digest(), hashlib.sha256(blob).digest())
        self.assertTrue(refused(funnel.public_port, OFFICE, str(office.ca)))
        funnel.wait_fetch(home, HOME)

        # a broken file is refused whole, with FILE:LINE; the old configuration keeps serving
        good = funnel.relay_ini.read_text()
        funnel.relay_ini.write_text(good.replace("[relay]", "[relay]\nmax-connections = lots"))
        self.hup(rf"reload refused, the running configuration stays: {funnel.relay_ini}:2: ")
        funnel.wait_fetch(home, HOME)

        # a changed listen-port is refused with its reason, nothing else applied either
        funnel.relay_wg_port += 1
        funnel.nodes = [home, office]
        funnel.write_relay_ini()
        self.hup(r"reload refused, nothing changed: listen-port changed: restart to apply")
        self.assertTrue(refused(funnel.public_port, OFFICE, str(office.ca)))
        funnel.wait_fetch(home, HOME)
        self.assertNotIn("Traceback", funnel.relay.log() if funnel.relay else "")


class NodeReloadTests(SynchronousTestCase):
    def test_hostnames_added_and_removed_live(self) -> None:
        funnel = harness.Funnel(self.addCleanup)
        node = funnel.add_node("home", [HOME], relay_hostnames=[HOME, NEW])
        funnel.start()
        assert node.daemon is not None
        self.assertTrue(refused(funnel.public_port, NEW, str(node.ca)))

        def hup(pattern: str) -> None:
            assert node.daemon is not None
            offset = node.daemon.log_size()
            os.kill(node.daemon.pid, signal.SIGHUP)
            node.daemon.wait_log(pattern, after=offset)

        node.hostnames = (HOME, NEW)
        funnel.write_node_ini(node)
        hup(r"reload: \[hostname new\.reload\.e2e\.test\] added")
        funnel.wait_fetch(node, NEW, timeout=10)
        funnel.wait_fetch(node, HOME)

        node.hostnames = (HOME,)
        funnel.write_node_ini(node)
        hup(r"reload: \[hostname new\.reload\.e2e\.test\] removed")
        self.assertTrue(refused(funnel.public_port, NEW, str(node.ca)))
        funnel.wait_fetch(node, HOME)

        node.listen_port = harness.free_port(socket.SOCK_DGRAM)
        funnel.write_node_ini(node)
        hup(r"reload refused, nothing changed: listen-port changed: restart to apply")
        funnel.wait_fetch(node, HOME)
        self.assertNotIn("Traceback", node.daemon.log())
