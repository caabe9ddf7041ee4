"""Running the daemons for real, as twistd processes: signals, sd_notify, metrics scraped by a
real Prometheus server, access logs rotated with SIGUSR1, and ``funnel-tw status`` on a relay.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests._support import free_port, wait_until_blocking
from tests.e2e import harness
from tests.interop.netns import kill_group, require_interop
from tests.test_ops import RELAY_KEYS, sample

NAME = "ops.e2e.test"


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:  # not listening yet
        return 0, str(e)


class OpsTests(SynchronousTestCase):
    def start(self, notify: str | None = None) -> None:
        self.relay_metrics = free_port()
        self.node_metrics = free_port()
        self.funnel = harness.Funnel(
            self.addCleanup,
            relay_options={
                "metrics-listen": f"127.0.0.1:{self.relay_metrics}",
                "access-log": "access.log",
            },
        )
        self.node = self.funnel.add_node("home", [NAME])
        self.node.options.update(
            {"metrics-listen": f"127.0.0.1:{self.node_metrics}", "access-log": "access.log"}
        )
        self.funnel.start()
        assert self.funnel.relay is not None and self.node.daemon is not None
        self.relay = self.funnel.relay
        self.node_daemon = self.node.daemon

    def test_sighup_reloads_and_is_counted(self) -> None:
        """SIGHUP used to terminate the relay silently (the kernel's default action: twistd
        handles only SIGINT/SIGTERM, and SIGUSR1 when it logs to a file)."""
        self.start()
        daemons = [
            (self.relay, "funnel_relay", self.relay_metrics, self.funnel.relay_ini),
            (self.node_daemon, "funnel_node", self.node_metrics, self.node.ini),
        ]
        for process, prefix, port, ini in daemons:
            offset = process.log_size()
            os.kill(process.pid, signal.SIGHUP)
            process.wait_log(r"reload: no changes in ", after=offset)
            self.assertTrue(process.alive())
            _, text = http_get(port, "/metrics")
            self.assertEqual(sample(text, f"{prefix}_config_reloads_total", outcome="unchanged"), 1)
            self.assertEqual(sample(text, f"{prefix}_config_last_reload_successful"), 1)
            self.assertGreater(
                sample(text, f"{prefix}_config_last_reload_success_timestamp_seconds") or 0, 0
            )
            # a file with an error is refused whole: counted, and the gauge says so
            good = ini.read_text()
            ini.write_text(good + "\nnot a key line\n")
            offset = process.log_size()
            os.kill(process.pid, signal.SIGHUP)
            process.wait_log(r"reload refused, the running configuration stays", after=offset)
            _, text = http_get(port, "/metrics")
            self.assertEqual(sample(text, f"{prefix}_config_reloads_total", outcome="refused"), 1)
            self.assertEqual(sample(text, f"{prefix}_config_last_reload_successful"), 0)
            ini.write_text(good)
            self.assertTrue(process.alive())
        self.funnel.wait_fetch(self.node, NAME)

    def test_access_log_rotation_with_sigusr1(self) -> None:
        self.start()
        path = self.funnel.relay_dir / "access.log"
        wait_until_blocking(lambda: path.exists() and path.read_text(), 10, "a relay log line")
        path.rename(path.with_suffix(".log.1"))
        os.kill(self.relay.pid, signal.SIGUSR1)
        self.relay.wait_log(r"SIGUSR1: access log reopened")
        self.funnel.wait_fetch(self.node, NAME)
        wait_until_blocking(lambda: path.exists() and path.read_text(), 10, "the new file")
        for line in path.read_text().splitlines():
            self.assertEqual(list(json.loads(line)), RELAY_KEYS)
        node_log = self.node.dir / "access.log"
        lines = [json.loads(line) for line in node_log.read_text().splitlines()]
        self.assertTrue(lines)
        self.assertEqual({r["status"] for r in lines}, {200})
        self.assertTrue(self.relay.alive())

    def test_metrics_from_the_processes(self) -> None:
        self.start()
        scraped: list[str] = [""]

        def counted() -> bool:
            # a connection is counted when it ends: just after the client has its answer
            code, scraped[0] = http_get(self.relay_metrics, "/metrics")
            self.assertEqual(code, 200)
            labels = {"node": "home", "outcome": "spliced"}
            return (sample(scraped[0], "funnel_relay_connections_total", **labels) or 0) >= 1

        wait_until_blocking(counted, 10, "the relay to count the spliced connection")
        relay = scraped[0]
        code, node = http_get(self.node_metrics, "/metrics")
        self.assertEqual(code, 200)
        self.assertGreaterEqual(
            sample(node, "funnel_node_http_requests_total", mount="/", code="200") or 0, 1
        )
        for text in (relay, node):  # the collector's own counters (daemon/gctune.py)
            self.assertIsNotNone(sample(text, "python_gc_collections_total", generation="0"))
        self.assertEqual(http_get(self.relay_metrics, "/ready"), (200, "ok\n"))
        self.assertEqual(http_get(self.node_metrics, "/ready"), (200, "ok\n"))
        promtool = shutil.which("promtool")
        if promtool is None:
            require_interop(self, "promtool not installed (Debian package prometheus)")
        for text in (relay, node):
            checked = subprocess.run(
                [promtool, "check", "metrics"],
                input=text,
                capture_output=True,
                text=True,
                timeout=30,
            )
            self.assertEqual((checked.returncode, checked.stdout + checked.stderr), (0, ""))
        # no Twisted chatter and no debug lines in either daemon log
        for process in (self.relay, self.node_daemon):
            log = process.log()
            for chatter in ("Starting factory", "starting on", "#debug]"):
                self.assertNotIn(chatter, log)

    def test_relay_status_command(self) -> None:
        self.start()
        done = subprocess.run(
            [sys.executable, "-m", "funnel_tw", "status", "--config", str(self.funnel.relay_ini)],
            capture_output=True,
            text=True,
            timeout=30,
            env=harness.child_env(),
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("relay", done.stdout.splitlines()[0])
        self.assertRegex(done.stdout, r"home\s+127\.0\.0\.1:\d+\s+handshake \d+s ago\s+session up")
        self.assertIn(NAME, done.stdout)
        self.assertIn("spliced", done.stdout)

    def test_prometheus_scrapes_both(self) -> None:
        """A real Prometheus server (Debian's) scrapes the relay and the node on loopback."""
        prometheus = shutil.which("prometheus")
        if prometheus is None:
            require_interop(self, "prometheus not installed (Debian package prometheus)")
            return
        self.start()
        folder = Path(tempfile.mkdtemp(prefix="ftw-prom-"))
        self.addCleanup(shutil.rmtree, folder, True)
        (folder / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            f"  - job_name: relay\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{self.relay_metrics}']\n"
            f"  - job_name: node\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{self.node_metrics}']\n"
        )
        web = free_port()
        with open(folder / "prometheus.log", "wb") as out:
            proc = subprocess.Popen(
                [
                    prometheus,
                    f"--config.file={folder / 'prometheus.yml'}",
                    f"--storage.tsdb.path={folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{web}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.addCleanup(kill_group, proc, 5.0)

        def query(expr: str) -> list[dict[str, object]]:
            url = f"/api/v1/query?query={urllib.parse.quote(expr)}"
            code, body = http_get(web, url)
            if code != 200:
                return []
            answer = json.loads(body)
            return list(answer["data"]["result"]) if answer.get("status") == "success" else []

        def scraped() -> bool:
            if proc.poll() is not None:
                raise AssertionError((folder / "prometheus.log").read_text()[-3000:])
            up = {r["metric"]["job"]: r["value"][1] for r in query("up")}  # type: ignore[index]
            ours = query('funnel_relay_connections_total{outcome="spliced"}')
            node = query("funnel_node_http_requests_total")
            return up == {"relay": "1", "node": "1"} and bool(ours) and bool(node)

        started = time.monotonic()
        wait_until_blocking(
            scraped,
            60,
            "Prometheus to scrape both daemons",
            interval=0.5,
            detail=lambda: (folder / "prometheus.log").read_text()[-3000:],
        )
        self.assertLess(time.monotonic() - started, 60)


class NotifyProcessTests(SynchronousTestCase):
    def test_ready_and_stopping_reach_notify_socket(self) -> None:
        """twistd with NOTIFY_SOCKET (abstract, as systemd uses): READY=1 once the relay
        listens, STOPPING=1 on SIGTERM; the node likewise."""
        funnel = harness.Funnel(self.addCleanup)
        node = funnel.add_node("home", [NAME])
        node.backend, node.backend_port = harness.start_backend(
            "backend-home", node.text, node.dir, self.addCleanup
        )
        funnel.write_node_ini(node)
        funnel.write_relay_ini()
        for plugin, ini in (("funnel-relay", funnel.relay_ini), ("funnel", node.ini)):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.addCleanup(sock.close)
            name = f"@funnel-tw-e2e-{os.getpid()}-{plugin}"
            sock.bind(b"\0" + name[1:].encode())
            sock.settimeout(15)
            process = harness.start_daemon(
                plugin, ini, self.addCleanup, env={"NOTIFY_SOCKET": name}
            )
            got: list[str] = []
            while not any("READY=1" in m for m in got):
                got.append(sock.recv(4096).decode())
            self.assertEqual(got[0], "STATUS=starting")
            ready = next(m for m in got if "READY=1" in m)
            self.assertIn("STATUS=", ready)
            self.assertTrue(process.alive())
            process.proc.send_signal(signal.SIGTERM)
            while "STOPPING=1" not in got[-1]:
                got.append(sock.recv(4096).decode())
            code = process.terminate()
            self.assertIn(code, (0, -signal.SIGTERM, 128 + signal.SIGTERM), process.log()[-2000:])
