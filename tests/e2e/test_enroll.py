"""Enrollment by token with real processes: ``funnel-tw invite`` on the relay, ``funnel-tw join``
on the node, the node starts with a node.ini that has no address and no [peer], a client
reaches its backend through the relay; ``remove-node`` stops it, live. All on loopback.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests._support import free_port, wait_until_blocking
from tests.e2e import harness
from tests.e2e.test_reload import refused

APP = "app.enroll.e2e.test"
WILD = "*.apps.enroll.e2e.test"
OTHER = "other.enroll.e2e.test"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "funnel_tw", *args],
        cwd=cwd,
        env=harness.child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class EnrollTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.enroll_port = free_port()
        self.funnel = harness.Funnel(
            self.addCleanup,
            relay_options={
                "enroll-port": str(self.enroll_port),
                "node-addresses": "100.64.0.0/24",
            },
        )
        # public-endpoint: the WireGuard port nodes dial (set once the port is known)
        self.funnel.relay_options["public-endpoint"] = f"127.0.0.1:{self.funnel.relay_wg_port}"
        self.funnel.write_relay_ini()
        self.relay = self.funnel.start_relay()
        self.relay.wait_log(r"enroll listener on")

    def invite(self, *extra: str) -> str:
        result = cli("invite", "--config", str(self.funnel.relay_ini), *extra, cwd=self.funnel.dir)
        self.assertEqual(result.returncode, 0, result.stderr)
        token = result.stdout.strip().splitlines()[-1]
        self.assertTrue(token.startswith("ftw1."), result.stdout)
        return token

    def node_dir(self, name: str, backend_port: int) -> Path:
        folder = self.funnel.dir / f"node-{name}"
        folder.mkdir(mode=0o700)
        (folder / "node.ini").write_text(
            f"""[node]
private-key-file = node.key
listen-port = 0
peerapi-port = {harness.PEERAPI_PORT}
state-dir = state

[tls]
source = self-signed

[serve {self.funnel.public_port}]
funnel = yes
/ = http://127.0.0.1:{backend_port}
"""
        )
        return folder

    def test_invite_join_serve_remove(self) -> None:
        funnel = self.funnel
        backend, port = harness.start_backend(
            "backend", "hello enrolled", funnel.dir, self.addCleanup
        )
        folder = self.node_dir("home", port)
        ini = folder / "node.ini"

        token = self.invite("--hostnames", f"{APP},{WILD}", "--name", "home")
        joined = cli("join", "--config", str(ini), token, cwd=folder)
        self.assertEqual(joined.returncode, 0, joined.stderr)
        self.assertIn("joined relay", joined.stdout)
        key_mode = stat.S_IMODE((folder / "node.key").stat().st_mode)
        self.assertEqual(key_mode, 0o600)
        record = folder / "state" / "enrollment.json"
        self.assertEqual(stat.S_IMODE(record.stat().st_mode), 0o600)
        enrollment = json.loads(record.read_text())
        self.assertEqual(enrollment["addresses"], ["100.64.0.2/32"])  # .1 is the relay's
        self.assertEqual(enrollment["hostnames"], [APP, WILD])

        # the token was single-use: a second join is refused with one line, exit 1
        again = cli("join", "--config", str(ini), token, cwd=folder)
        self.assertEqual(again.returncode, 1)
        self.assertIn("already used", again.stderr)
        self.assertEqual(len(again.stderr.strip().splitlines()), 1, again.stderr)

        # check-config accounts for the enrollment; the relay's file is 0600
        checked = cli("check-config", str(ini), cwd=folder)
        self.assertEqual(checked.returncode, 0, checked.stderr)
        self.assertIn("joined by token", checked.stdout)
        relay_record = funnel.relay_dir / "state" / "enrolled-nodes.json"
        for name in ("enrolled-nodes.json", "enroll-tokens.json", "enroll.pem"):
            mode = (funnel.relay_dir / "state" / name).stat().st_mode
            self.assertEqual(stat.S_IMODE(mode), 0o600, name)

        node = harness.Node(
            name="home",
            index=0,
            hostnames=(APP,),
            relay_hostnames=(APP,),
            text="hello enrolled",
            dir=folder,
        )
        funnel.nodes.append(node)
        node.backend = backend
        node.daemon = harness.start_daemon("funnel", ini, self.addCleanup)
        node.daemon.wait_log(r"handshake with relay .* complete|handshake with .* complete")
        wait_until_blocking(node.ca.exists, 10, str(node.ca))
        funnel.wait_fetch(node, APP)
        funnel.wait_fetch(node, "x.apps.enroll.e2e.test")
        self.assertTrue(refused(funnel.public_port, OTHER, str(node.ca)))
        curl = funnel.curl(node, APP)
        self.assertEqual((curl.returncode, curl.status), (0, 200), curl.stderr)
        self.assertIn("hello enrolled", curl.body)

        # a reload reads the same enrolled node from state-dir: nothing changes
        offset = self.relay.log_size()
        os.kill(self.relay.pid, signal.SIGHUP)
        self.relay.wait_log(r"reload: no changes", after=offset)
        # a restarted relay still has the node (and greets it at its last endpoint)
        self.relay.terminate()
        self.relay = funnel.start_relay()
        funnel.wait_fetch(node, APP, timeout=30)

        status = cli("status", "--config", str(ini), cwd=folder)
        self.assertEqual(status.returncode, 0, status.stderr)
        self.assertIn("joined a relay by token", status.stdout)
        self.assertIn("100.64.0.2/32", status.stdout)

        listed = cli("nodes", "--config", str(funnel.relay_ini), cwd=funnel.dir)
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertIn("home", listed.stdout)
        self.assertIn("enrolled", listed.stdout)
        self.assertIn(APP, listed.stdout)
        relay_status = cli("status", "--config", str(funnel.relay_ini), cwd=funnel.dir)
        self.assertEqual(relay_status.returncode, 0, relay_status.stderr)
        self.assertIn("home (enrolled)", relay_status.stdout)

        removed = cli("remove-node", "--config", str(funnel.relay_ini), "home", cwd=funnel.dir)
        self.assertEqual(removed.returncode, 0, removed.stderr)
        wait_until_blocking(
            lambda: refused(funnel.public_port, APP, str(node.ca)), 10, "home refused"
        )
        self.assertEqual(json.loads(relay_record.read_text())["nodes"], [])
        self.assertTrue(self.relay.alive())

        # the token stays used across the restart; the pin stays valid (no TLS error)
        again = cli("join", "--config", str(ini), token, cwd=folder)
        self.assertEqual(again.returncode, 1)
        self.assertIn("already used", again.stderr)
        log = self.relay.log()
        self.assertIn("enroll refused from 127.0.0.1:", log)
        self.assertIn("used_token", log)

    def test_bad_tokens_and_pin(self) -> None:
        folder = self.node_dir("bad", 1)
        ini = folder / "node.ini"
        garbage = cli("join", "--config", str(ini), "ftw1.not-a-token", cwd=folder)
        self.assertEqual(garbage.returncode, 1)
        self.assertIn("not a funnel-tw token", garbage.stderr)

        token = self.invite("--hostnames", OTHER, "--expires", "1")
        time.sleep(1.2)  # the relay's clock decides expiry: nothing to wait on but time
        expired = cli("join", "--config", str(ini), token, cwd=folder)
        self.assertEqual(expired.returncode, 1)
        self.assertIn("expired", expired.stderr)

        # a token whose pin is not the relay's certificate: nothing is sent, exit 1
        from funnel_tw.daemon.enroll import parse_token

        real = parse_token(self.invite("--hostnames", OTHER))
        forged = type(real)(secret=real.secret, pin=os.urandom(32), host=real.host, port=real.port)
        mismatch = cli("join", "--config", str(ini), forged.text(), cwd=folder)
        self.assertEqual(mismatch.returncode, 1)
        self.assertIn("does not match the token's pin", mismatch.stderr)
        self.assertIn("nothing was sent", mismatch.stderr)

        # an unknown secret with the right pin
        unknown = type(real)(secret=os.urandom(32), pin=real.pin, host=real.host, port=real.port)
        bad = cli("join", "--config", str(ini), unknown.text(), cwd=folder)
        self.assertEqual(bad.returncode, 1)
        self.assertIn("not known to this relay", bad.stderr)

        # nothing listens: one line
        closed = type(real)(secret=real.secret, pin=real.pin, host="127.0.0.1", port=free_port())
        down = cli("join", "--config", str(ini), closed.text(), cwd=folder)
        self.assertEqual(down.returncode, 1)
        self.assertIn("connection refused", down.stderr)
        self.assertEqual(len(down.stderr.strip().splitlines()), 1)

        # the relay counted the refusals
        listed = cli("nodes", "--config", str(self.funnel.relay_ini), "--json", cwd=folder)
        counters = json.loads(listed.stdout)["enroll"]
        self.assertEqual(counters.get("expired_token"), 1)
        self.assertEqual(counters.get("bad_token"), 1)
        self.assertTrue(self.relay.alive())
        with socket.create_connection(("127.0.0.1", self.enroll_port), timeout=5):
            pass  # still listening

    def test_hostile_clients_on_the_enroll_port(self) -> None:
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        address = ("127.0.0.1", self.enroll_port)

        def tls_request(data: bytes) -> bytes:
            with (
                socket.create_connection(address, timeout=10) as raw,
                context.wrap_socket(raw) as tls,
            ):
                tls.sendall(data)
                answer = b""
                while chunk := tls.recv(65536):
                    answer += chunk
                return answer

        silent = socket.create_connection(address, timeout=5)
        self.addCleanup(silent.close)
        garbage = socket.create_connection(address, timeout=5)
        self.addCleanup(garbage.close)
        garbage.sendall(b"GET / HTTP/1.1\r\n\r\n" * 100)  # not TLS
        self.assertIsNotNone(harness.closed_within(garbage, 5))

        big = tls_request(b"POST /v0/enroll HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n")
        self.assertIn(b" 413 ", big.split(b"\r\n")[0])
        head = tls_request(b"POST /v0/enroll HTTP/1.1\r\n" + b"X: y\r\n" * 5000)
        self.assertIn(b" 431 ", head.split(b"\r\n")[0])
        junk = tls_request(b"POST /v0/enroll HTTP/1.1\r\nContent-Length: 5\r\n\r\n\xff\xfe{{{")
        self.assertIn(b" 400 ", junk.split(b"\r\n")[0])

        started = time.monotonic()
        self.assertIsNotNone(harness.closed_within(silent, 20))  # no TLS handshake at all
        self.assertGreater(time.monotonic() - started, 1.0)
        self.assertTrue(self.relay.alive())
        listed = cli("nodes", "--config", str(self.funnel.relay_ini), "--json", cwd=self.funnel.dir)
        counters = json.loads(listed.stdout)["enroll"]
        self.assertEqual(counters.get("too_large"), 2)
        self.assertEqual(counters.get("bad_request"), 1)
        self.assertGreaterEqual(counters.get("timeout", 0), 1)
        self.assertGreaterEqual(counters.get("closed_early", 0), 1)  # the non-TLS bytes
        self.assertIn("enroll refused from 127.0.0.1:", self.relay.log())
