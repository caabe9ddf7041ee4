"""[serve HOST:PORT]: one node, several names on one port, each with its own backend and its
own funnel, through the ingress path with curl as the public client."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import reactor, threads
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from funnel_tw import keys
from funnel_tw.config import load_node_config
from funnel_tw.node.service import NodeService
from tests._support import run_process

from .backend import listen
from .harness import ServeHarness
from .test_plugins import install_example, talk

NAMES = "node.example.com, blog.example.com, *.apps.example.com"


class _Answer(resource.Resource):
    isLeaf = True

    def __init__(self, answer: bytes) -> None:
        super().__init__()
        self.answer = answer

    def render(self, request: server.Request) -> bytes:
        return self.answer


def _backend(test: TestCase, answer: bytes) -> int:
    """An HTTP server answering every request with `answer`; its port."""
    port = listen(server.Site(_Answer(answer)))
    test.addCleanup(port.stopListening)
    return int(port.getHost().port)


class HostPortTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        if shutil.which("curl") is None:
            self.skipTest("curl not installed")
        node, blog, raw = (_backend(self, name) for name in (b"node app", b"blog app", b"raw"))
        self.h = ServeHarness(
            self,
            f"""[serve 443]
funnel = yes
/ = http://127.0.0.1:{node}

[serve blog.example.com:443]
funnel = yes
/ = http://127.0.0.1:{blog}

[serve private.apps.example.com:443]
/ = text:tailnet only

[serve *.apps.example.com:443]
funnel = yes
/ = text:any app

[serve raw.apps.example.com:443]
funnel = yes
tls-terminated-tcp = 127.0.0.1:{raw}
""",
            hostnames=NAMES,
        )

    async def curl(
        self, host: str, target: str | None = None, *extra: str
    ) -> tuple[int, bytes, bytes, Any]:
        """curl https://HOST/ through a front asking the node for TARGET:443 (default HOST)."""
        front, port = self.h.front(443, host=target or host)
        code, out, err = await run_process(
            "curl",
            "-sS",
            "--max-time",
            "20",
            "--cacert",
            self.h.ca_file,
            "--resolve",
            f"{host}:{port}:127.0.0.1",
            f"https://{host}:{port}/",
            *extra,
        )
        return code, out, err, front

    async def test_two_names_two_backends(self) -> None:
        """One port: the node's name goes to [serve 443], blog.example.com to its own."""
        for host, answer in (("node.example.com", b"node app"), ("blog.example.com", b"blog app")):
            code, out, err, front = await self.curl(host)
            self.assertEqual((code, out), (0, answer), err)
            self.assertEqual(front.accepted, 1)

    async def test_wildcard_section(self) -> None:
        """*.apps.example.com serves any one-label name under it without a section of its own."""
        code, out, err, _ = await self.curl("x.apps.example.com")
        self.assertEqual((code, out), (0, b"any app"), err)

    async def test_each_section_its_own_kind(self) -> None:
        """raw.apps.example.com ends TLS and forwards plaintext, on the same port as mounts."""
        code, out, err, _ = await self.curl("raw.apps.example.com")
        self.assertEqual((code, out), (0, b"raw"), err)

    async def test_funnel_is_per_host_port(self) -> None:
        """private.apps.example.com has no funnel on 443: refused 403 at /v0/ingress, while
        another name under the same wildcard, on the same port, is admitted."""
        code, _, _, front = await self.curl("private.apps.example.com")
        self.assertNotEqual(code, 0)
        self.assertEqual((front.accepted, len(front.refusals)), (0, 1))
        self.assertIn("403", front.refusals[0])
        self.assertEqual(self.h.node.ingress.counters.get("ingress_403"), 1)
        code, out, err, front = await self.curl("other.apps.example.com")
        self.assertEqual((code, out, front.refusals), (0, b"any app", []), err)

    async def test_sni_cannot_reach_a_name_without_funnel(self) -> None:
        """The relay asked for a funneled name; a TLS SNI naming a tailnet-only site is 403."""
        code, out, err, front = await self.curl(
            "private.apps.example.com", "x.apps.example.com", "-w", " %{http_code}"
        )
        self.assertEqual(front.accepted, 1)
        self.assertEqual(code, 0, err)
        self.assertTrue(out.endswith(b" 403"), out)
        self.assertNotIn(b"tailnet only", out)


class HostPluginTests(TestCase):
    """A plugin handler per name: each [serve HOST:PORT] builds its own, from its own options."""

    timeout = 60

    def setUp(self) -> None:
        install_example(self)
        self.h = ServeHarness(
            self,
            "[serve 10000]\nfunnel = yes\nhandler = echo\ngreeting = node\nterminate-tls = no\n"
            "[serve blog.example.com:10000]\nfunnel = yes\nhandler = echo\ngreeting = blog\n"
            "terminate-tls = no\n",
            hostnames=NAMES,
        )

    async def test_each_name_its_own_plugin(self) -> None:
        self.assertEqual(set(self.h.node.dispatcher.handlers), {10000, "blog.example.com:10000"})
        for host, greeting in (("blog.example.com", "blog"), ("node.example.com", "node")):
            _, port = self.h.front(10000, host=host, settle=True)
            said, echoed, source = await threads.deferToThread(talk, port, [b"hi\n"], None)
            self.assertEqual(
                said,
                f"{greeting} 127.0.0.1:{source} -> {host}:10000 (funnel via relay)\n".encode(),
            )
            self.assertEqual(echoed, [b"hi\n"])


class StartupWarningTests(TestCase):
    """The node logs each config warning once, at warn level, when it starts."""

    timeout = 30

    def test_warnings_logged_at_start(self) -> None:
        folder = Path(tempfile.mkdtemp(prefix="ftw-"))  # short: the local API socket is here
        self.addCleanup(shutil.rmtree, folder, True)
        relay = keys.encode_key(keys.public_key(keys.generate_private_key()))
        (folder / "node.ini").write_text(f"""[node]
private-key = {keys.encode_key(keys.generate_private_key())}
listen-port = 0
address = 100.64.0.2/32
hostname = node.example.com

[peer relay]
public-key = {relay}
allowed-ips = 100.64.0.1/32
funnel-ingress = yes

[serve 443]
funnel = yes
/ = text:ok
""")
        config = load_node_config(folder / "node.ini")
        self.assertEqual(len(config.warnings), 1)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        node = NodeService(config, reactor)
        node.startService()
        self.addCleanup(node.stopService)
        warned = [e for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual([e.get("why") for e in warned], list(config.warnings))
        self.assertIn(f"{folder / 'node.ini'}:7: [peer relay]: ", config.warnings[0])
