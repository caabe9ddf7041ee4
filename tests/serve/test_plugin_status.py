"""A plugin's own counters, gauges and refusal reasons where an operator looks: the text of
``funnel-tw status`` (a subprocess reading the node's local API) and the node's /metrics
(``metrics-listen``), after real flows through a relay and a node (the tcp-proxy example:
one flow proxied, one refused with its reason ``too-many-clients``), and after a reload."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path
from typing import Any

from twisted.internet import protocol, task, threads
from twisted.trial.unittest import TestCase

from funnel_tw import testing
from funnel_tw.config import load_node_config
from funnel_tw.config.plan import node_plan
from funnel_tw.node.reload import apply_node_plan

from .._support import free_port
from ..test_status import status_cli

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tcp-proxy-handler"


class Echo(protocol.Protocol):
    def connectionMade(self) -> None:
        self.transport.registerProducer(self.transport, True)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def row(text: str, *cells: str) -> bool:
    """Whether a line of ``text`` has these cells in order, separated by blanks."""
    pattern = r"\s+".join(re.escape(c) for c in cells)
    return re.search(rf"^\s*{pattern}\s*$", text, re.MULTILINE) is not None


class PluginStatusTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        testing.plugin_path(self, EXAMPLE)
        listener = reactor.listenTCP(0, protocol.Factory.forProtocol(Echo), interface="127.0.0.1")
        self.addCleanup(listener.stopListening)
        self.backend = listener.getHost().port

    async def test_counters_and_refusals_in_status_text_and_metrics(self) -> None:
        metrics_port = free_port()
        section = f"handler = tcp-proxy\nbackend = {self.backend}\nmax-clients = 1"
        async with testing.funnel(
            section, node_options=f"metrics-listen = 127.0.0.1:{metrics_port}"
        ) as f:
            first = await threads.deferToThread(f.connect)
            self.addCleanup(first.close)

            def roundtrip() -> bytes:
                first.sendall(b"ping")
                return bytes(first.recv(100))

            self.assertEqual(await threads.deferToThread(roundtrip), b"ping")

            def refused() -> None:
                try:
                    with f.connect() as sock:
                        sock.recv(100)
                except OSError:
                    pass

            await threads.deferToThread(refused)
            for _ in range(100):  # the refusal is counted once the node closed it
                if f.plugin_status()["refused"]:
                    break
                await task.deferLater(self.reactor, 0.05, lambda: None)

            key = f"tcp-proxy [serve {f.port}]"
            code, out, err = await status_cli("--config", str(f.folder / "node.ini"))
            self.assertEqual(code, 0, err)
            self.assertIn("\nplugins:\n", out)
            self.assertTrue(row(out, key, "proxied", "1"), out)
            self.assertTrue(row(out, key, "active", "1"), out)
            self.assertTrue(row(out, key, "refused too-many-clients", "1"), out)
            self.assertTrue(row(out, "plugin_refused", "1"), out)  # the node's own counter

            text = await threads.deferToThread(scrape, metrics_port)
            for line in (
                'funnel_node_plugin_events_total{name="proxied",plugin="tcp-proxy"} 1.0',
                'funnel_node_plugin_gauge{name="active",plugin="tcp-proxy"} 1.0',
                "funnel_node_plugin_refusals_total"
                '{plugin="tcp-proxy",reason="too-many-clients"} 1.0',
                'funnel_node_events_total{component="serve",event="plugin_refused"} 1.0',
            ):
                self.assertIn(line, text.splitlines())

            # a reload that changes the section: the new instance's counters go on from the
            # old ones (a counter never goes back), and both places show the new section
            (f.folder / "node.ini").write_text(
                (f.folder / "node.ini").read_text().replace("max-clients = 1", "max-clients = 5")
            )
            new = load_node_config(f.folder / "node.ini")
            apply_node_plan(f.node, new, node_plan(f.node.config, new))
            self.assertEqual(f.node.plugins[f.port].options["max-clients"], 5)
            second = await threads.deferToThread(f.connect)
            self.addCleanup(second.close)
            second.sendall(b"x")
            self.assertEqual(await threads.deferToThread(second.recv, 10), b"x")
            code, out, err = await status_cli("--config", str(f.folder / "node.ini"))
            self.assertEqual(code, 0, err)
            self.assertTrue(row(out, key, "proxied", "2"), out)
            self.assertTrue(row(out, key, "refused too-many-clients", "1"), out)
            text = await threads.deferToThread(scrape, metrics_port)
            self.assertIn(
                'funnel_node_plugin_events_total{name="proxied",plugin="tcp-proxy"} 2.0',
                text.splitlines(),
            )
