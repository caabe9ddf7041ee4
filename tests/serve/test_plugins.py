"""Handler plugins: the shipped example (examples/echo-handler) found by twisted.plugin,
configured from node.ini, and reached through the ingress path with and without TLS."""

from __future__ import annotations

import contextlib
import io
import select
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

from twisted.internet import threads
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from funnel_tw import cli, keys, testing
from funnel_tw.config import ConfigError, load_node_config
from funnel_tw.plugin import IHandlerPlugin
from funnel_tw.serve.interfaces import IIngressHandler
from funnel_tw.serve.plugins import build_handlers, handler_factories

from .harness import HOSTNAME, Front, ServeHarness

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "echo-handler"
TIMEOUT = 10.0
BULK_LINE = b"x" * 1023 + b"\n"
BULK_CHUNK = BULK_LINE * 64


def install_example(test: TestCase) -> None:
    """Make the example importable and visible to twisted.plugin, as ``pip install`` would:
    its package on sys.path, its ``twisted/plugins`` directory on ``twisted.plugins.__path__``.
    Everything is put back by the test's cleanup."""
    import twisted.plugins

    plugins_dir = EXAMPLE / "twisted" / "plugins"
    cache = plugins_dir / "dropin.cache"
    had_cache = cache.exists()
    saved_sys_path = list(sys.path)
    saved_plugin_path = list(twisted.plugins.__path__)
    sys.path.append(str(EXAMPLE))
    twisted.plugins.__path__.append(str(plugins_dir))

    def restore() -> None:
        sys.path[:] = saved_sys_path
        twisted.plugins.__path__[:] = saved_plugin_path
        for name in list(sys.modules):
            if name.split(".")[0] == "funnel_tw_echo" or name == "twisted.plugins.funnel_tw_echo":
                del sys.modules[name]
        if not had_cache:
            cache.unlink(missing_ok=True)

    test.addCleanup(restore)


def echo_section(port: int = 10000, **options: str) -> str:
    lines = [f"[serve {port}]", "funnel = yes", "handler = echo"]
    lines += [f"{key.replace('_', '-')} = {value}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


def _read_line(sock: Any, buffer: bytearray) -> bytes:
    while b"\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full line; have {bytes(buffer)!r}")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line + b"\n"


def talk(port: int, lines: list[bytes], ca_file: str | None) -> tuple[bytes, list[bytes], int]:
    """(greeting, echoed lines, our source port): a blocking client, run in a thread."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    source_port = raw.getsockname()[1]
    sock: Any = raw
    try:
        if ca_file is not None:
            context = ssl.create_default_context(cafile=ca_file)
            sock = context.wrap_socket(raw, server_hostname=HOSTNAME)
        buffer = bytearray()
        greeting = _read_line(sock, buffer)
        echoed = []
        for line in lines:
            sock.sendall(line)
            echoed.append(_read_line(sock, buffer))
        return greeting, echoed, source_port
    finally:
        sock.close()


class Pump:
    """A TLS client that sends ``BULK_LINE``s and checks their echo, in one thread, on a
    non-blocking socket with select() (an SSL object must not be shared between threads)."""

    def __init__(self, port: int, ca_file: str) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        context = ssl.create_default_context(cafile=ca_file)
        self.sock = context.wrap_socket(raw, server_hostname=HOSTNAME)
        buffer = bytearray()
        self.greeting = _read_line(self.sock, buffer)
        self.sock.setblocking(False)
        self.sent = 0
        self.received = len(buffer)
        self.pending = False  # a send is half done: it must be retried with the same bytes
        self._check(bytes(buffer), 0)

    def _check(self, data: bytes, offset: int) -> None:
        start = offset % len(BULK_LINE)
        expected = (BULK_LINE * (len(data) // len(BULK_LINE) + 2))[start : start + len(data)]
        if data != expected:
            raise AssertionError(f"echo differs from what was sent, at byte {offset}")

    def send(self) -> None:
        try:
            self.sent += self.sock.send(BULK_CHUNK)
            self.pending = False
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            self.pending = True

    def receive(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            if not data:
                raise ConnectionError(f"closed after {self.received} bytes")
            self._check(data, self.received)
            self.received += len(data)

    def run(self, total: int, *, read: bool = True, quiet: float = TIMEOUT) -> bool:
        """Send until ``total`` (and, if ``read``, receive it all). False: no progress for
        ``quiet`` seconds."""
        while self.sent < total or self.pending or (read and self.received < self.sent):
            writing = [self.sock] if self.sent < total or self.pending else []
            readable, writable, _ = select.select([self.sock] if read else [], writing, [], quiet)
            if not readable and not writable:
                return False
            if writable:
                self.send()
            if readable:
                self.receive()
        return True

    def close(self) -> None:
        self.sock.close()


def bulk(port: int, ca_file: str, total: int) -> int:
    """Echo ``total`` bytes, reading while sending; the bytes received."""
    pump = Pump(port, ca_file)
    try:
        if not pump.run(total):
            raise TimeoutError(f"stalled: sent {pump.sent}, received {pump.received}")
        return pump.received
    finally:
        pump.close()


def stall_then_drain(port: int, ca_file: str, limit: int) -> tuple[int, int]:
    """Send without reading until the path stops taking bytes (or ``limit``), then read the
    echo of everything sent: (bytes sent before the stall, bytes echoed)."""
    pump = Pump(port, ca_file)
    try:
        pump.run(limit, read=False, quiet=1.0)
        stalled_at = pump.sent
        if not pump.run(pump.sent + (len(BULK_CHUNK) if pump.pending else 0)):
            raise TimeoutError(f"drain stalled: sent {pump.sent}, received {pump.received}")
        return stalled_at, pump.received
    finally:
        pump.close()


TCP_PROXY = EXAMPLE.parent / "tcp-proxy-handler"


class DiscoveryTests(TestCase):
    def setUp(self) -> None:
        install_example(self)

    def test_found_by_twisted_plugin(self) -> None:
        factories = handler_factories()
        self.assertIn("echo", factories)
        plugin = factories["echo"]
        self.assertTrue(verifyObject(IHandlerPlugin, plugin))
        self.assertEqual(plugin.name, "echo")

    def test_defaults(self) -> None:
        plugin = handler_factories()["echo"]
        handler = plugin.build(testing.parse_options(plugin, {}), testing.make_context("echo"))
        self.assertTrue(verifyObject(IIngressHandler, handler))
        self.assertIs(handler.terminate_tls, True)


class ConfigTests(TestCase):
    def setUp(self) -> None:
        install_example(self)
        testing.plugin_path(self, TCP_PROXY)

    def test_loads_and_builds(self) -> None:
        h = ServeHarness(self, echo_section(greeting="hi", terminate_tls="no"))
        handler = h.node.dispatcher.handlers[10000]
        self.assertEqual((handler.greeting, handler.terminate_tls), ("hi", False))
        self.assertEqual(h.node.serve.to_json()["TCP"]["10000"], {"Handler": "echo"})
        self.assertTrue(h.node.admits_funnel(HOSTNAME, 10000))
        context = h.node.plugins[10000].context
        self.assertEqual(
            (context.section, context.port, context.plugin), ("serve 10000", 10000, "echo")
        )
        self.assertIs(context.reactor, h.node.reactor)
        state = context.state_dir()
        self.assertEqual(state, h.node.config.state_dir / "plugins" / "echo-10000")
        self.assertEqual(state.stat().st_mode & 0o777, 0o700)

    def _write(self, sections: str) -> Path:
        path = Path(self.mktemp())
        path.write_text(
            f"[node]\nprivate-key = {keys.encode_key(keys.generate_private_key())}\n"
            "address = 100.64.0.2/32\nhostname = node.example.com\n\n" + sections
        )
        return path

    def test_every_option_error_at_its_line_with_core_errors(self) -> None:
        """check-config: both plugins' option errors, each at its own line, a cross-check at
        its section's line, and the core errors, all in one run (file order)."""
        path = self._write(
            "mtu = 1\n"  # line 6: a core error
            + echo_section(10000, colour="red", terminate_tls="sometimes")  # 7..11
            + "[serve 10001]\nhandler = tcp-proxy\nmax-clients = 0\n"  # 12..14
            + "[serve 10002]\nhandler = tcp-proxy\nbackend = 80\n"  # 15..19
            + "connect-timeout = 9\nidle-timeout = 3\n"
            + "[serve 10003]\nhandler = nope\n"  # 20..21
        )
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["check-config", str(path)])
        self.assertEqual(code, 1)
        lines = [line.removeprefix(f"{path}:") for line in err.getvalue().splitlines()]
        self.assertEqual(len(lines), 7, lines)
        self.assertTrue(lines[0].startswith("6: [node] mtu:"), lines[0])
        self.assertTrue(
            lines[1].startswith("10: [serve 10000] colour: unknown option for handler echo")
        )
        self.assertTrue(lines[2].startswith("11: [serve 10000] terminate-tls: 'sometimes' is not"))
        self.assertEqual(
            lines[3], "12: [serve 10001] backend: required by handler tcp-proxy (HOST:PORT)"
        )
        self.assertEqual(lines[4], "14: [serve 10001] max-clients: 0 is out of range (1..100000)")
        self.assertEqual(
            lines[5],
            "15: [serve 10002]: handler tcp-proxy: connect-timeout is longer than idle-timeout",
        )
        self.assertTrue(
            lines[6].startswith("21: [serve 10003] handler: no handler plugin named 'nope'")
        )

    def test_node_refuses_to_start(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            ServeHarness(self, echo_section(terminate_tls="sometimes"))
        self.assertIn("terminate-tls: 'sometimes' is not a boolean", str(caught.exception))

    def test_unknown_handler_is_config_error(self) -> None:
        config = load_node_config(self._write("[serve 10000]\nhandler = nope\n"))
        with self.assertRaises(ConfigError) as caught:
            build_handlers(config)
        message = str(caught.exception)
        self.assertIn("[serve 10000] handler", message)
        self.assertIn("no handler plugin named 'nope'", message)
        self.assertIn("echo", message)


class LegacyTests(TestCase):
    """The older interface (IIngressHandlerFactory.create on raw strings) is still accepted."""

    def setUp(self) -> None:
        root = Path(self.mktemp())
        (root / "twisted" / "plugins").mkdir(parents=True)
        (root / "twisted" / "plugins" / "funnel_tw_legacy_test.py").write_text(LEGACY)
        testing.plugin_path(self, root)
        self.addCleanup(sys.modules.pop, "twisted.plugins.funnel_tw_legacy_test", None)

    def test_legacy_plugin_builds_and_its_error_is_reported(self) -> None:
        from twisted.logger import formatEvent, globalLogPublisher

        from funnel_tw.serve import plugins

        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        self.patch(plugins, "_warned", set())
        h = ServeHarness(self, "[serve 10000]\nhandler = legacy-test\nword = hi\n")
        warnings = [formatEvent(e) for e in logged if "deprecated" in formatEvent(e)]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("handler plugin 'legacy-test' uses the deprecated", warnings[0])
        self.assertEqual(h.node.dispatcher.handlers[10000].word, "hi")
        self.assertIsNone(h.node.plugins[10000].context)
        with self.assertRaises(ConfigError) as caught:
            ServeHarness(self, "[serve 10000]\nhandler = legacy-test\ncolour = red\n")
        self.assertIn("[serve 10000] handler: unknown option 'colour'", str(caught.exception))


LEGACY = """
from twisted.internet.protocol import Protocol
from zope.interface import implementer
from twisted.plugin import IPlugin
from funnel_tw.serve.interfaces import IIngressHandler, IIngressHandlerFactory

@implementer(IIngressHandler)
class Handler:
    terminate_tls = True
    def __init__(self, word):
        self.word = word
    def build_protocol(self, flow):
        return Protocol()

@implementer(IPlugin, IIngressHandlerFactory)
class Factory:
    name = "legacy-test"
    def create(self, options):
        unknown = sorted(set(options) - {"word"})
        if unknown:
            raise ValueError(f"unknown option {unknown[0]!r}")
        return Handler(options.get("word", ""))

legacy = Factory()
"""


class FlowTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        install_example(self)
        self.h = ServeHarness(
            self,
            echo_section(10000, greeting="hi")
            + "\n"
            + echo_section(10001, greeting="plain hi", terminate_tls="no"),
        )

    def front(self, port: int) -> tuple[Front, int]:
        return self.h.front(port, settle=True)

    async def test_tls_greeting_and_echo(self) -> None:
        front, port = self.front(10000)
        greeting, echoed, source_port = await threads.deferToThread(
            talk, port, [b"ping\n", b"two words\r\n"], self.h.ca_file
        )
        # the flow info is the public client (Ingress-Src): our own socket's port
        self.assertEqual(
            greeting,
            f"hi 127.0.0.1:{source_port} -> {HOSTNAME}:10000 (funnel via relay)\n".encode(),
        )
        self.assertEqual(echoed, [b"ping\n", b"two words\r\n"])
        self.assertEqual(front.accepted, 1)

    async def test_plain_tcp_when_not_terminating_tls(self) -> None:
        _, port = self.front(10001)
        greeting, echoed, source_port = await threads.deferToThread(talk, port, [b"hello\n"], None)
        self.assertEqual(
            greeting,
            f"plain hi 127.0.0.1:{source_port} -> {HOSTNAME}:10001 (funnel via relay)\n".encode(),
        )
        self.assertEqual(echoed, [b"hello\n"])

    async def test_tls_port_never_speaks_plaintext(self) -> None:
        _, port = self.front(10000)

        def plain() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
                sock.sendall(b"ping\n")
                received = b""
                while chunk := sock.recv(4096):
                    received += chunk
                return received

        received = await threads.deferToThread(plain)
        self.assertNotIn(b"hi", received)
        self.assertNotIn(b"ping", received)

    async def test_overlong_line_closes_cleanly(self) -> None:
        """A line over the limit ends the connection, with TLS's close_notify (the echo
        unregisters its producer first, or the TLS layer would wait for it forever)."""
        _, port = self.front(10000)

        def overlong() -> tuple[bytes, bytes]:
            raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            context = ssl.create_default_context(cafile=self.h.ca_file)
            with context.wrap_socket(
                raw, server_hostname=HOSTNAME, suppress_ragged_eofs=False
            ) as sock:
                buffer = bytearray()
                _read_line(sock, buffer)
                sock.sendall(b"short\n")
                echoed = _read_line(sock, buffer)
                sock.sendall(b"x" * (65 * 1024))
                rest = bytes(buffer)
                while chunk := sock.recv(65536):  # SSLEOFError if closed without close_notify
                    rest += chunk
                return echoed, rest

        echoed, rest = await threads.deferToThread(overlong)
        self.assertEqual((echoed, rest), (b"short\n", b""))

    async def test_bulk_echo_through_tls(self) -> None:
        _, port = self.front(10000)
        total = 8 * 1024 * 1024
        received = await threads.deferToThread(bulk, port, self.h.ca_file, total)
        self.assertEqual(received, total)

    async def test_backpressure(self) -> None:
        """A client that sends but never reads is stopped by full buffers, not given memory:
        the echo pauses reading while its writes wait (without that, the node would take all
        ``limit`` bytes), and every byte sent comes back once the client reads."""
        _, port = self.front(10000)
        limit = 128 * 1024 * 1024
        stalled_at, echoed = await threads.deferToThread(
            stall_then_drain, port, self.h.ca_file, limit
        )
        self.assertLess(stalled_at, limit)
        self.assertGreaterEqual(echoed, stalled_at)
