"""Running the daemons for real: metrics, access logs, sd_notify, signals and the log filter.

In process (a relay and a node on loopback, real reactor) and as small units; the twistd
processes, the NOTIFY_SOCKET test and a real Prometheus server are in tests/e2e/test_ops.py.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import shutil
import signal
import socket
import stat
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor, task, threads
from twisted.logger import LogLevel, PredicateResult
from twisted.trial.unittest import SynchronousTestCase, TestCase

from funnel_tw.daemon.accesslog import STDOUT, AccessLog, fields_line, http_combined_line
from funnel_tw.daemon.gctune import GC_THRESHOLD, CollectorService
from funnel_tw.daemon.logfilter import chatter_filter
from funnel_tw.daemon.sdnotify import Notifier, NotifyService, socket_address
from funnel_tw.daemon.signals import SignalService
from tests._support import free_port, run_process, wait_until
from tests.interop.netns import require_interop
from tests.relay.test_public import NAME, Funnel

HTTP_KEYS = [
    "time",
    "client",
    "host",
    "method",
    "uri",
    "status",
    "bytes_sent",
    "duration",
    "mount",
    "funnel",
    "user",
    "reason",
]
RELAY_KEYS = ["time", "client", "sni", "node", "outcome", "bytes_in", "bytes_out", "duration"]


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or None."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)", line)
        if m is None or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if found == labels:
            return float(m.group(4))
    return None


async def get(port: int, path: str) -> tuple[int, str]:
    response = await treq.get(f"http://127.0.0.1:{port}{path}", timeout=10, persistent=False)
    body = await response.text()
    return response.code, body


async def promtool_check(test: TestCase, text: str) -> None:
    """``promtool check metrics`` on ``text``: no error and no lint problem."""
    promtool = shutil.which("promtool")
    if promtool is None:
        require_interop(test, "promtool not installed (Debian package prometheus)")
        return
    code, out, err = await run_process(
        promtool, "check", "metrics", stdin=text.encode(), timeout=30
    )
    test.assertEqual((code, out.decode() + err.decode()), (0, ""))


class MetricsAndAccessLogTests(TestCase):
    """A relay and a node in this process, each with metrics-listen and an access log."""

    timeout = 60

    def setUp(self) -> None:
        self.relay_metrics = free_port()
        self.node_metrics = free_port()
        self.logs = Path(self.mktemp()).absolute()
        self.logs.mkdir()
        self.funnel = Funnel(
            self,
            relay_extra=f"metrics-listen = 127.0.0.1:{self.relay_metrics}\n"
            f"access-log = {self.logs / 'relay.log'}",
            node_extra=f"metrics-listen = 127.0.0.1:{self.node_metrics}\n"
            f"access-log = {self.logs / 'node.log'}",
        )

    async def test_scrape_both_after_one_request(self) -> None:
        await self.funnel.ready()
        answer = await threads.deferToThread(self.funnel.get)
        self.assertIn(b"hello from the backend", answer)
        await wait_until(
            lambda: (
                (self.logs / "relay.log").exists()
                and (self.logs / "relay.log").read_text().count("\n") >= 1
            ),
            5,
            "the relay's access log line",
        )

        code, node = await get(self.node_metrics, "/metrics")
        self.assertEqual(code, 200)
        self.assertEqual(
            sample(node, "funnel_node_http_requests_total", mount="/", code="200"), 1.0
        )
        self.assertEqual(
            sample(node, "funnel_node_ingress_connections_total", outcome="accepted"), 1.0
        )
        self.assertEqual(sample(node, "funnel_node_request_duration_seconds_count"), 1.0)
        self.assertEqual(sample(node, "funnel_node_active_connections"), 0.0)
        expiry = sample(node, "funnel_node_certificate_expiry_timestamp_seconds", hostname=NAME)
        assert expiry is not None
        self.assertGreater(expiry, reactor.seconds() + 86400)
        handshake = sample(node, "funnel_node_peer_last_handshake_timestamp_seconds", peer="relay")
        assert handshake is not None
        self.assertLess(abs(handshake - reactor.seconds()), 60)
        received = sample(node, "funnel_node_wireguard_received_bytes_total", peer="relay")
        self.assertGreater(received or 0, 0)
        self.assertIn("funnel_node_wireguard_drops_total", node)
        for kind in ("app", "stack"):
            self.assertEqual(sample(node, "funnel_node_overlay_errors_total", kind=kind), 0.0)
        # the userspace TCP stack: its event counters and levels
        self.assertIn("# TYPE funnel_node_tcp_events_total counter", node)
        for gauge in ("connections", "time_wait", "rcvbuf_granted", "paths_remembered"):
            self.assertIsNotNone(sample(node, f"funnel_node_tcp_{gauge}"), gauge)

        code, relay = await get(self.relay_metrics, "/metrics")
        self.assertEqual(code, 200)
        self.assertEqual(
            sample(relay, "funnel_relay_connections_total", node="n", outcome="spliced"), 1.0
        )
        self.assertEqual(sample(relay, "funnel_relay_active_connections"), 0.0)
        bytes_out = sample(relay, "funnel_relay_bytes_total", node="n", direction="out")
        self.assertGreater(bytes_out or 0, len(b"hello from the backend"))
        self.assertGreater(
            sample(relay, "funnel_relay_bytes_total", node="n", direction="in") or 0, 0
        )
        self.assertIsNotNone(
            sample(relay, "funnel_relay_node_last_handshake_timestamp_seconds", node="n")
        )
        self.assertIn("# TYPE funnel_relay_tcp_events_total counter", relay)
        self.assertIsNotNone(sample(relay, "funnel_relay_tcp_connections"))
        # labels stay low-cardinality: no client address or URL anywhere
        for text in (node, relay):
            self.assertNotIn("127.0.0.1", text)
            self.assertNotIn(NAME, text.replace(f'hostname="{NAME}"', ""))

        for port in (self.node_metrics, self.relay_metrics):
            self.assertEqual(await get(port, "/ready"), (200, "ok\n"))
            self.assertEqual(await get(port, "/healthz"), (200, "ok\n"))
            self.assertEqual((await get(port, "/nothing"))[0], 404)
        await promtool_check(self, node)
        await promtool_check(self, relay)

        # the access logs: one JSON line each, keys exactly as documented
        (relay_line,) = (self.logs / "relay.log").read_text().splitlines()
        record = json.loads(relay_line)
        self.assertEqual(list(record), RELAY_KEYS)
        self.assertEqual(record["sni"], NAME)
        self.assertEqual(record["node"], "n")
        self.assertEqual(record["outcome"], "spliced")
        self.assertEqual(record["bytes_out"], bytes_out)
        self.assertRegex(record["client"], r"^127\.0\.0\.1:\d+$")
        self.assertRegex(record["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        (node_line,) = (self.logs / "node.log").read_text().splitlines()
        record = json.loads(node_line)
        self.assertEqual(list(record), HTTP_KEYS)
        self.assertEqual(record["method"], "GET")
        self.assertEqual(record["uri"], "/")
        self.assertEqual(record["status"], 200)
        self.assertEqual(record["mount"], "/")
        self.assertIs(record["funnel"], True)
        self.assertEqual(record["host"], NAME)
        self.assertIsNone(record["reason"])
        self.assertEqual(record["bytes_sent"], len(b"hello from the backend"))
        # the client is the public client (Tailscale-Ingress-Src), not the relay
        self.assertEqual(record["client"], json.loads(relay_line)["client"])
        for name in ("relay.log", "node.log"):
            mode = stat.S_IMODE((self.logs / name).stat().st_mode)
            self.assertEqual(mode & 0o027, 0, oct(mode))

    async def test_refused_connection_counted_and_logged(self) -> None:
        """No SNI: refused by the relay, counted under node "-" and logged with its outcome."""
        await self.funnel.ready()

        def no_sni() -> None:
            with socket.create_connection(("127.0.0.1", self.funnel.public), timeout=5) as s:
                s.sendall(b"\x16\x03\x01\x00\x05hello")  # not a ClientHello
                with contextlib.suppress(ConnectionResetError):
                    s.recv(10)  # the relay aborts it

        await threads.deferToThread(no_sni)
        await wait_until(lambda: not self.funnel.relay.limits.open, 5, "the refusal")
        _, relay = await get(self.relay_metrics, "/metrics")
        self.assertEqual(
            sample(relay, "funnel_relay_connections_total", node="-", outcome="bad_client_hello"),
            1.0,
        )
        record = json.loads((self.logs / "relay.log").read_text())
        self.assertEqual(record["outcome"], "bad_client_hello")
        self.assertIsNone(record["node"])
        self.assertEqual(record["bytes_in"], 10)

    async def test_refused_path_has_its_reason(self) -> None:
        """A request the node refuses (an encoded slash) is logged with status and reason."""
        await self.funnel.ready()

        def bad_path() -> bytes:
            import ssl

            context = ssl.create_default_context(cafile=self.funnel.ca)
            with (
                socket.create_connection(("127.0.0.1", self.funnel.public), timeout=10) as raw,
                context.wrap_socket(raw, server_hostname=NAME) as tls,
            ):
                tls.sendall(f"GET /a%2Fb HTTP/1.0\r\nHost: {NAME}\r\n\r\n".encode())
                out = b""
                while chunk := tls.recv(65536):
                    out += chunk
                return out

        answer = await threads.deferToThread(bad_path)
        self.assertIn(b" 400 ", answer.split(b"\r\n", 1)[0])
        await wait_until(
            lambda: (self.logs / "node.log").exists() and (self.logs / "node.log").read_text(),
            5,
            "the node's access log line",
        )
        record = json.loads((self.logs / "node.log").read_text())
        self.assertEqual(record["status"], 400)
        self.assertIsNone(record["mount"])
        self.assertIn("/", record["reason"])
        _, node = await get(self.node_metrics, "/metrics")
        self.assertEqual(sample(node, "funnel_node_http_requests_total", mount="-", code="400"), 1)


class TcpMetricsTests(SynchronousTestCase):
    def test_counters_and_levels_of_the_userspace_stack(self) -> None:
        from funnel_tw.daemon.metrics import tcp_metrics

        stats = {
            "tcp_connections": 3,
            "tcp_time_wait": 1,
            "tcp_rcvbuf_granted": 4096,
            "tcp_paths_remembered": 2,
            "tcp_rto": 5,
            "tcp_resume_jumps": 7,
            "drop_filtered": 9,
        }
        families = {f.name: f for f in tcp_metrics("funnel_node", stats)}
        events = {s.labels["event"]: s.value for s in families["funnel_node_tcp_events"].samples}
        self.assertEqual(events, {"rto": 5, "resume_jumps": 7})  # no levels, no drops
        self.assertEqual(families["funnel_node_tcp_events"].type, "counter")
        for key in ("connections", "time_wait", "rcvbuf_granted", "paths_remembered"):
            family = families[f"funnel_node_tcp_{key}"]
            self.assertEqual((family.type, family.samples[0].value), ("gauge", stats[f"tcp_{key}"]))
        # network = tun: the kernel has the TCP, and there is nothing to show
        self.assertEqual(tcp_metrics("funnel_node", {"handshakes": 1}), [])


class ReadinessTests(TestCase):
    async def test_ready_is_503_without_a_session(self) -> None:
        """A node whose relay never answers: /ready says 503 (and why), /healthz 200."""
        from funnel_tw import keys
        from funnel_tw.config import load_node_config
        from funnel_tw.node.service import NodeService

        folder = Path(self.mktemp()).absolute()
        folder.mkdir()
        port = free_port()
        (folder / "node.ini").write_text(f"""[node]
private-key = {keys.encode_key(keys.generate_private_key())}
listen-port = 0
address = 100.64.0.2/32
hostname = lonely.example.test
metrics-listen = 127.0.0.1:{port}

[peer relay]
public-key = {keys.encode_key(keys.public_key(keys.generate_private_key()))}
allowed-ips = 100.64.0.1/32
funnel-ingress = yes
""")
        node = NodeService(load_node_config(folder / "node.ini"), reactor)
        node.startService()
        self.addCleanup(node.stopService)
        code, body = await get(port, "/ready")
        self.assertEqual(code, 503)
        self.assertIn("no WireGuard session", body)
        self.assertEqual(await get(port, "/healthz"), (200, "ok\n"))


class AccessLogTests(SynchronousTestCase):
    def test_reopen_after_rotation(self) -> None:
        folder = Path(self.mktemp())
        folder.mkdir()
        path = folder / "access.log"
        log = AccessLog(path, "json")
        log.open()
        self.addCleanup(log.close)
        log.write({"a": 1, "_time": 0.0}, fields_line)
        path.rename(folder / "access.log.1")
        log.write({"a": 2, "_time": 0.0}, fields_line)  # still the old file
        log.reopen()
        log.write({"a": 3, "_time": 0.0}, fields_line)
        self.assertEqual((folder / "access.log.1").read_text(), '{"a":1}\n{"a":2}\n')
        self.assertEqual(path.read_text(), '{"a":3}\n')
        self.assertEqual(stat.S_IMODE(path.stat().st_mode) & 0o037, 0)

    def test_combined_escapes_what_a_client_sends(self) -> None:
        line = http_combined_line(
            {
                "client": "198.51.100.7:5000",
                "user": None,
                "_time": 0.0,
                "method": "GET",
                "uri": '/x"\n\x1b[31m',
                "protocol": "HTTP/1.1",
                "status": 200,
                "bytes_sent": 5,
                "referer": None,
                "user_agent": "a b",
                "host": "h.example",
                "duration": 0.25,
                "mount": "/",
                "funnel": "yes",
                "reason": None,
            }
        )
        self.assertEqual(
            line,
            '198.51.100.7:5000 - - [01/Jan/1970:00:00:00 +0000] "GET /x\\"\\x0a\\x1b[31m '
            'HTTP/1.1" 200 5 "-" "a b" host=h.example duration=0.250 mount=/ funnel=yes '
            'reason="-"\n',
        )
        self.assertEqual(line.count("\n"), 1)

    def test_stdout_and_bad_format(self) -> None:
        self.assertRaises(ValueError, AccessLog, STDOUT, "xml")
        log = AccessLog(STDOUT, "json")
        log.open()
        self.assertEqual(log.fd, 1)
        log.close()  # never closes standard output
        os.fstat(1)

    def test_write_error_is_counted_not_raised(self) -> None:
        r, w = os.pipe()
        os.close(r)
        log = AccessLog(Path("pipe"), "json")
        log.fd = w
        old = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        try:
            log.write({"a": 1}, fields_line)
            log.write({"a": 2}, fields_line)
        finally:
            signal.signal(signal.SIGPIPE, old)
            os.close(w)
        self.assertEqual(log.errors, 2)


class NotifyTests(SynchronousTestCase):
    def receiver(self, abstract: bool) -> tuple[socket.socket, str]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        if abstract:
            name = f"@funnel-tw-test-{os.getpid()}-{id(sock)}"
            sock.bind(socket_address(name))
        else:
            folder = Path(self.mktemp())
            folder.mkdir()
            name = str(folder / "notify")
            sock.bind(name)
        sock.setblocking(False)
        return sock, name

    def messages(self, sock: socket.socket) -> list[str]:
        out = []
        while True:
            try:
                out.append(sock.recv(4096).decode())
            except BlockingIOError:
                return out

    def test_ready_status_watchdog_stopping(self) -> None:
        for abstract in (False, True):
            self.run_once(abstract)

    def run_once(self, abstract: bool) -> None:
        if True:
            sock, name = self.receiver(abstract)
            clock = task.Clock()
            waiting = ["listeners"]
            notifier = Notifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "2000000"})
            service = NotifyService(
                clock, lambda: waiting[0] if waiting else None, lambda: "all good", notifier
            )
            service.startService()
            self.assertEqual(
                self.messages(sock),
                ["STATUS=starting", "WATCHDOG=1", "STATUS=starting: waiting for listeners"],
            )
            waiting.clear()
            clock.advance(0.2)
            self.assertEqual(self.messages(sock), ["READY=1\nSTATUS=all good"])
            clock.advance(1.0)  # WATCHDOG_USEC / 2
            self.assertEqual(self.messages(sock), ["WATCHDOG=1"])
            service.stopService()
            self.assertEqual(self.messages(sock), ["STOPPING=1\nSTATUS=stopping"])
            self.assertEqual(clock.getDelayedCalls(), [])

    def test_without_notify_socket_nothing_happens(self) -> None:
        clock = task.Clock()
        service = NotifyService(clock, lambda: None, lambda: "x", Notifier({}))
        service.startService()
        service.stopService()
        self.assertEqual(service.notifier.sent, [])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_watchdog_for_another_pid_is_ignored(self) -> None:
        env = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}
        self.assertIsNone(Notifier(env).watchdog)
        self.assertEqual(Notifier({"WATCHDOG_USEC": "3000000"}).watchdog, 1.5)


class SignalTests(SynchronousTestCase):
    def test_hup_and_usr1_are_handled_and_restored(self) -> None:
        calls: list[str] = []

        class Reactor:
            def callFromThread(self, f: Any) -> None:
                f()

        hup_before = signal.getsignal(signal.SIGHUP)  # SIG_IGN under nohup, else SIG_DFL
        before = signal.getsignal(signal.SIGUSR1)
        chained: list[int] = []
        signal.signal(signal.SIGUSR1, lambda n, f: chained.append(n))
        self.addCleanup(signal.signal, signal.SIGUSR1, before)
        service = SignalService(
            Reactor(), lambda: calls.append("hup"), lambda: calls.append("usr1")
        )
        service.startService()
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            os.kill(os.getpid(), signal.SIGUSR1)
        finally:
            service.stopService()
        self.assertEqual(calls, ["hup", "usr1"])
        self.assertEqual(chained, [signal.SIGUSR1])  # twistd's own log rotation still runs
        self.assertEqual(signal.getsignal(signal.SIGHUP), hup_before)


class CollectorTests(SynchronousTestCase):
    def test_thresholds_while_running(self) -> None:
        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        self.assertNotEqual(before, GC_THRESHOLD)
        service = CollectorService()
        service.startService()
        self.assertEqual(gc.get_threshold(), GC_THRESHOLD)
        self.assertEqual(gc.get_freeze_count(), 0)  # nothing frozen: a reload frees the old
        service.stopService()
        self.assertEqual(gc.get_threshold(), before)


class LogFilterTests(SynchronousTestCase):
    def test_chatter_and_debug_are_dropped(self) -> None:
        keep = chatter_filter(debug=False)
        verbose = chatter_filter(debug=True)
        no, maybe = PredicateResult.no, PredicateResult.maybe
        for event in (
            {"log_format": "Starting factory {factory!r}", "log_level": LogLevel.info},
            {"message": ("Stopping factory <x>",), "log_level": LogLevel.info},
            {"message": ("PublicFactory starting on 443",), "log_level": LogLevel.info},
            {"message": ("(TCP Port 9464 Closed)",), "log_level": LogLevel.info},
            {"message": ("EnrollFactory (TLS) starting on 41643",), "log_level": LogLevel.info},
            {"message": ("(TLS Port 41643 Closed)",), "log_level": LogLevel.info},
        ):
            self.assertIs(keep(event), no, event)
            self.assertIs(verbose(event), no, event)
        debug = {"log_format": "handshake-initiated {peer}", "log_level": LogLevel.debug}
        self.assertIs(keep(debug), no)
        self.assertIs(verbose(debug), maybe)
        info = {"log_format": "relay listening on {address}", "log_level": LogLevel.info}
        self.assertIs(keep(info), maybe)


class DocumentedCommandsTests(SynchronousTestCase):
    def test_every_twistd_command_has_an_empty_pidfile(self) -> None:
        """Without ``--pidfile=`` twistd writes twistd.pid into its working directory, and a
        second daemon started there refuses to run: every documented command says it."""
        root = Path(__file__).resolve().parent.parent
        found = 0
        for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
            for number, line in enumerate(doc.read_text().splitlines(), 1):
                for command in re.findall(r"twistd -n[^`|]*", line):
                    found += 1
                    self.assertIn("--pidfile=", command, f"{doc.name}:{number}: {line}")
        self.assertGreater(found, 4)


class FlowAccountingTests(SynchronousTestCase):
    def test_non_http_flow_is_counted_and_logged_once_it_ends(self) -> None:
        from types import SimpleNamespace

        from twisted.internet.error import ConnectionLost
        from twisted.internet.interfaces import IHalfCloseableProtocol
        from twisted.internet.protocol import Protocol
        from twisted.python.failure import Failure
        from zope.interface import implementer

        from funnel_tw.config import OpsConfig
        from funnel_tw.flow import Flow
        from funnel_tw.node.observe import HalfCloseTrackedFlow, NodeObserver
        from funnel_tw.serve.model import TCPPortHandler

        clock = task.Clock()
        clock.advance(1_700_000_000)
        folder = Path(self.mktemp())
        folder.mkdir()
        node = SimpleNamespace(
            reactor=clock,
            config=SimpleNamespace(ops=OpsConfig(access_log=folder / "a.log"), path="n.ini"),
        )
        observer = NodeObserver(node)  # type: ignore[arg-type]
        assert observer.access_log is not None
        observer.access_log.open()
        self.addCleanup(observer.access_log.close)

        @implementer(IHalfCloseableProtocol)
        class Inner(Protocol):
            def __init__(self) -> None:
                self.got: list[Any] = []

            def dataReceived(self, data: bytes) -> None:
                self.got.append(data)

            def readConnectionLost(self) -> None:
                self.got.append("eof")

            def writeConnectionLost(self) -> None:
                pass

        inner = Inner()
        flow = Flow(("198.51.100.7", 4000), "db.example.test", 5432, True, "relay")
        tracked = observer.track(flow, inner, TCPPortHandler(tcp_forward="127.0.0.1:5432"))
        self.assertIsInstance(tracked, HalfCloseTrackedFlow)
        transport = SimpleNamespace(bytes_sent=0)
        tracked.makeConnection(transport)  # type: ignore[arg-type]
        self.assertEqual((observer.active, observer.flows), (1, {"tcp-forward": 1}))
        tracked.dataReceived(b"hello")
        IHalfCloseableProtocol(tracked).readConnectionLost()
        transport.bytes_sent = 42
        clock.advance(2.5)
        tracked.connectionLost(Failure(ConnectionLost("reset by peer")))
        self.assertEqual(inner.got, [b"hello", "eof"])
        self.assertEqual(observer.active, 0)
        record = json.loads((folder / "a.log").read_text())
        self.assertRegex(record.pop("flow"), r"\A[0-9a-f]{8}\Z")  # the flow id, for plugin logs
        self.assertEqual(
            record,
            {
                "time": "2023-11-14T22:13:22.500Z",
                "client": "198.51.100.7:4000",
                "host": "db.example.test",
                "port": 5432,
                "kind": "tcp-forward",
                "funnel": True,
                "bytes_received": 5,
                "bytes_sent": 42,
                "duration": 2.5,
                "reason": "Connection to the other side was lost in a non-clean fashion: "
                "reset by peer.",
            },
        )


class DebugOptionTests(SynchronousTestCase):
    def test_twistd_plugins_take_debug(self) -> None:
        from funnel_tw.relay.tap import Options

        folder = Path(self.mktemp())
        folder.mkdir()
        from tests.test_config import RELAY

        (folder / "relay.ini").write_text(RELAY)
        for argv, debug in (([], False), (["--debug"], True)):
            options = Options()
            options.parseOptions([*argv, "--config", str(folder / "relay.ini")])
            self.assertEqual(bool(options["debug"]), debug)
