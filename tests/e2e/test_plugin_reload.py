"""A handler plugin across a live reload, with real twistd processes: the echo example's
section is changed in node.ini and the node gets SIGHUP. New flows get the new instance (its
new greeting) while a flow in progress stays with the old one and keeps echoing; a bad option
refuses the reload with its FILE:LINE and the plugin keeps serving as it was."""

from __future__ import annotations

import os
import signal
import socket
import ssl

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e import harness

NAME = "plugin.reload.e2e.test"
ECHO_ROOT = harness.REPO_ROOT / "examples" / "echo-handler"


class PluginReloadTests(SynchronousTestCase):
    def setUp(self) -> None:
        harness.require_tools(self, "curl")
        old = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ECHO_ROOT), old]))
        self.addCleanup(self._restore_path, old)
        self.echo_port = harness.free_port()
        self.funnel = harness.Funnel(self.addCleanup, more_public_ports=[self.echo_port])
        self.node = self.funnel.add_node("home", [NAME], extra_serve=self.section("one"))
        self.funnel.start()

    def section(self, greeting: str, more: str = "") -> str:
        return (
            f"[serve {self.echo_port}]\nfunnel = yes\nhandler = echo\ngreeting = {greeting}\n{more}"
        )

    @staticmethod
    def _restore_path(old: str | None) -> None:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old

    def client(self) -> tuple[ssl.SSLSocket, bytes]:
        context = ssl.create_default_context(cafile=str(self.node.ca))
        raw = socket.create_connection(("127.0.0.1", self.echo_port), timeout=10)
        sock = context.wrap_socket(raw, server_hostname=NAME)
        self.addCleanup(sock.close)
        return sock, self.line(sock)

    @staticmethod
    def line(sock: ssl.SSLSocket) -> bytes:
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed before a full line: {data!r}")
            data += chunk
        return data

    def echo(self, sock: ssl.SSLSocket, text: bytes) -> bytes:
        sock.sendall(text + b"\n")
        return self.line(sock)

    def hup(self, serve: str, pattern: str) -> None:
        self.node.extra_serve = serve
        self.funnel.write_node_ini(self.node)
        daemon = self.node.daemon
        assert daemon is not None
        offset = daemon.log_size()
        os.kill(daemon.pid, signal.SIGHUP)
        daemon.wait_log(pattern, after=offset)
        self.assertTrue(daemon.alive())

    def test_new_flows_get_the_new_instance_old_flows_stay(self) -> None:
        before, greeting = self.client()
        self.assertTrue(greeting.startswith(b"one "), greeting)
        self.assertEqual(self.echo(before, b"first"), b"first\n")

        self.hup(self.section("two"), r"reload: \d+ changes applied")
        after, greeting = self.client()
        self.assertTrue(greeting.startswith(b"two "), greeting)
        self.assertEqual(self.echo(after, b"new"), b"new\n")
        self.assertEqual(self.echo(before, b"still"), b"still\n")  # the old instance's flow

        self.hup(
            self.section("three", "max-clients = 0\n"),
            r"reload refused, the running configuration stays: "
            r".*node\.ini:\d+: \[serve \d+\] max-clients: 0 is out of range",
        )
        again, greeting = self.client()
        self.assertTrue(greeting.startswith(b"two "), greeting)
        self.assertEqual(self.echo(again, b"ok"), b"ok\n")
