"""`funnel-tw status` and the node's local API on a UNIX socket in state-dir.

The node runs in the trial reactor (its overlay on a loopback UDP port, a second overlay playing
the relay); the command runs as a real subprocess so the reactor keeps serving it.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
from ipaddress import ip_interface, ip_network
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol, reactor, threads
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IProtocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

import funnel_tw
from funnel_tw import keys
from funnel_tw.config import load_node_config
from funnel_tw.flow import Flow, IIngressHandler
from funnel_tw.node.service import NodeService
from funnel_tw.node.status.address import LocalAPIError, LocalAPIUnavailable, SocketAddress
from funnel_tw.node.status.client import UnixHTTPConnection, fetch
from funnel_tw.node.status.server import LocalAPIService
from funnel_tw.node.status.text import format_age, format_bytes, format_expiry, format_status
from funnel_tw.overlay.interface import StaticPeer
from funnel_tw.overlay.userspace import UserspaceOverlayInterface
from funnel_tw.relay.ingress import IngressClientEnd, ingress_request
from funnel_tw.tls.store import Certificate
from tests._support import client_env, issue, run_process
from tests.test_cli import run as run_cli

PROJECT_ROOT = str(Path(funnel_tw.__file__).resolve().parent.parent)
HOSTNAME = "node.example.com"
SOON = "soon.example.com"
PEERAPI_PORT = 41642

# Tailscale's own example of `tailscale serve status --json` (REFERENCE.md) ...
REFERENCE_JSON = {
    "TCP": {
        "443": {"HTTPS": True},
        "8443": {"TCPForward": "127.0.0.1:9443", "ProxyProtocol": 2},
        "5432": {"TCPForward": "127.0.0.1:5432", "TerminateTLS": "node.example.com"},
    },
    "Web": {
        "node.example.com:443": {
            "Handlers": {
                "/": {"Proxy": "http://127.0.0.1:8080"},
                "/static/": {"Path": "/srv/www"},
                "/healthz": {"Text": "ok"},
            }
        }
    },
    "AllowFunnel": {"node.example.com:443": True, "node.example.com:8443": True},
}
# ... and the node.ini sections that say the same.
REFERENCE_SERVE = """
[serve 443]
funnel = yes
/ = http://127.0.0.1:8080
/static/ = /srv/www
/healthz = text:ok

[serve 8443]
funnel = yes
tcp-forward = 127.0.0.1:9443
proxy-protocol = 2

[serve 5432]
tls-terminated-tcp = 127.0.0.1:5432
"""
# Every kind of port: mounts, tcp-forward and tls-terminated-tcp with PROXY headers, a plugin.
FULL_SERVE = """
[serve 443]
funnel = yes
/ = http://127.0.0.1:8080
/static/ = /srv/www
/healthz = text:ok

[serve 8443]
funnel = yes
tcp-forward = 127.0.0.1:9443
proxy-protocol = 2

[serve 5432]
tls-terminated-tcp = 127.0.0.1:5432
proxy-protocol = 1

[serve 10000]
funnel = yes
handler = echo
"""


@implementer(IIngressHandler)
class _EchoHandler:
    name = "echo"
    terminate_tls = True

    def build_protocol(self, flow: Flow) -> IProtocol | None:
        return None


def _short_dir(test: SynchronousTestCase) -> Path:
    """A directory with a short path: a UNIX socket path has at most 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="ftw-"))
    test.addCleanup(shutil.rmtree, path, True)
    return path


def _certificate(name: str, lifetime: datetime.timedelta) -> Certificate:
    issued = issue(name, not_after=lifetime)
    return Certificate(issued.key, [issued.cert], source="files (test)")


def _stale_socket(path: Path) -> None:
    """A socket file nobody listens on, as a killed node leaves behind."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()


class Node:
    """A NodeService from a temporary node.ini, with the local API attached."""

    def __init__(
        self,
        test: SynchronousTestCase,
        serve: str,
        hostnames: str = HOSTNAME,
        relay_port: int | None = None,
        relay_public: bytes | None = None,
        private_key: bytes | None = None,
    ) -> None:
        self.dir = _short_dir(test)
        self.private_key = private_key or keys.generate_private_key()
        relay_public = relay_public or keys.public_key(keys.generate_private_key())
        endpoint = f"endpoint = 127.0.0.1:{relay_port}\n" if relay_port else ""
        (self.dir / "node.ini").write_text(
            f"""[node]
private-key = {keys.encode_key(self.private_key)}
listen-port = 0
address = 100.64.0.2/32, fd7a:115c:a1e0::2/128
hostname = {hostnames}
peerapi-port = {PEERAPI_PORT}
state-dir = state

[peer relay]
public-key = {keys.encode_key(relay_public)}
{endpoint}allowed-ips = 100.64.0.1/32, fd7a:115c:a1e0::1/128
persistent-keepalive = 25
funnel-ingress = yes
{serve}
"""
        )
        self.config = load_node_config(self.dir / "node.ini")
        self.node = NodeService(self.config, reactor, handlers={10000: _EchoHandler()})
        # NodeService attaches its LocalAPIService; attach one here if it does not (yet).
        attached = [s for s in self.node if isinstance(s, LocalAPIService)]
        if attached:
            self.api = attached[0]
        else:
            self.api = LocalAPIService(self.node, reactor)
            self.api.setServiceParent(self.node)
        self.socket = self.config.state_dir / "funnel-tw.sock"

    def start_api_only(self, test: TestCase) -> None:
        """The local API without the overlay (enough for the serve document)."""
        self.api.startService()
        test.addCleanup(self.api.stopService)

    def start(self, test: TestCase) -> None:
        self.node.startService()
        test.addCleanup(self.node.stopService)


async def status_cli(
    *args: str, timeout: float = 30.0, cwd: Path | None = None
) -> tuple[int, str, str]:
    """`python -m funnel_tw status ...` as a subprocess; the reactor keeps running."""
    env = client_env()
    env["PYTHONPATH"] = PROJECT_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    code, out, err = await run_process(
        sys.executable, "-m", "funnel_tw", "status", *args, env=env, cwd=cwd, timeout=timeout
    )
    return code, out.decode(), err.decode()


def get(path: Path, url: str) -> defer.Deferred[Any]:
    """The blocking stdlib client, in a thread so that the reactor answers it."""
    return threads.deferToThread(fetch, path, url)


def raw(path: Path, method: str, url: str) -> defer.Deferred[tuple[int, bytes]]:
    def call() -> tuple[int, bytes]:
        conn = UnixHTTPConnection(str(path), timeout=10)
        try:
            conn.request(method, url)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    return threads.deferToThread(call)


class ServeStatusTests(TestCase):
    """GET /v0/serve-status and `status --json`: exactly `tailscale serve status --json`."""

    timeout = 60

    async def test_api_equals_serve_config_to_json(self) -> None:
        node = Node(self, FULL_SERVE)
        node.start_api_only(self)
        answer = await get(node.socket, "/v0/serve-status")
        self.assertEqual(answer, node.node.serve.to_json())
        self.assertEqual(set(answer), {"TCP", "Web", "AllowFunnel"})
        self.assertEqual(
            answer["TCP"]["5432"],
            {"TCPForward": "127.0.0.1:5432", "TerminateTLS": HOSTNAME, "ProxyProtocol": 1},
        )
        self.assertEqual(
            answer["TCP"]["8443"], {"TCPForward": "127.0.0.1:9443", "ProxyProtocol": 2}
        )
        self.assertEqual(
            answer["AllowFunnel"],
            {f"{HOSTNAME}:443": True, f"{HOSTNAME}:8443": True, f"{HOSTNAME}:10000": True},
        )

    async def test_api_matches_the_reference_example(self) -> None:
        node = Node(self, REFERENCE_SERVE)
        node.start_api_only(self)
        self.assertEqual(await get(node.socket, "/v0/serve-status"), REFERENCE_JSON)

    async def test_cli_json_prints_it_as_tailscale_does(self) -> None:
        node = Node(self, FULL_SERVE)
        node.start_api_only(self)
        code, out, err = await status_cli("--json", "--socket", str(node.socket))
        self.assertEqual((code, err), (0, ""))
        expected = node.node.serve.to_json()
        self.assertEqual(json.loads(out), expected)
        self.assertEqual(out, json.dumps(expected, indent=2) + "\n")

    async def test_cli_finds_the_socket_from_node_ini(self) -> None:
        node = Node(self, REFERENCE_SERVE)
        node.start_api_only(self)
        code, out, err = await status_cli("--json", "--config", str(node.dir / "node.ini"))
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(json.loads(out), REFERENCE_JSON)

    async def test_default_config_is_node_ini_in_the_current_directory(self) -> None:
        node = Node(self, REFERENCE_SERVE)
        node.start_api_only(self)
        code, out, err = await status_cli("--json", cwd=node.dir)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(json.loads(out), REFERENCE_JSON)

    async def test_empty_serve_config_is_an_empty_object(self) -> None:
        node = Node(self, "")
        node.start_api_only(self)
        code, out, _ = await status_cli("--json", "--socket", str(node.socket))
        self.assertEqual((code, json.loads(out)), (0, {}))


# [serve HOST:PORT] sections next to [serve PORT] ones, on a node with a wildcard name.
HOSTS = "node.example.com, *.apps.example.com"
HOSTS_SERVE = """
[serve 443]
funnel = yes
/ = http://127.0.0.1:8080

[serve blog.apps.example.com:443]
/ = http://127.0.0.1:2368

[serve *.apps.example.com:443]
funnel = yes
/ = text:apps

[serve git.apps.example.com:8443]
funnel = yes
tcp-forward = 127.0.0.1:9443

[serve node.example.com:5432]
tls-terminated-tcp = 127.0.0.1:5432

[serve 10443]
tcp-forward = 127.0.0.1:10443

[serve blog.apps.example.com:10443]
funnel = yes
/ = text:blog

[serve blog.apps.example.com:9000]
/ = text:nine
"""
HOSTS_JSON = {
    "TCP": {
        "443": {"HTTPS": True},
        "5432": {
            "Hosts": {
                "node.example.com": {
                    "TCPForward": "127.0.0.1:5432",
                    "TerminateTLS": "node.example.com",
                }
            }
        },
        "8443": {"Hosts": {"git.apps.example.com": {"TCPForward": "127.0.0.1:9443"}}},
        "9000": {"HTTPS": True},
        "10443": {
            "TCPForward": "127.0.0.1:10443",
            "Hosts": {"blog.apps.example.com": {"HTTPS": True}},
        },
    },
    "Web": {
        "node.example.com:443": {"Handlers": {"/": {"Proxy": "http://127.0.0.1:8080"}}},
        "blog.apps.example.com:443": {"Handlers": {"/": {"Proxy": "http://127.0.0.1:2368"}}},
        "*.apps.example.com:443": {"Handlers": {"/": {"Text": "apps"}}},
        "blog.apps.example.com:10443": {"Handlers": {"/": {"Text": "blog"}}},
        "blog.apps.example.com:9000": {"Handlers": {"/": {"Text": "nine"}}},
    },
    "AllowFunnel": {
        "node.example.com:443": True,
        "*.apps.example.com:443": True,
        "git.apps.example.com:8443": True,
        "blog.apps.example.com:10443": True,
    },
}


class HostPortServeTests(TestCase):
    """[serve HOST:PORT]: the serve model picks a section per name, and status shows it."""

    timeout = 60

    def setUp(self) -> None:
        self.n = Node(self, HOSTS_SERVE, hostnames=HOSTS)
        self.serve = self.n.node.serve

    def test_json(self) -> None:
        """TCP by port ("Hosts" where a name is served otherwise), Web/AllowFunnel by site."""
        self.assertEqual(self.serve.to_json(), HOSTS_JSON)
        self.assertEqual(self.serve.ports, (443, 5432, 8443, 9000, 10443))

    def test_site(self) -> None:
        """Exactly the name, then the one-label wildcard; a listed name is [serve PORT]'s."""
        site = self.serve.site
        self.assertEqual(site("blog.apps.example.com", 443), "blog.apps.example.com:443")
        self.assertEqual(site("x.apps.example.com", 443), "*.apps.example.com:443")
        self.assertEqual(site("NODE.example.com.", 443), "node.example.com:443")
        self.assertEqual(self.serve.sites["node.example.com:443"], 443)
        self.assertIsNone(site("other.example.com", 443))
        self.assertIsNone(site("a.b.apps.example.com", 443))
        self.assertIsNone(site("x.apps.example.com", 8443))

    def test_handler_for(self) -> None:
        handler_for = self.serve.handler_for
        forward = handler_for("git.apps.example.com", 8443)
        assert forward is not None
        self.assertEqual(forward[0], "git.apps.example.com:8443")
        self.assertEqual(forward[1].tcp_forward, "127.0.0.1:9443")
        # the port's other names have no section there, not even the default's
        self.assertIsNone(handler_for("node.example.com", 8443))
        self.assertIsNone(handler_for("x.apps.example.com", 8443))
        default = handler_for("x.apps.example.com", 10443)
        assert default is not None
        self.assertEqual((default[0], default[1].tcp_forward), (10443, "127.0.0.1:10443"))
        blog = handler_for("blog.apps.example.com", 10443)
        assert blog is not None
        self.assertEqual((blog[0], blog[1].https), ("blog.apps.example.com:10443", True))
        # a port of HOST:PORT mounts only: TLS ends for any name, the SNI picks the site
        nine = handler_for("node.example.com", 9000)
        assert nine is not None
        self.assertEqual((nine[0], nine[1].https), (9000, True))
        terminated = handler_for("node.example.com", 5432)
        assert terminated is not None
        self.assertEqual(terminated[1].terminate_tls, "node.example.com")

    def test_funnel_per_host_port(self) -> None:
        admits = self.serve.admits_funnel
        self.assertTrue(admits("node.example.com", 443))
        self.assertTrue(admits("x.apps.example.com", 443))
        self.assertFalse(admits("blog.apps.example.com", 443))
        self.assertTrue(admits("git.apps.example.com", 8443))
        self.assertFalse(admits("x.apps.example.com", 8443))
        self.assertFalse(admits("node.example.com", 5432))
        self.assertTrue(admits("blog.apps.example.com", 10443))
        self.assertFalse(admits("node.example.com", 10443))
        self.assertFalse(admits("other.example.com", 443))

    def test_mounts_for(self) -> None:
        mounts = self.serve.mounts_for
        blog = mounts("blog.apps.example.com", 10443)
        assert blog is not None
        self.assertEqual(blog["/"].text, "blog")
        self.assertIsNone(mounts("x.apps.example.com", 10443))  # the port's tcp-forward
        self.assertIsNone(mounts("git.apps.example.com", 8443))
        wildcard = mounts("x.apps.example.com", 443)
        assert wildcard is not None
        self.assertEqual(wildcard["/"].text, "apps")

    async def test_status_document_and_summary(self) -> None:
        self.n.start_api_only(self)
        self.assertEqual(await get(self.n.socket, "/v0/serve-status"), HOSTS_JSON)
        from funnel_tw.node.status.document import status_document

        doc = json.loads(json.dumps(status_document(self.n.node, reactor.seconds())))
        ports = [(p["port"], p.get("host"), p["funnel"], p["kind"]) for p in doc["ports"]]
        self.assertEqual(
            ports,
            [
                (443, None, True, "https"),
                (443, "*.apps.example.com", True, "https"),
                (443, "blog.apps.example.com", False, "https"),
                (5432, "node.example.com", False, "tls-terminated-tcp"),
                (8443, "git.apps.example.com", True, "tcp-forward"),
                (9000, "blog.apps.example.com", False, "https"),
                (10443, None, False, "tcp-forward"),
                (10443, "blog.apps.example.com", True, "https"),
            ],
        )
        self.assertEqual(doc["ports"][2]["mounts"], {"/": {"Proxy": "http://127.0.0.1:2368"}})
        text = format_status(doc)
        lines = text.splitlines()

        def line_for(start: str) -> str:
            return next(x for x in lines if x.startswith(start))

        self.assertRegex(line_for("  443 "), r"funnel\s+https$")
        self.assertRegex(line_for("  blog.apps.example.com:443 "), r"tailnet only\s+https$")
        self.assertRegex(line_for("  *.apps.example.com:443 "), r"funnel\s+https$")
        self.assertRegex(
            line_for("  git.apps.example.com:8443 "), r"funnel\s+tcp-forward -> 127.0.0.1:9443$"
        )
        self.assertIn("proxy http://127.0.0.1:2368", text)
        self.assertIn('text "apps"', text)


class RunningNodeTests(TestCase):
    """A started node, a relay that has shaken hands with it, and one open funnel connection."""

    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        relay_key = keys.generate_private_key()
        node_key = keys.generate_private_key()
        relay_addr = [ip_interface("100.64.0.1/32"), ip_interface("fd7a:115c:a1e0::1/128")]
        node_nets = (ip_network("100.64.0.2/32"), ip_network("fd7a:115c:a1e0::2/128"))
        self.relay = UserspaceOverlayInterface(
            reactor,
            private_key=relay_key,
            addresses=relay_addr,
            listen_port=0,
            peers=[StaticPeer("node", keys.public_key(node_key), node_nets, None)],
        )
        self.relay.start()
        self.addCleanup(self.relay.stop)
        self.n = Node(
            self,
            FULL_SERVE,
            hostnames=f"{HOSTNAME}, {SOON}",
            relay_port=self.relay.port,
            relay_public=keys.public_key(relay_key),
            private_key=node_key,
        )
        self.n.start(self)
        self.n.node.store.install(_certificate(SOON, datetime.timedelta(days=3, hours=1)))
        self.stream = await self._open_ingress()

    async def _open_ingress(self) -> IngressClientEnd:
        accepted: defer.Deferred[IngressClientEnd] = defer.Deferred()
        end = IngressClientEnd(
            ingress_request("peer", ("203.0.113.5", 5555), f"{HOSTNAME}:443"),
            accepted.callback,
            lambda why: accepted.errback(AssertionError(f"ingress refused: {why}")),
        )
        await self.relay.client_endpoint("100.64.0.2", PEERAPI_PORT).connect(
            protocol.Factory.forProtocol(lambda: end)
        )
        result = await accepted
        self.addCleanup(lambda: end.transport and end.transport.abortConnection())
        return result

    async def test_status_document(self) -> None:
        doc = await get(self.n.socket, "/v0/status")
        self.assertEqual(doc["version"], funnel_tw.__version__)
        self.assertEqual(doc["serve"], self.n.node.serve.to_json())
        self.assertEqual(doc["listen_port"], self.n.node.overlay.port)
        [peer] = doc["peers"]
        self.assertEqual(peer["name"], "relay")
        self.assertEqual(peer["endpoint"], f"127.0.0.1:{self.relay.port}")
        self.assertTrue(peer["funnel_ingress"])
        self.assertIsNotNone(peer["last_handshake"])
        self.assertGreaterEqual(peer["last_handshake_age"], 0)
        self.assertLess(peer["last_handshake_age"], 30)
        self.assertGreater(peer["rx_bytes"], 0)
        self.assertGreater(peer["tx_bytes"], 0)
        self.assertEqual(doc["ingress"], {"open": 1})
        self.assertEqual(doc["counters"]["ingress"], {"ingress_accepted": 1})
        self.assertEqual(doc["counters"]["serve"], {"flows": 1})
        overlay = doc["counters"]["overlay"]
        self.assertEqual((overlay["app_errors"], overlay["stack_errors"]), (0, 0))
        self.assertRegex(format_status(doc), r"\n  app_errors\s+0\n  stack_errors\s+0\n")
        ports = {p["port"]: p for p in doc["ports"]}
        self.assertEqual(
            ports[8443],
            {
                "port": 8443,
                "funnel": True,
                "kind": "tcp-forward",
                "target": "127.0.0.1:9443",
                "proxy_protocol": 2,
            },
        )
        self.assertEqual(ports[5432]["kind"], "tls-terminated-tcp")
        self.assertFalse(ports[5432]["funnel"])
        self.assertEqual(ports[10000]["handler"], "echo")
        self.assertEqual(ports[443]["mounts"]["/healthz"], {"Text": "ok"})
        certs = {c["hostname"]: c for c in doc["certificates"]}
        self.assertEqual(set(certs), {HOSTNAME, SOON})
        self.assertTrue(certs[HOSTNAME]["source"].startswith("self-signed"))
        self.assertGreater(certs[HOSTNAME]["expires_in"], 7 * 86400)
        self.assertLess(certs[SOON]["expires_in"], 4 * 86400)

    async def test_human_summary(self) -> None:
        code, out, err = await status_cli("--socket", str(self.n.socket))
        self.assertEqual((code, err), (0, ""), out)
        peer_line = next(line for line in out.splitlines() if line.strip().startswith("relay"))
        self.assertIn(f"127.0.0.1:{self.relay.port}", peer_line)
        self.assertRegex(peer_line, r"handshake \d+s ago")
        self.assertRegex(peer_line, r"rx \d+(\.\d\d)? (B|KiB)")
        self.assertIn("funnel-ingress", peer_line)
        lines = out.splitlines()

        def line_for(start: str) -> str:
            return next(x for x in lines if x.startswith(start))

        self.assertRegex(line_for("  443 "), r"funnel\s+https$")
        self.assertIn("/static/  files /srv/www", out)
        self.assertIn('/healthz  text "ok"', out)
        self.assertIn("proxy http://127.0.0.1:8080", out)
        self.assertRegex(
            line_for("  8443 "), r"funnel\s+tcp-forward -> 127.0.0.1:9443, PROXY protocol v2"
        )
        self.assertRegex(
            line_for("  5432 "),
            r"tailnet only\s+tls-terminated-tcp -> 127.0.0.1:5432, PROXY protocol v1",
        )
        self.assertRegex(line_for("  10000"), r"funnel\s+handler echo")
        node_cert = line_for(f"  {HOSTNAME}")
        self.assertRegex(node_cert, r"expires \d{4}-\d\d-\d\d \d\d:\d\d UTC \(in \d+ days\)")
        self.assertNotIn("EXPIRES", node_cert)
        self.assertIn("(EXPIRES IN 3 DAYS)", line_for(f"  {SOON}"))
        self.assertIn("open connections: 1", out)
        self.assertRegex(out, r"ingress_accepted\s+1")
        self.assertRegex(out, r"flows\s+1")

    async def test_handshake_never(self) -> None:
        """A configured peer that never answered reads "never"."""
        self.n.node.overlay.device.peers[0].last_handshake = None
        code, out, _ = await status_cli("--socket", str(self.n.socket))
        self.assertEqual(code, 0)
        self.assertIn("handshake never", out)

    async def test_stop_removes_the_socket(self) -> None:
        await self.n.node.stopService()
        self.assertFalse(self.n.socket.exists())
        code, out, err = await status_cli("--socket", str(self.n.socket))
        self.assertEqual((code, out), (1, ""))
        self.assertIn("not running", err)


class SocketTests(TestCase):
    timeout = 60

    def test_socket_is_0600(self) -> None:
        node = Node(self, REFERENCE_SERVE)
        node.start_api_only(self)
        mode = node.socket.lstat().st_mode
        self.assertTrue(stat.S_ISSOCK(mode))
        self.assertEqual(stat.S_IMODE(mode), 0o600)

    async def test_second_service_on_the_same_socket_fails_clearly(self) -> None:
        first = Node(self, REFERENCE_SERVE)
        first.start_api_only(self)
        second = LocalAPIService(first.node, reactor, path=first.socket)
        e = self.assertRaises(LocalAPIError, second.listen)
        self.assertIn("another funnel-tw node is already running", str(e))
        self.assertIn(str(first.socket), str(e))
        exit_ = self.assertRaises(SystemExit, second.startService)
        self.assertIn("already running", str(exit_.code))
        self.assertFalse(second.running)
        # the first node keeps its socket and keeps answering
        self.assertTrue(first.socket.exists())
        self.assertEqual(await get(first.socket, "/v0/serve-status"), REFERENCE_JSON)

    async def test_second_node_with_the_same_state_dir_fails_clearly(self) -> None:
        first = Node(self, REFERENCE_SERVE)
        first.start_api_only(self)
        other = NodeService(first.config, reactor, handlers={})
        e = self.assertRaises(LocalAPIError, LocalAPIService(other, reactor).listen)
        self.assertIn("already running", str(e))
        self.assertEqual(await get(first.socket, "/v0/serve-status"), REFERENCE_JSON)

    async def test_stale_socket_is_removed(self) -> None:
        node = Node(self, REFERENCE_SERVE)
        node.socket.parent.mkdir(parents=True)
        _stale_socket(node.socket)
        node.start_api_only(self)
        self.assertEqual(await get(node.socket, "/v0/serve-status"), REFERENCE_JSON)

    def test_a_file_that_is_not_a_socket_is_left_alone(self) -> None:
        node = Node(self, REFERENCE_SERVE)
        node.socket.parent.mkdir(parents=True)
        node.socket.write_text("mine")
        e = self.assertRaises(LocalAPIError, node.api.listen)
        self.assertIn("is not a socket", str(e))
        self.assertEqual(node.socket.read_text(), "mine")

    async def test_a_state_dir_too_long_for_a_socket_address(self) -> None:
        """sun_path holds 107 bytes; a longer path is reached through its directory's fd."""
        node = Node(self, REFERENCE_SERVE)
        path = node.dir / ("x" * 60) / ("y" * 60) / "funnel-tw.sock"
        path.parent.mkdir(parents=True)
        stale = SocketAddress(path)
        _stale_socket(Path(stale.open()))
        stale.close()
        api = LocalAPIService(node.node, reactor, path=path)
        api.startService()
        self.addCleanup(api.stopService)
        mode = path.lstat().st_mode
        self.assertTrue(stat.S_ISSOCK(mode))
        self.assertEqual(stat.S_IMODE(mode), 0o600)
        self.assertEqual(await get(path, "/v0/serve-status"), REFERENCE_JSON)
        code, out, err = await status_cli("--json", "--socket", str(path))
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(json.loads(out), REFERENCE_JSON)
        second = LocalAPIService(node.node, reactor, path=path)
        self.assertIn("already running", str(self.assertRaises(LocalAPIError, second.listen)))
        await api.stopService()
        self.assertFalse(path.exists())

    def test_a_state_dir_that_cannot_be_made(self) -> None:
        node = Node(self, REFERENCE_SERVE)
        (node.dir / "afile").write_text("")
        api = LocalAPIService(node.node, reactor, path=node.dir / "afile" / "funnel-tw.sock")
        e = self.assertRaises(LocalAPIError, api.listen)
        self.assertIn(f"cannot create {node.dir / 'afile'}", str(e))

    def test_a_bind_failure_is_one_clear_line(self) -> None:
        class Refusing:
            def listenUNIX(self, address: str, factory: Any, **kw: Any) -> Any:
                raise CannotListenError(None, address, OSError(98, "Address already in use"))

        node = Node(self, REFERENCE_SERVE)
        api = LocalAPIService(node.node, Refusing())
        exit_ = self.assertRaises(SystemExit, api.startService)
        self.assertTrue(str(exit_.code).startswith(f"funnel-tw: cannot listen on {node.socket}"))
        self.assertIn("Address already in use", str(exit_.code))
        self.assertFalse(api.running)

    async def test_unknown_paths_and_methods(self) -> None:
        node = Node(self, REFERENCE_SERVE)
        node.start_api_only(self)
        self.assertEqual((await raw(node.socket, "GET", "/v0/nope"))[0], 404)
        self.assertEqual((await raw(node.socket, "POST", "/v0/status"))[0], 405)
        status, body = await raw(node.socket, "GET", "/v0/status")
        self.assertEqual(status, 200)
        self.assertIsNone(json.loads(body)["listen_port"])  # the overlay is not started here
        with self.assertRaises(LocalAPIUnavailable) as caught:
            await get(node.socket, "/v0/nope")
        self.assertIn("404", str(caught.exception))


class NotRunningTests(TestCase):
    """No node: exit 1 and one clear line on stderr, never a traceback."""

    timeout = 60

    async def test_no_socket(self) -> None:
        path = _short_dir(self) / "state" / "funnel-tw.sock"
        code, out, err = await status_cli("--socket", str(path))
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(
            err, f"funnel-tw status: the node is not running (no local API socket at {path})\n"
        )

    async def test_stale_socket(self) -> None:
        path = _short_dir(self) / "funnel-tw.sock"
        _stale_socket(path)
        code, out, err = await status_cli("--json", "--socket", str(path))
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(
            err, f"funnel-tw status: the node is not running (nothing listens on {path})\n"
        )

    async def test_from_node_ini(self) -> None:
        node = Node(self, REFERENCE_SERVE)  # configured, never started
        code, _, err = await status_cli("--config", str(node.dir / "node.ini"))
        self.assertEqual(code, 1)
        self.assertIn("not running", err)
        self.assertIn(str(node.socket), err)
        self.assertNotIn("Traceback", err)

    async def test_no_node_ini_here(self) -> None:
        """Without --config or --socket, status reads ./node.ini; none there says what to do."""
        code, _, err = await status_cli(cwd=_short_dir(self))
        self.assertEqual(code, 1)
        self.assertEqual(
            err,
            "funnel-tw status: node.ini not found: name the node's config with --config FILE"
            " or its socket with --socket PATH\n",
        )

    async def test_bad_node_ini(self) -> None:
        path = _short_dir(self) / "node.ini"
        path.write_text("[node]\nbogus = 1\n")
        code, _, err = await status_cli("--config", str(path))
        self.assertEqual(code, 1)
        self.assertIn("bogus", err)
        self.assertNotIn("Traceback", err)


class CommandLineTests(SynchronousTestCase):
    def test_config_and_socket_exclude_each_other(self) -> None:
        result = run_cli(["status", "--config", "node.ini", "--socket", "x.sock"])
        self.assertEqual(result.code, 2)
        self.assertIn("not allowed with argument", result.stderr)

    def test_listed_in_help(self) -> None:
        result = run_cli(["--help"])
        self.assertEqual(result.code, 0)
        self.assertIn("status", result.stdout)


class FormatTests(SynchronousTestCase):
    def test_age(self) -> None:
        self.assertEqual(format_age(12.7), "12s")
        self.assertEqual(format_age(-3), "0s")
        self.assertEqual(format_age(185), "3m05s")
        self.assertEqual(format_age(2 * 3600 + 7 * 60), "2h07m")
        self.assertEqual(format_age(4 * 86400 + 3 * 3600), "4d03h")

    def test_bytes(self) -> None:
        self.assertEqual(format_bytes(0), "0 B")
        self.assertEqual(format_bytes(1023), "1023 B")
        self.assertEqual(format_bytes(1536), "1.50 KiB")
        self.assertEqual(format_bytes(5 * 1024**3), "5.00 GiB")

    def test_expiry(self) -> None:
        day = 86400
        self.assertEqual(format_expiry(89.5 * day), "in 89 days")
        self.assertEqual(format_expiry(7 * day), "in 7 days")
        self.assertEqual(format_expiry(7 * day - 1), "EXPIRES IN 6 DAYS")
        self.assertEqual(format_expiry(3.2 * day), "EXPIRES IN 3 DAYS")
        self.assertEqual(format_expiry(1.5 * day), "EXPIRES IN 1 DAY")
        self.assertEqual(format_expiry(5 * 3600 + 10), "EXPIRES IN 5 HOURS")
        self.assertEqual(format_expiry(-2.5 * day), "EXPIRED 2 DAYS AGO")

    def test_summary_of_a_minimal_document(self) -> None:
        """A node with no peers, ports or certificates on a kernel TUN still prints."""
        text = format_status(
            {
                "version": "9",
                "hostnames": [],
                "addresses": ["100.64.0.2/32"],
                "network": "tun",
                "listen_port": None,
                "peerapi_port": 41642,
                "peers": [],
                "serve": {},
                "ports": [],
                "certificates": [],
                "ingress": {"open": None},
                "counters": {},
            }
        )
        self.assertIn("peers:\n  (none)", text)
        self.assertIn("serve:\n  (nothing)", text)
        self.assertIn("open connections: unknown", text)
        self.assertIn("WireGuard UDP port (not listening)", text)

    def test_missing_certificate_is_loud(self) -> None:
        text = format_status(
            {"certificates": [{"hostname": HOSTNAME, "source": None, "not_after": None}]}
        )
        self.assertRegex(text, rf"{HOSTNAME}\s+NO CERTIFICATE")


class RenewalStatusTests(SynchronousTestCase):
    def test_failing_renewal_is_loud(self) -> None:

        doc: dict[str, object] = {
            "hostnames": ["node.example.com"],
            "peers": [],
            "serve": {},
            "ports": [],
            "certificates": [
                {
                    "hostname": "node.example.com",
                    "not_after": "2030-01-01T00:00:00+00:00",
                    "expires_in": 3 * 86400,
                    "source": "acme",
                }
            ],
            "renewal": {"failures": 2, "last_error": "HTTP 429 rateLimited", "next_check_in": 60},
            "ingress": {"open": 0},
            "counters": {},
        }
        text = format_status(doc)
        self.assertIn("EXPIRES IN 3 DAYS", text)
        self.assertIn("RENEWAL FAILING (2 ATTEMPTS): HTTP 429 rateLimited; next try in 60 s", text)
