"""node.ini / relay.ini: the objects good files give, and the exact error of each bad one."""

# The example files of DESIGN.md are copied verbatim, comments and all, long lines included.
# ruff: noqa: E501

from __future__ import annotations

import os
import string
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, ip_interface, ip_network
from pathlib import Path

import attrs
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.config import (
    ConfigError,
    HTTPSMounts,
    NodeConfig,
    PeerConfig,
    PluginHandler,
    RelayConfig,
    RelayNode,
    ServePort,
    TCPForward,
    TLSConfig,
    TLSTerminatedTCP,
    load_config,
    load_node_config,
    load_relay_config,
)
from funnel_tw.config.model import ClientLimits
from funnel_tw.keys import encode_key, public_key

# RFC 7748 section 6.1: Alice is the node, Bob the relay, so public keys are known values.
ALICE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUB = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUB = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
CAROL_PUB = public_key(bytes(range(32)))
PSK = bytes(range(100, 132))

Loader = Callable[[str], object]

# Line 1 [node], 2 private-key, 3 address: the smallest valid node.ini.
NODE = f"""[node]
private-key = {encode_key(ALICE)}
address = 100.64.0.2/32
"""
# Line 1 [relay], 2 private-key, 3 address: the smallest valid relay.ini.
RELAY = f"""[relay]
private-key = {encode_key(BOB)}
address = 100.64.0.1/32
"""
# Lines 4-8 after NODE: a valid peer.
PEER = f"""[peer relay]
public-key = {encode_key(BOB_PUB)}
allowed-ips = 100.64.0.1/32
"""
# A valid relay node section.
HOME = f"""[node home]
public-key = {encode_key(ALICE_PUB)}
allowed-ips = 100.64.0.2/32
hostnames = node.example.com
peerapi = 100.64.0.2:41642
"""

DESIGN_NODE_INI = f"""\
[node]
private-key-file = node.key          ; or private-key = <base64>; a key file readable by group/others is refused
listen-port = 41641                  ; WireGuard UDP; 0 = any free port
address = 100.64.0.2/32, fd7a:115c:a1e0::2/128
hostname = node.example.com          ; comma list; the names this node serves
peerapi-port = 41642                 ; TCP port of the peerAPI on the overlay addresses
mtu = 1280
network = userspace                  ; userspace (no privileges) | tun (kernel TCP, needs CAP_NET_ADMIN)
state-dir = state                    ; certificates, ACME account key, local API socket

[peer relay]                         ; any number of [peer NAME]
public-key = {encode_key(BOB_PUB)}
endpoint = 203.0.113.7:41641         ; optional; otherwise learned from authenticated packets
allowed-ips = 100.64.0.1/32
persistent-keepalive = 25            ; optional
funnel-ingress = yes                 ; may POST /v0/ingress to the peerAPI, and reach nothing else

[tls]
source = self-signed                 ; self-signed | files | acme
; cert-file, key-file                 (files)
; acme-directory, acme-email, acme-challenge = tls-alpn-01 | dns-01, acme-dns-hook, acme-ca-file   (acme)

[serve 443]                          ; one section per TCP port of the node
funnel = yes                         ; also reachable from the internet through funnel-ingress peers
/ = http://127.0.0.1:8080            ; keys starting with "/" are HTTPS mounts: TLS ends here
/static/ = /srv/www                  ; a path serves files
/healthz = text:ok                   ; text: serves that text

[serve 8443]
funnel = yes
tcp-forward = 127.0.0.1:9443         ; raw TCP: the client's TLS passes through (e.g. to Caddy)
proxy-protocol = 2                   ; optional, 1 or 2, with tcp-forward / tls-terminated-tcp

[serve 5432]
tls-terminated-tcp = 127.0.0.1:5432  ; TLS ends here, plaintext TCP to the backend

[serve 10000]
funnel = yes
handler = echo                       ; a plugin handler by name; the other keys are its options
"""

DESIGN_RELAY_INI = f"""\
[relay]
private-key-file = relay.key
listen-port = 41641
address = 100.64.0.1/32, fd7a:115c:a1e0::1/128
public-address = 0.0.0.0             ; bind address of the public listeners
public-ports = 443, 8443, 10000
client-hello-timeout = 10
max-connections = 10000
mtu = 1280

[node home]                          ; any number of [node NAME]
public-key = {encode_key(ALICE_PUB)}
allowed-ips = 100.64.0.2/32
hostnames = node.example.com, *.apps.example.com
peerapi = 100.64.0.2:41642
endpoint = 198.51.100.9:41641        ; optional (a node behind NAT is learned by roaming)
"""


class ConfigTestCase(SynchronousTestCase):
    """Writes config files into a fresh folder and checks the errors they give."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir(parents=True)

    def write(self, name: str, text: str | bytes, mode: int = 0o600) -> str:
        path = self.dir / name
        if isinstance(text, str):
            text = text.encode("utf-8")
        path.write_bytes(text)
        path.chmod(mode)
        return str(path)

    def errors(self, loader: Loader, path: str) -> list[str]:
        error: ConfigError = self.assertRaises(ConfigError, loader, path)
        self.assertEqual(str(error), "\n".join(error.errors))
        return error.errors

    def assertErrors(self, text: str, *expected: str, loader: Loader = load_node_config) -> None:
        """`text` as a config file fails with exactly `expected`, each "LINE: ..." after FILE:."""
        path = self.write("test.ini", text)
        self.assertEqual(self.errors(loader, path), [f"{path}:{line}" for line in expected])


class GoodFilesTests(ConfigTestCase):
    def test_design_node_ini(self) -> None:
        """The node.ini of DESIGN.md, with real keys, gives exactly these objects."""
        self.write("node.key", encode_key(ALICE) + "\n")
        path = self.write("node.ini", DESIGN_NODE_INI, mode=0o644)
        config = load_node_config(path)
        self.assertEqual(
            config,
            NodeConfig(
                path=Path(os.path.abspath(path)),
                private_key=ALICE,
                listen_port=41641,
                addresses=(ip_interface("100.64.0.2/32"), ip_interface("fd7a:115c:a1e0::2/128")),
                hostnames=("node.example.com",),
                peerapi_port=41642,
                mtu=1280,
                network="userspace",
                state_dir=Path(os.path.abspath(self.dir / "state")),
                peers=(
                    PeerConfig(
                        name="relay",
                        public_key=BOB_PUB,
                        endpoint=("203.0.113.7", 41641),
                        allowed_ips=(ip_network("100.64.0.1/32"),),
                        persistent_keepalive=25,
                        funnel_ingress=True,
                        preshared_key=None,
                        # tcp-fallback = auto: the relay's host, port 443
                        tcp_fallback=("203.0.113.7", 443),
                    ),
                ),
                tls=TLSConfig(source="self-signed"),
                serve=(
                    ServePort(
                        port=443,
                        funnel=True,
                        handler=HTTPSMounts(
                            mounts=(
                                ("/", "http://127.0.0.1:8080"),
                                ("/static/", "/srv/www"),
                                ("/healthz", "text:ok"),
                            ),
                            proxy_timeout=60.0,
                        ),
                    ),
                    ServePort(8443, True, TCPForward("127.0.0.1:9443", proxy_protocol=2)),
                    ServePort(5432, False, TLSTerminatedTCP("127.0.0.1:5432", proxy_protocol=None)),
                    ServePort(10000, True, PluginHandler("echo", options=())),
                ),
            ),
        )

    def test_design_relay_ini(self) -> None:
        """The relay.ini of DESIGN.md, with real keys, gives exactly these objects."""
        self.write("relay.key", encode_key(BOB))
        path = self.write("relay.ini", DESIGN_RELAY_INI)
        self.assertEqual(
            load_relay_config(path),
            RelayConfig(
                path=Path(os.path.abspath(path)),
                private_key=BOB,
                listen_port=41641,
                addresses=(ip_interface("100.64.0.1/32"), ip_interface("fd7a:115c:a1e0::1/128")),
                public_address="0.0.0.0",
                public_ports=(443, 8443, 10000),
                client_hello_timeout=10.0,
                max_connections=10000,
                mtu=1280,
                nodes=(
                    RelayNode(
                        name="home",
                        public_key=ALICE_PUB,
                        allowed_ips=(ip_network("100.64.0.2/32"),),
                        hostnames=("node.example.com", "*.apps.example.com"),
                        peerapi=(IPv4Address("100.64.0.2"), 41642),
                        endpoint=("198.51.100.9", 41641),
                        persistent_keepalive=0,
                        preshared_key=None,
                    ),
                ),
                # the defaults of the keys DESIGN.md's example leaves out
                max_connections_per_ip=256,
                idle_timeout=600.0,
                http_redirect_port=None,
                shutdown_timeout=10.0,
                state_dir=Path(os.path.abspath(path)).parent / "state",
            ),
        )

    def test_load_config_detects_the_kind(self) -> None:
        """load_config reads a file with [relay] and no [node] as relay.ini, else as node.ini."""
        relay = self.write("r.ini", RELAY)
        node = self.write("n.ini", NODE)
        self.assertIsInstance(load_config(relay), RelayConfig)
        self.assertIsInstance(load_config(node), NodeConfig)
        both = self.write("both.ini", NODE + RELAY)
        self.assertIn(f"{both}:4: [relay]: unknown section", self.errors(load_config, both))

    def test_node_defaults(self) -> None:
        config = load_node_config(self.write("node.ini", NODE))
        self.assertEqual(
            (config.listen_port, config.peerapi_port, config.mtu, config.network),
            (41641, 41642, 1280, "userspace"),
        )
        self.assertEqual(config.state_dir, Path(os.path.abspath(self.dir / "state")))
        self.assertEqual(config.tls, TLSConfig(source="self-signed", acme_challenge="tls-alpn-01"))
        self.assertEqual((config.hostnames, config.peers, config.serve), ((), (), ()))

    def test_relay_defaults(self) -> None:
        config = load_relay_config(self.write("relay.ini", RELAY))
        self.assertEqual(config.public_address, "0.0.0.0")
        self.assertEqual(config.public_ports, (443,))
        self.assertEqual(config.client_hello_timeout, 10.0)
        self.assertEqual(config.max_connections, 10000)
        self.assertEqual((config.listen_port, config.mtu, config.nodes), (41641, 1280, ()))

    def test_relative_paths_resolve_against_the_config_folder(self) -> None:
        """Relative paths mean the same file whatever the daemon's working directory is."""
        (self.dir / "keys").mkdir()
        self.write("keys/node.key", encode_key(ALICE))
        self.write("cert.pem", "cert", mode=0o644)
        self.write("key.pem", "key")
        path = self.write(
            "node.ini",
            "[node]\nprivate-key-file = keys/node.key\naddress = 100.64.0.2/32\n"
            "state-dir = var/state\n"
            "[tls]\nsource = files\ncert-file = cert.pem\nkey-file = key.pem\n"
            "[serve 443]\n/ = www\n/abs = /srv/www\n",
        )
        config = load_node_config(path)
        base = Path(os.path.abspath(self.dir))
        self.assertEqual(config.private_key, ALICE)
        self.assertEqual(config.state_dir, base / "var/state")
        self.assertEqual(config.tls.cert_file, base / "cert.pem")
        self.assertEqual(config.tls.key_file, base / "key.pem")
        self.assertEqual(
            config.serve[0].handler,
            HTTPSMounts((("/", str(base / "www")), ("/abs", "/srv/www"))),
        )

    def test_serve_forms(self) -> None:
        """Bare ports mean 127.0.0.1; IPv6 keeps brackets; handler options keep file order."""
        config = load_node_config(
            self.write(
                "node.ini",
                NODE + "[serve 80]\n/ = 8080\n/sock = unix:/run/app.sock\n"
                "/x = https+insecure://10.0.0.1:8443/base\n/y = https://example.com\n"
                "[serve 81]\ntcp-forward = 9000\nproxy-protocol = 1\n"
                "[serve 82]\ntls-terminated-tcp = [::1]:5432\n"
                "[serve 83]\nhandler = echo\nzeta = 1\nalpha = two words\nfunnel = on\n",
            )
        )
        s80, s81, s82, s83 = config.serve
        self.assertEqual(
            s80.handler,
            HTTPSMounts(
                (
                    ("/", "http://127.0.0.1:8080"),
                    ("/sock", "unix:/run/app.sock"),
                    ("/x", "https+insecure://10.0.0.1:8443/base"),
                    ("/y", "https://example.com"),
                )
            ),
        )
        self.assertEqual(s81.handler, TCPForward("127.0.0.1:9000", proxy_protocol=1))
        self.assertEqual(s82.handler, TLSTerminatedTCP("[::1]:5432"))
        self.assertEqual(
            s83.handler, PluginHandler("echo", options=(("zeta", "1"), ("alpha", "two words")))
        )
        self.assertTrue(s83.funnel)
        self.assertFalse(s80.funnel)

    def test_proxy_timeout_belongs_to_mounts(self) -> None:
        """proxy-timeout is a property of HTTPS mounts; without it they wait 60 seconds."""
        config = load_node_config(
            self.write(
                "node.ini",
                NODE + "[serve 80]\n/ = 8080\nproxy-timeout = 2.5\n[serve 81]\n/ = 8081\n",
            )
        )
        self.assertEqual(
            [port.handler for port in config.serve],
            [
                HTTPSMounts((("/", "http://127.0.0.1:8080"),), proxy_timeout=2.5),
                HTTPSMounts((("/", "http://127.0.0.1:8081"),), proxy_timeout=60.0),
            ],
        )

    def test_underscores_in_headers(self) -> None:
        """Off by default; on for the whole section or for one mount."""
        config = load_node_config(
            self.write(
                "node.ini",
                NODE + "[serve 80]\n/ = 8080\n/api/ = 8081\nunderscores-in-headers /api/ = yes\n"
                "[serve 81]\n/ = 8082\n/b/ = 8083\nunderscores-in-headers = yes\n"
                "[serve 82]\n/ = 8084\n",
            )
        )
        self.assertEqual(
            [port.handler.underscores for port in config.serve],  # type: ignore[union-attr]
            [frozenset({"/api/"}), frozenset({"/", "/b/"}), frozenset()],
        )
        self.assertErrors(
            NODE + "[serve 80]\n/ = 8080\nunderscores-in-headers /nope/ = yes\n"
            "underscores-in-headers = maybe\n"
            "[serve 81]\ntcp-forward = 127.0.0.1:1\nunderscores-in-headers = yes\n",
            "6: [serve 80] underscores-in-headers /nope/: /nope/ is not a mount of this section",
            "7: [serve 80] underscores-in-headers: 'maybe' is not a boolean "
            "(use yes/no, true/false, on/off or 1/0)",
            "10: [serve 81] underscores-in-headers: is only used with /PATH = TARGET mounts",
        )

    def test_client_limits(self) -> None:
        """[node] deadlines for public clients: defaults, values, and FILE:LINE errors."""
        config = load_node_config(self.write("node.ini", NODE))
        self.assertEqual(config.limits, ClientLimits(10.0, 10.0, 30.0, 500))
        config = load_node_config(
            self.write(
                "node.ini",
                NODE + "tls-handshake-timeout = 5\nhttp-head-timeout = 2.5\n"
                "http-body-timeout = 60\nhttp-body-min-rate = 0\n",
            )
        )
        self.assertEqual(config.limits, ClientLimits(5.0, 2.5, 60.0, 0))
        self.assertErrors(
            NODE + "tls-handshake-timeout = 0\nhttp-head-timeout = soon\n"
            "http-body-timeout = -1\nhttp-body-min-rate = 1.5\n",
            "4: [node] tls-handshake-timeout: must be more than 0 seconds",
            "5: [node] http-head-timeout: 'soon' is not a number of seconds",
            "6: [node] http-body-timeout: '-1' is not a number of seconds",
            "7: [node] http-body-min-rate: '1.5' is not a whole number (bytes a second)",
        )

    def test_tls_sources(self) -> None:
        hook = self.write("hook.sh", "#!/bin/sh\n", mode=0o700)
        self.write("ca.pem", "ca", mode=0o644)
        config = load_node_config(
            self.write(
                "node.ini",
                NODE + "[tls]\nsource = acme\nacme-directory = https://acme.test/dir\n"
                "acme-email = me@example.com\nacme-challenge = dns-01\n"
                "acme-dns-hook = hook.sh\nacme-ca-file = ca.pem\n",
            )
        )
        self.assertEqual(
            config.tls,
            TLSConfig(
                source="acme",
                acme_directory="https://acme.test/dir",
                acme_email="me@example.com",
                acme_challenge="dns-01",
                acme_dns_hook=Path(os.path.abspath(hook)),
                acme_ca_file=Path(os.path.abspath(self.dir / "ca.pem")),
            ),
        )
        config = load_node_config(
            self.write("n2.ini", NODE + "[tls]\nsource = acme\nacme-directory = http://pebble/\n")
        )
        self.assertEqual(config.tls.acme_challenge, "tls-alpn-01")
        self.assertIsNone(config.tls.acme_dns_hook)

    def test_preshared_keys(self) -> None:
        """The preshared-key extension: inline or from a 0600 file, on peers and relay nodes."""
        self.write("psk", encode_key(PSK) + "\n")
        node = load_node_config(
            self.write(
                "node.ini",
                NODE + PEER + f"preshared-key = {encode_key(PSK)}\n"
                f"[peer other]\npublic-key = {encode_key(CAROL_PUB)}\nallowed-ips = 10.9.0.0/16\n"
                "preshared-key-file = psk\n",
            )
        )
        self.assertEqual([p.preshared_key for p in node.peers], [PSK, PSK])
        relay = load_relay_config(
            self.write("relay.ini", RELAY + HOME + "preshared-key-file = psk\n")
        )
        self.assertEqual(relay.nodes[0].preshared_key, PSK)
        relay = load_relay_config(self.write("r2.ini", RELAY + HOME))
        self.assertIsNone(relay.nodes[0].preshared_key)

    def test_values(self) -> None:
        """Endpoints, booleans, keepalive, lists and wildcards as written in the docs."""
        node = load_node_config(
            self.write(
                "node.ini",
                "[node]\n"
                f"private-key = {encode_key(ALICE)}\n"
                "address = 100.64.0.2, fd7a::2/128,\n"
                "listen-port = 0\n"
                "hostname = Node.Example.com, *.Apps.example.com\n"
                "mtu = 9000\n"
                "network = tun\n"
                "[peer a]\n"
                f"public-key = {encode_key(BOB_PUB)}\n"
                "endpoint = [fd00::1]:51820\n"
                "allowed-ips = 100.64.0.1/32,\n    10.0.0.0/8\n"  # a continuation line
                "persistent-keepalive = off\n"
                "funnel-ingress = TRUE\n"
                "[peer b]\n"
                f"public-key = {encode_key(CAROL_PUB)}\n"
                "endpoint = relay.example.com:41641\n"
                "allowed-ips = fd7a::1/128\n"
                "funnel-ingress = 0\n",
            )
        )
        self.assertEqual(
            node.addresses, (ip_interface("100.64.0.2/32"), ip_interface("fd7a::2/128"))
        )
        self.assertEqual(node.listen_port, 0)
        self.assertEqual(node.hostnames, ("node.example.com", "*.apps.example.com"))
        self.assertEqual((node.mtu, node.network), (9000, "tun"))
        a, b = node.peers
        self.assertEqual(a.endpoint, ("fd00::1", 51820))
        self.assertEqual(a.allowed_ips, (ip_network("100.64.0.1/32"), ip_network("10.0.0.0/8")))
        self.assertEqual((a.persistent_keepalive, a.funnel_ingress), (0, True))
        self.assertEqual(b.endpoint, ("relay.example.com", 41641))
        self.assertFalse(b.funnel_ingress)
        relay = load_relay_config(
            self.write(
                "relay.ini",
                "[relay]\n"
                f"private-key = {encode_key(BOB)}\n"
                "address = fd7a::1/128\n"
                "public-address = ::\n"
                "public-ports = 443,8443\n"
                "client-hello-timeout = 2.5\n"
                "ingress-connect-timeout = 1.5\n"
                "max-connections = 5\n"
                "[node n6]\n"
                f"public-key = {encode_key(ALICE_PUB)}\n"
                "allowed-ips = fd7a::/64\n"
                "hostnames = *.Example.COM\n"
                "peerapi = [fd7a::2]:41642\n"
                "persistent-keepalive = 25\n",
            )
        )
        self.assertEqual(relay.public_address, "::")
        self.assertEqual(relay.public_ports, (443, 8443))
        self.assertEqual((relay.client_hello_timeout, relay.max_connections), (2.5, 5))
        self.assertEqual(relay.ingress_connect_timeout, 1.5)
        self.assertEqual(relay.nodes[0].peerapi, (IPv6Address("fd7a::2"), 41642))
        self.assertEqual(relay.nodes[0].hostnames, ("*.example.com",))
        self.assertEqual(relay.nodes[0].persistent_keepalive, 25)

    def test_inline_comment_needs_whitespace(self) -> None:
        """A ";" glued to the value is part of it; after whitespace it starts a comment."""
        config = load_node_config(
            self.write("node.ini", NODE + "[serve 80]\n/a = text:x;y ; a comment\n")
        )
        self.assertEqual(config.serve[0].handler, HTTPSMounts((("/a", "text:x;y"),)))

    def test_crlf_and_bom(self) -> None:
        """Files edited on Windows read the same."""
        text = ("\ufeff" + NODE + "bogus = 1\n").replace("\n", "\r\n")
        self.assertErrors(text, "4: [node] bogus: unknown key")


class ErrorTests(ConfigTestCase):
    """Each error names file, line, section and key, and says why."""

    def test_file_not_found(self) -> None:
        path = str(self.dir / "missing.ini")
        self.assertEqual(
            self.errors(load_node_config, path),
            [f"{path}:0: cannot read: No such file or directory"],
        )
        self.assertEqual(
            self.errors(load_relay_config, path),
            [f"{path}:0: cannot read: No such file or directory"],
        )

    def test_directory(self) -> None:
        path = str(self.dir)
        self.assertEqual(
            self.errors(load_node_config, path), [f"{path}:0: cannot read: Is a directory"]
        )

    def test_not_utf8(self) -> None:
        path = self.write("node.ini", NODE.encode() + b"hostname = caf\xe9\n")
        self.assertEqual(self.errors(load_node_config, path), [f"{path}:4: not UTF-8 text"])

    def test_unknown_section(self) -> None:
        self.assertErrors(
            NODE + "[pear relay]\n[DEFAULT]\nx = 1\n[relay]\n[node extra]\n",
            "4: [pear relay]: unknown section (did you mean [peer NAME]?)",
            "5: [DEFAULT]: unknown section",
            "7: [relay]: unknown section",
            "8: [node extra]: unknown section ([node] takes no name)",
        )
        self.assertErrors(
            RELAY + "[peer x]\n[relay x]\n",
            "4: [peer x]: unknown section",
            "5: [relay x]: unknown section ([relay] takes no name)",
            loader=load_relay_config,
        )

    def test_section_needs_a_name(self) -> None:
        self.assertErrors(
            NODE + "[peer]\n[peer a/b]\n",
            "4: [peer]: needs a NAME of letters, digits, '.', '_', '-': [peer NAME]",
            "5: [peer a/b]: needs a NAME of letters, digits, '.', '_', '-': [peer NAME]",
        )

    def test_unknown_key(self) -> None:
        self.assertErrors(
            NODE + "adress = 1.2.3.4/32\nAddress = 1.2.3.4/32\nfoo = 1\n",
            "4: [node] adress: unknown key (did you mean 'address'?)",
            "5: [node] Address: unknown key (did you mean 'address'?)",
            "6: [node] foo: unknown key",
        )
        self.assertErrors(
            NODE + PEER + "funnel = yes\n",
            "7: [peer relay] funnel: unknown key (did you mean 'funnel-ingress'?)",
        )
        self.assertErrors(
            RELAY + HOME + "hostname = x.example\n",
            "9: [node home] hostname: unknown key (did you mean 'hostnames'?)",
            loader=load_relay_config,
        )
        self.assertErrors(
            NODE + "[tls]\nsorce = files\n",
            "5: [tls] sorce: unknown key (did you mean 'source'?)",
        )

    def test_missing_section(self) -> None:
        self.assertErrors(PEER, "0: [node]: missing section")
        self.assertErrors("", "0: [node]: missing section")
        self.assertErrors(HOME, "0: [relay]: missing section", loader=load_relay_config)

    def test_missing_key(self) -> None:
        """A missing key is reported at its section's header."""
        self.assertErrors(
            "; comment\n[node]\nlisten-port = 1\n",
            "2: [node] private-key: required key is missing (or give private-key-file)",
            "2: [node] address: required key is missing",
        )
        self.assertErrors(
            NODE + "\n[peer relay]\nendpoint = 1.2.3.4:5\n",
            "5: [peer relay] public-key: required key is missing",
            "5: [peer relay] allowed-ips: required key is missing",
        )
        self.assertErrors(
            RELAY + "[node home]\n",
            "4: [node home] public-key: required key is missing",
            "4: [node home] allowed-ips: required key is missing",
            "4: [node home] hostnames: required key is missing",
            "4: [node home] peerapi: required key is missing",
            loader=load_relay_config,
        )

    def test_private_key_twice(self) -> None:
        self.write("node.key", encode_key(ALICE))
        self.assertErrors(
            NODE + "private-key-file = node.key\n",
            "4: [node] private-key-file: use private-key or private-key-file, not both",
        )

    def test_bad_keys(self) -> None:
        short = encode_key(BOB_PUB)[:-2] + "="
        self.assertErrors(
            NODE.replace(encode_key(ALICE), "abc")
            + PEER.replace(encode_key(BOB_PUB), short)
            + "preshared-key = "
            + "!" * 43
            + "=\n"
            f"[peer b]\npublic-key = {encode_key(CAROL_PUB)[:-2]}B=\nallowed-ips = 10.0.0.0/8\n",
            "2: [node] private-key: not a valid key: expected 44 characters of base64 ending"
            " in one '=' (a 32-byte key), got 3 characters",
            "5: [peer relay] public-key: not a valid key: expected 44 characters of base64 ending"
            " in one '=' (a 32-byte key), got 43 characters",
            "7: [peer relay] preshared-key: not a valid key: it is not base64",
            "9: [peer b] public-key: not a valid key: it is not canonical base64 of 32 bytes",
        )

    def test_bad_addresses(self) -> None:
        self.assertErrors(
            NODE.replace("100.64.0.2/32", "100.64.0.2/33")
            + PEER.replace("100.64.0.1/32", "100.64.0.1/24")
            + "[peer b]\n"
            f"public-key = {encode_key(CAROL_PUB)}\n"
            "allowed-ips = 10.0.0.0/8, 10.0.0.0.1/32\n",
            "3: [node] address: '100.64.0.2/33' is not an IP address with a prefix length",
            "6: [peer relay] allowed-ips: '100.64.0.1/24' has host bits set;"
            " did you mean 100.64.0.0/24?",
            "9: [peer b] allowed-ips: '10.0.0.0.1/32' is not an IP network (CIDR)",
        )
        self.assertErrors(
            NODE.replace("100.64.0.2/32", " , "), "3: [node] address: needs at least one address"
        )
        self.assertErrors(
            RELAY + HOME.replace("100.64.0.2/32", "100.64.0.2/32, 100.64.0.2"),
            "6: [node home] allowed-ips: 100.64.0.2/32 is listed twice",
            loader=load_relay_config,
        )
        self.assertErrors(
            RELAY.replace("address = 100.64.0.1/32", "address = 100.64.0.1/32\npublic-address = *"),
            "4: [relay] public-address: '*' does not appear to be an IPv4 or IPv6 address",
            loader=load_relay_config,
        )

    def test_ports_out_of_range(self) -> None:
        self.assertErrors(
            NODE + "listen-port = 65536\npeerapi-port = 0\n" + PEER + "endpoint = 1.2.3.4:0\n",
            "4: [node] listen-port: 65536 is out of range (0..65535)",
            "5: [node] peerapi-port: 0 is out of range (1..65535)",
            "9: [peer relay] endpoint: 0 is out of range (1..65535)",
        )
        self.assertErrors(
            NODE + "[serve 70000]\n/ = 1\n[serve 80]\n/ = 99999\n",
            "4: [serve 70000]: 70000 is out of range (1..65535) (expected [serve PORT])",
            "7: [serve 80] /: 99999 is out of range (1..65535)",
        )
        self.assertErrors(
            RELAY + "public-ports = 443, 0\n",
            "4: [relay] public-ports: 0 is out of range (1..65535)",
            loader=load_relay_config,
        )
        self.assertErrors(
            RELAY + "public-ports = 443, 443\nlisten-port = -1\n",
            "4: [relay] public-ports: 443 is listed twice",
            "5: [relay] listen-port: '-1' is not a port number",
            loader=load_relay_config,
        )

    def test_bad_boolean(self) -> None:
        self.assertErrors(
            NODE + PEER + "funnel-ingress = maybe\n[serve 80]\nfunnel = y\n/ = 80\n",
            "7: [peer relay] funnel-ingress: 'maybe' is not a boolean"
            " (use yes/no, true/false, on/off or 1/0)",
            "9: [serve 80] funnel: 'y' is not a boolean (use yes/no, true/false, on/off or 1/0)",
        )

    def test_bad_numbers(self) -> None:
        self.assertErrors(
            RELAY + "client-hello-timeout = 10s\nmax-connections = many\nmtu = 500\n",
            "4: [relay] client-hello-timeout: '10s' is not a number of seconds",
            "5: [relay] max-connections: 'many' is not a number",
            "6: [relay] mtu: 500 is out of range (576..9000)",
            loader=load_relay_config,
        )
        self.assertErrors(
            RELAY + "client-hello-timeout = 0\nmax-connections = 0\n",
            "4: [relay] client-hello-timeout: must be more than 0 seconds",
            "5: [relay] max-connections: 0 is out of range (1..1000000)",
            loader=load_relay_config,
        )
        self.assertErrors(
            RELAY + "ingress-connect-timeout = 0\n",
            "4: [relay] ingress-connect-timeout: must be more than 0 seconds",
            loader=load_relay_config,
        )
        self.assertErrors(
            NODE + PEER + "persistent-keepalive = 1.5\n",
            "7: [peer relay] persistent-keepalive: '1.5' is not a number of seconds",
        )

    def test_mtu_with_ipv6(self) -> None:
        """IPv6 needs 1280; an IPv4-only node may go lower."""
        self.assertErrors(
            NODE.replace("/32", "/32, fd7a::2/128") + "mtu = 1200\n",
            "4: [node] mtu: 1200 is below 1280, the minimum with an IPv6 address",
        )
        self.assertEqual(load_node_config(self.write("v4.ini", NODE + "mtu = 576\n")).mtu, 576)

    def test_key_file_permissions(self) -> None:
        """A key file that group or others can read is refused; 0600 and 0400 are fine."""
        for mode in (0o640, 0o604, 0o644, 0o660):
            key = self.write("node.key", encode_key(ALICE), mode=mode)
            self.assertErrors(
                "[node]\nprivate-key-file = node.key\naddress = 100.64.0.2/32\n",
                f"2: [node] private-key-file: {os.path.abspath(key)} is readable by group"
                " or others; chmod 600 it",
            )
        self.write("node.key", encode_key(ALICE), mode=0o400)
        path = self.write("ok.ini", "[node]\nprivate-key-file = node.key\naddress = 10.0.0.1/32\n")
        self.assertEqual(load_node_config(path).private_key, ALICE)

    def test_psk_file_permissions(self) -> None:
        psk = self.write("psk", encode_key(PSK), mode=0o604)
        self.assertErrors(
            NODE + PEER + "preshared-key-file = psk\n",
            f"7: [peer relay] preshared-key-file: {os.path.abspath(psk)} is readable by group"
            " or others; chmod 600 it",
        )
        self.assertErrors(
            RELAY + HOME + "preshared-key-file = psk\n",
            f"9: [node home] preshared-key-file: {os.path.abspath(psk)} is readable by group"
            " or others; chmod 600 it",
            loader=load_relay_config,
        )

    def test_key_file_missing_or_bad(self) -> None:
        missing = os.path.abspath(self.dir / "nope.key")
        self.assertErrors(
            "[node]\nprivate-key-file = nope.key\naddress = 100.64.0.2/32\n",
            f"2: [node] private-key-file: {missing} does not exist",
        )
        self.assertErrors(
            "[node]\nprivate-key-file = ~no-such-user-here/node.key\naddress = 100.64.0.2/32\n",
            "2: [node] private-key-file: cannot expand '~no-such-user-here/node.key':"
            " no such home directory",
        )
        fifo = self.dir / "fifo.key"
        os.mkfifo(fifo, 0o600)
        self.assertErrors(
            "[node]\nprivate-key-file = fifo.key\naddress = 100.64.0.2/32\n",
            f"2: [node] private-key-file: {os.path.abspath(fifo)} is not a regular file",
        )
        bad = self.write("bad.key", "[Interface]\nPrivateKey = x\n")
        self.assertErrors(
            "[node]\nprivate-key-file = bad.key\naddress = 100.64.0.2/32\n",
            f"2: [node] private-key-file: {os.path.abspath(bad)}: not a valid key: expected 44"
            " characters of base64 ending in one '=' (a 32-byte key), got 26 characters",
        )

    def test_duplicate_public_keys(self) -> None:
        self.assertErrors(
            NODE + PEER + PEER.replace("relay", "again").replace("100.64.0.1/32", "10.1.0.0/16"),
            "8: [peer again] public-key: same key as [peer relay] (line 5)",
        )
        self.assertErrors(
            NODE + PEER.replace(encode_key(BOB_PUB), encode_key(ALICE_PUB)),
            "5: [peer relay] public-key: is the public key of this file's own private key",
        )
        self.assertErrors(
            RELAY + HOME + HOME.replace("home", "away").replace("node.example.com", "b.example"),
            "10: [node away] public-key: same key as [node home] (line 5)",
            "11: [node away] allowed-ips: 100.64.0.2/32 is already routed to [node home] (line 6)",
            loader=load_relay_config,
        )

    def test_same_network_routed_to_two_peers(self) -> None:
        self.assertErrors(
            NODE + PEER + f"[peer b]\npublic-key = {encode_key(CAROL_PUB)}\n"
            "allowed-ips = 10.0.0.0/8, 100.64.0.1/32\n",
            "9: [peer b] allowed-ips: 100.64.0.1/32 is already routed to [peer relay] (line 6)",
        )

    def test_duplicate_section(self) -> None:
        """configparser's duplicate errors become ConfigErrors with the line of the repeat."""
        self.assertErrors(
            NODE + PEER + "\n" + PEER, "8: [peer relay]: duplicate section (first at line 4)"
        )
        self.assertErrors(NODE + "[node]\n", "4: [node]: duplicate section (first at line 1)")
        self.assertErrors(
            NODE + PEER + "[peer  relay]\n[serve 443]\n/ = 1\n[serve 0443]\n",
            "7: [peer  relay]: same section as [peer relay] (line 4)",
            "10: [serve 0443]: '0443' is not a plain port number (expected [serve PORT])",
        )

    def test_duplicate_key(self) -> None:
        self.assertErrors(
            NODE + "mtu = 1280\n; comment\naddress = 10.0.0.1/32\n",
            "6: [node] address: duplicate key (first at line 3)",
        )

    def test_bad_endpoint(self) -> None:
        self.assertErrors(
            NODE + PEER + "endpoint = fd00::1:51820\n",
            "7: [peer relay] endpoint: 'fd00::1:51820' is not HOST:PORT"
            " (write an IPv6 address as [ADDRESS]:PORT)",
        )
        for value, why in [
            ("1.2.3.4", "'1.2.3.4' is not HOST:PORT"),
            ("[fd00::1]51820", "'[fd00::1]51820' is not [ADDRESS]:PORT"),
            ("[1.2.3.4]:5", "'1.2.3.4' is not an IPv6 address"),
            ("bad_host:5", "'bad_host' is not a host name or IP address"),
            ("host:port", "'port' is not a port number"),
        ]:
            self.assertErrors(
                NODE + PEER + f"endpoint = {value}\n", f"7: [peer relay] endpoint: {why}"
            )
        self.assertErrors(
            RELAY + HOME.replace("100.64.0.2:41642", "node.example.com:1"),
            "8: [node home] peerapi: 'node.example.com' is not an IP address"
            " (the peerAPI is on the overlay)",
            loader=load_relay_config,
        )

    def test_parse_errors(self) -> None:
        self.assertErrors("address = 1\n[node]\n", "1: a key before the first [section]")
        self.assertErrors(
            NODE + "not a key value line\n= 5\n",
            "4: cannot parse 'not a key value line' (expected KEY = VALUE)",
            "5: cannot parse '= 5' (expected KEY = VALUE)",
        )
        self.assertErrors(
            NODE + "[serve 80] trailing\n/ = 80\n",
            "4: [serve 80]: unexpected 'trailing' after the section header",
        )

    def test_serve_errors(self) -> None:
        self.assertErrors(
            NODE + "[serve 80]\nfunnel = yes\n"
            "[serve 81]\n/ = 80\ntcp-forward = 81\n"
            "[serve 82]\nhandler = echo\ntls-terminated-tcp = 1\n"
            "[serve 83]\n/ = 80\nproxy-protocol = 1\nbogus = 2\n"
            "[serve 84]\ntcp-forward = 84\nproxy-protocol = 3\n"
            "[serve 85]\nhandler = echo\nproxy-protocol = 1\n"
            "[serve 86]\n/a b = 80\n/c = ftp://x\n/d = localhost:80\n/e = unix:rel\n/f =\n"
            "[serve 41642]\n/ = 80\n"
            "[serve http]\n",
            "4: [serve 80]: needs one of: /PATH = TARGET mounts, tcp-forward,"
            " tls-terminated-tcp, handler",
            "8: [serve 81] tcp-forward: cannot be combined with mounts: use one per [serve PORT]",
            "11: [serve 82] tls-terminated-tcp: cannot be combined with handler:"
            " use one per [serve PORT]",
            "14: [serve 83] proxy-protocol: is only used with tcp-forward or tls-terminated-tcp",
            "15: [serve 83] bogus: unknown key",
            "18: [serve 84] proxy-protocol: '3' is not one of: 1, 2",
            "21: [serve 85] proxy-protocol: is only used with tcp-forward or tls-terminated-tcp",
            "23: [serve 86] /a b: a mount path starts with '/' and has no spaces",
            "24: [serve 86] /c: 'ftp://x' is not a http:// or https:// or https+insecure:// URL",
            "25: [serve 86] /d: 'localhost:80' is not a target: use http://, https://,"
            " https+insecure://, unix:/PATH, text:TEXT, a port or a path",
            "26: [serve 86] /e: 'unix:rel': a unix socket target is unix:/ABSOLUTE/PATH",
            "27: [serve 86] /f: needs a target",
            "28: [serve 41642]: port 41642 is the peerapi-port",
            "30: [serve http]: 'http' is not a port number (expected [serve PORT])",
        )

    def test_serve_value_errors(self) -> None:
        """A wrong value of the key that picks the handler, and proxy-timeout off mounts."""
        self.assertErrors(
            NODE + "[serve 80]\nhandler = bad name\n"
            "[serve 81]\ntcp-forward = x\nproxy-timeout = 1\n"
            "[serve 82]\ntls-terminated-tcp = 0\n"
            "[serve 83]\n/ = 80\nproxy-timeout = 0\n",
            "5: [serve 80] handler: 'bad name' is not a handler name",
            "7: [serve 81] tcp-forward: 'x' is not HOST:PORT",
            "8: [serve 81] proxy-timeout: is only used with /PATH = URL mounts",
            "10: [serve 82] tls-terminated-tcp: 0 is out of range (1..65535)",
            "13: [serve 83] proxy-timeout: must be more than 0 seconds",
        )

    def test_tls_errors(self) -> None:
        self.assertErrors(
            NODE + "[tls]\nsource = files\ncert-file = c.pem\nacme-email = a@b.c\n",
            "4: [tls] key-file: required key is missing",
            f"6: [tls] cert-file: {os.path.abspath(self.dir / 'c.pem')} does not exist",
            "7: [tls] acme-email: is only used with source = acme",
        )
        self.assertErrors(
            NODE + "[tls]\nsource = letsencrypt\ncert-file = c.pem\n",
            "5: [tls] source: 'letsencrypt' is not one of: self-signed, files, acme",
        )
        self.assertErrors(
            NODE + "[tls]\nsource = acme\nacme-directory = acme.test\nacme-challenge = dns-01\n"
            "acme-email = nobody\n",
            "4: [tls] acme-dns-hook: required key is missing",
            "6: [tls] acme-directory: 'acme.test' is not a https:// or http:// URL",
            "8: [tls] acme-email: 'nobody' is not an email address",
        )
        hook = os.path.abspath(self.write("hook", "#!/bin/sh\n", mode=0o600))
        self.assertErrors(
            NODE + "[tls]\nsource = acme\nacme-directory = https://a.test/\n"
            "acme-challenge = dns-01\nacme-dns-hook = hook\n",
            f"8: [tls] acme-dns-hook: {hook} is not executable",
        )
        self.assertErrors(
            NODE + "[tls]\nsource = acme\nacme-directory = https://a.test/\nacme-dns-hook = hook\n",
            "7: [tls] acme-dns-hook: is only used with acme-challenge = dns-01",
        )
        self.write("c.pem", "c", mode=0o644)
        key = os.path.abspath(self.write("k.pem", "k", mode=0o640))
        self.assertErrors(
            NODE + "[tls]\nsource = files\ncert-file = c.pem\nkey-file = k.pem\n",
            f"7: [tls] key-file: {key} is readable by group or others; chmod 600 it",
        )

    def test_relay_node_errors(self) -> None:
        self.assertErrors(
            RELAY
            + HOME.replace("100.64.0.2:41642", "100.64.0.9:41642")
            + HOME.replace("home", "b")
            .replace(encode_key(ALICE_PUB), encode_key(CAROL_PUB))
            .replace("100.64.0.2/32", "100.64.0.3/32")
            .replace("100.64.0.2:", "100.64.0.3:")
            .replace("node.example.com", "b.example, NODE.example.com"),
            "8: [node home] peerapi: 100.64.0.9 is not inside allowed-ips",
            loader=load_relay_config,
        )
        self.assertErrors(
            RELAY + HOME.replace("node.example.com", "a.example, *, x..y, a.example"),
            "7: [node home] hostnames: '*' is not a DNS name (or a *.suffix wildcard)",
            loader=load_relay_config,
        )
        self.assertErrors(
            RELAY + HOME.replace("node.example.com", " "),
            "7: [node home] hostnames: needs at least one host name",
            loader=load_relay_config,
        )
        self.assertErrors(
            RELAY + HOME.replace("node.example.com", "a.example, A.example"),
            "7: [node home] hostnames: a.example is listed twice",
            loader=load_relay_config,
        )

    def test_all_errors_at_once_in_file_order(self) -> None:
        """check-config shows every problem of a file, sorted by line, not just the first."""
        path = self.write(
            "node.ini",
            PEER + "persistent-keepalive = x\n" + NODE + "mtu = 1\n[tls]\nsource = ?\n",
        )
        self.assertEqual(
            self.errors(load_node_config, path),
            [
                f"{path}:4: [peer relay] persistent-keepalive: 'x' is not a number of seconds",
                f"{path}:8: [node] mtu: 1 is out of range (576..9000)",
                f"{path}:10: [tls] source: '?' is not one of: self-signed, files, acme",
            ],
        )


# Line 4 after NODE: the node's names, for [serve HOST:PORT] sections.
NAMES = "hostname = node.example.com, *.apps.example.com\n"


class HostPortTests(ConfigTestCase):
    """[serve HOST:PORT]: one name (or *.suffix) of the node on one port, any handler kind."""

    def test_sections_per_host(self) -> None:
        config = load_node_config(
            self.write(
                "node.ini",
                NODE + NAMES + "[serve 443]\nfunnel = yes\n/ = 8080\n"
                "[serve Blog.Apps.Example.com:443]\n/ = 2368\nproxy-timeout = 5\n"
                "[serve *.apps.example.com:443]\nfunnel = yes\ntcp-forward = 9443\n"
                "[serve node.example.com:5432]\ntls-terminated-tcp = 5432\nproxy-protocol = 2\n"
                "[serve x.apps.example.com:10000]\nfunnel = yes\nhandler = echo\nword = hi\n",
            )
        )
        self.assertEqual(
            config.serve,
            (
                ServePort(443, True, HTTPSMounts((("/", "http://127.0.0.1:8080"),))),
                ServePort(
                    443,
                    False,
                    HTTPSMounts((("/", "http://127.0.0.1:2368"),), proxy_timeout=5.0),
                    host="blog.apps.example.com",
                ),
                ServePort(443, True, TCPForward("127.0.0.1:9443"), host="*.apps.example.com"),
                ServePort(
                    5432,
                    False,
                    TLSTerminatedTCP("127.0.0.1:5432", proxy_protocol=2),
                    host="node.example.com",
                ),
                ServePort(
                    10000,
                    True,
                    PluginHandler("echo", (("word", "hi"),)),
                    host="x.apps.example.com",
                ),
            ),
        )
        self.assertEqual(
            [port.key for port in config.serve],
            [
                443,
                "blog.apps.example.com:443",
                "*.apps.example.com:443",
                "node.example.com:5432",
                "x.apps.example.com:10000",
            ],
        )

    def test_host_errors(self) -> None:
        """FILE:LINE of the section: a name the node does not serve, the same host:port twice,
        a host or port that is not one."""
        names = "node.example.com, *.apps.example.com"
        self.assertErrors(
            NODE + NAMES + "[serve blog.example.com:443]\n/ = 1\n"
            "[serve *.example.com:443]\n/ = 1\n"
            "[serve a.b.apps.example.com:443]\n/ = 1\n"
            "[serve *.x.apps.example.com:443]\n/ = 1\n"
            "[serve Node.Example.com:443]\n/ = 1\n"
            "[serve node.example.com:443]\n/ = 2\n"
            "[serve bad_host:443]\n/ = 1\n"
            "[serve :443]\n/ = 1\n"
            "[serve a.apps.example.com:44x]\n/ = 1\n"
            "[serve a.apps.example.com:0443]\n/ = 1\n"
            "[serve a.apps.example.com:]\n/ = 1\n"
            "[serve a.apps.example.com:41642]\n/ = 1\n"
            "[serve]\n/ = 1\n",
            f"5: [serve blog.example.com:443]: blog.example.com is not covered by the node's"
            f" hostname ({names})",
            f"7: [serve *.example.com:443]: *.example.com is not covered by the node's"
            f" hostname ({names})",
            f"9: [serve a.b.apps.example.com:443]: a.b.apps.example.com is not covered by the"
            f" node's hostname ({names})",
            f"11: [serve *.x.apps.example.com:443]: *.x.apps.example.com is not covered by the"
            f" node's hostname ({names})",
            "15: [serve node.example.com:443]: same host:port as [serve Node.Example.com:443]"
            " (line 13)",
            "17: [serve bad_host:443]: 'bad_host' is not a DNS name (or a *.suffix wildcard)"
            " (expected [serve HOST:PORT])",
            "19: [serve :443]: '' is not a DNS name (or a *.suffix wildcard)"
            " (expected [serve HOST:PORT])",
            "21: [serve a.apps.example.com:44x]: '44x' is not a port number"
            " (expected [serve HOST:PORT])",
            "23: [serve a.apps.example.com:0443]: '0443' is not a plain port number"
            " (expected [serve HOST:PORT])",
            "25: [serve a.apps.example.com:]: needs a port (expected [serve HOST:PORT])",
            "27: [serve a.apps.example.com:41642]: port 41642 is the peerapi-port",
            "29: [serve]: needs a port (expected [serve PORT] or [serve HOST:PORT])",
        )

    def test_a_node_without_names_has_no_host_sections(self) -> None:
        self.assertErrors(
            NODE + "[serve a.example:443]\ntcp-forward = 1\n",
            "4: [serve a.example:443]: a.example is not covered by the node's hostname (none)",
        )

    def test_same_port_twice(self) -> None:
        """configparser sees different headers; the schema sees one port."""
        self.assertErrors(
            NODE + "[serve 443]\n/ = 1\n[serve  443]\n/ = 2\n",
            "6: [serve  443]: same section as [serve 443] (line 4)",
        )

    def test_handler_rules_hold_per_host(self) -> None:
        self.assertErrors(
            NODE + NAMES + "[serve node.example.com:443]\n/ = 1\ntcp-forward = 2\n",
            "7: [serve node.example.com:443] tcp-forward: cannot be combined with mounts:"
            " use one per [serve PORT]",
        )


class WarningTests(ConfigTestCase):
    """A file that loads but will not do what it seems to say: warnings, FILE:LINE first."""

    def warnings(self, text: str) -> tuple[str, ...]:
        path = self.write("node.ini", text)
        return tuple(w.removeprefix(f"{path}:") for w in load_node_config(path).warnings)

    def test_funnel_without_an_ingress_peer(self) -> None:
        """At the funnel key of every funneled section: no relay may bring clients in."""
        why = "no [peer] has funnel-ingress = yes, so no relay can bring internet clients to it"
        self.assertEqual(
            self.warnings(
                NODE + NAMES + PEER + "[serve 443]\n/ = 1\nfunnel = yes\n"
                "[serve 80]\nfunnel = no\n/ = 1\n"
                "[serve x.apps.example.com:443]\nfunnel = yes\n/ = 2\n"
            ),
            (f"10: [serve 443] funnel: {why}", f"15: [serve x.apps.example.com:443] funnel: {why}"),
        )
        # an ingress peer, or no funnel at all: nothing to say
        ingress = PEER + "funnel-ingress = yes\npersistent-keepalive = 25\n"
        self.assertEqual(self.warnings(NODE + ingress + "[serve 443]\n/ = 1\nfunnel = yes\n"), ())
        self.assertEqual(self.warnings(NODE + PEER + "[serve 443]\n/ = 1\n"), ())

    def test_ingress_peer_that_cannot_reach_a_node_behind_nat(self) -> None:
        """At the peer's header: neither side keeps a NAT mapping open or can start."""
        self.assertEqual(
            self.warnings(NODE + PEER + "funnel-ingress = yes\n"),
            (
                "4: [peer relay]: funnel-ingress peer without persistent-keepalive, and no"
                " endpoint to reach it: a node behind NAT is unreachable for it"
                " (add persistent-keepalive = 25)",
            ),
        )
        for extra in ("persistent-keepalive = 25\n", "endpoint = 203.0.113.7:41641\n"):
            self.assertEqual(self.warnings(NODE + PEER + "funnel-ingress = yes\n" + extra), ())
        # an ordinary peer is not asked to reach the node
        self.assertEqual(self.warnings(NODE + PEER), ())

    def test_an_ordinary_peer_brings_no_funnel_clients(self) -> None:
        """Only funnel-ingress peers may POST /v0/ingress: a laptop peer does not count."""
        warnings = self.warnings(
            NODE + "[serve 443]\nfunnel = yes\n/ = 1\n" + PEER.replace("relay", "laptop")
        )
        self.assertEqual(len(warnings), 1)
        self.assertTrue(warnings[0].startswith("5: [serve 443] funnel: "))

    def test_design_files_have_none(self) -> None:
        self.write("node.key", encode_key(ALICE) + "\n")
        self.write("relay.key", encode_key(BOB) + "\n")
        node = load_node_config(self.write("node.ini", DESIGN_NODE_INI))
        relay = load_relay_config(self.write("relay.ini", DESIGN_RELAY_INI))
        self.assertEqual((node.warnings, relay.warnings), ((), ()))


# A vocabulary that reaches past the parser into every converter.
_KEYS = sorted(
    {
        "private-key", "private-key-file", "listen-port", "address", "hostname", "hostnames",
        "peerapi-port", "mtu", "network", "state-dir", "public-key", "endpoint", "allowed-ips",
        "persistent-keepalive", "funnel-ingress", "preshared-key", "preshared-key-file",
        "source", "cert-file", "key-file", "acme-directory", "acme-email", "acme-challenge",
        "acme-dns-hook", "acme-ca-file", "funnel", "tcp-forward", "tls-terminated-tcp",
        "proxy-protocol", "handler", "/", "/static/", "public-address", "public-ports",
        "client-hello-timeout", "max-connections", "peerapi",
    }
)  # fmt: skip
_HEADERS = [
    "node",
    "relay",
    "tls",
    "peer a",
    "peer b",
    "node a",
    "serve 443",
    "serve 80",
    "serve a.example:443",
    "serve *.b.example:80",
    "x",
]
_VALUES = st.one_of(
    st.sampled_from(
        [
            encode_key(ALICE),
            encode_key(BOB_PUB),
            encode_key(ALICE_PUB),
            "100.64.0.2/32",
            "fd7a::2/128",
            "10.0.0.0/8",
            "443",
            "0",
            "65536",
            "yes",
            "no",
            "1.2.3.4:5",
            "[::1]:5",
            "100.64.0.2:41642",
            "a.example, *.b.example",
            "http://127.0.0.1:1",
            "text:ok",
            "/srv",
            "unix:/s",
            "acme",
            "files",
            "dns-01",
            "1280",
            "node.key",
            "",
        ]
    ),
    st.text(string.printable, max_size=20),
)
_LINES = st.one_of(
    st.sampled_from(_HEADERS).map(lambda h: f"[{h}]"),
    st.tuples(st.sampled_from(_KEYS), _VALUES).map(lambda kv: f"{kv[0]} = {kv[1]}"),
    st.text(max_size=30),
)


class PropertyTests(ConfigTestCase):
    """Whatever a file holds, loading it gives a config or a ConfigError, never a traceback."""

    def check(self, data: str | bytes) -> None:
        path = self.write("fuzz.ini", data)
        self.write("node.key", encode_key(ALICE))
        self.write("relay.key", encode_key(BOB))
        for loader in (load_node_config, load_relay_config, load_config):
            try:
                loader(path)
            except ConfigError as e:
                self.assertTrue(e.errors)
                for line in e.errors:
                    self.assertTrue(line.startswith(f"{path}:"), line)

    @given(st.text())
    def test_arbitrary_text(self, text: str) -> None:
        self.check(text)

    @given(st.binary())
    def test_arbitrary_bytes(self, data: bytes) -> None:
        self.check(data)

    @given(st.lists(_LINES, max_size=25))
    def test_ini_like_text(self, lines: list[str]) -> None:
        self.check("\n".join(lines))

    @given(
        st.sampled_from([DESIGN_NODE_INI, DESIGN_RELAY_INI]),
        st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 5), _LINES), max_size=4),
    )
    def test_edited_design_files(self, text: str, edits: list[tuple[int, int, str]]) -> None:
        """Small edits of valid files reach the checks that span sections."""
        for position, deleted, inserted in edits:
            position %= len(text) + 1
            text = text[:position] + inserted + text[position + deleted :]
        self.check(text)


class OpsKeysTests(ConfigTestCase):
    """metrics-listen, access-log, access-log-format in [node] and [relay] (issue 14)."""

    def test_good_values(self) -> None:
        from funnel_tw.config import OpsConfig

        (self.dir / "logs").mkdir()
        path = self.write(
            "node.ini",
            NODE + "metrics-listen = [::1]:9464\naccess-log = logs/a.log\n"
            "access-log-format = combined\n",
        )
        ops = load_node_config(path).ops
        self.assertEqual(
            ops, OpsConfig(("::1", 9464), (self.dir / "logs" / "a.log").absolute(), "combined")
        )
        path = self.write("relay.ini", RELAY + "metrics-listen = 127.0.0.1:0\naccess-log = -\n")
        ops = load_relay_config(path).ops
        self.assertEqual(ops, OpsConfig(("127.0.0.1", 0), Path("-"), "json"))
        self.assertEqual(load_node_config(self.write("n.ini", NODE)).ops, OpsConfig())

    def test_errors_name_file_and_line(self) -> None:
        self.assertErrors(
            NODE + "metrics-listen = localhost:9464\naccess-log = nowhere/a.log\n"
            "access-log-format = xml\n",
            "4: [node] metrics-listen: 'localhost' is not an IP address (use 127.0.0.1 for this"
            " host only, or the address Prometheus reaches)",
            f"5: [node] access-log: {self.dir.absolute() / 'nowhere'} is not an existing directory",
            "6: [node] access-log-format: 'xml' is not one of: json, combined",
        )
        self.assertErrors(
            NODE + "access-log-format = json\nmetrics-listen = 127.0.0.1:70000\n",
            "4: [node] access-log-format: is only used with access-log",
            "5: [node] metrics-listen: 70000 is out of range (0..65535)",
        )
        self.assertErrors(
            RELAY + "public-ports = 443, 9464\nmetrics-listen = 0.0.0.0:9464\naccess-log = .\n",
            "5: [relay] metrics-listen: port 9464 is a public port",
            f"6: [relay] access-log: {self.dir.absolute()} is a directory; name a file in it",
            loader=load_relay_config,
        )


class EnrollKeysTests(ConfigTestCase):
    """[relay] enroll-port, public-endpoint, node-addresses; the enrolled nodes and a node's
    enrollment read beside the file (issue 14, enrollment by token)."""

    ENROLL = "enroll-port = 41643\npublic-endpoint = relay.example.net:41641\n"

    def test_good_values(self) -> None:
        from funnel_tw.config.model import EnrollConfig

        path = self.write(
            "relay.ini", RELAY + self.ENROLL + "node-addresses = 100.64.0.0/24, fd7a:115c::/64\n"
        )
        enroll = load_relay_config(path).enroll
        self.assertEqual(
            enroll,
            EnrollConfig(
                41643,
                ("relay.example.net", 41641),
                (ip_network("100.64.0.0/24"), ip_network("fd7a:115c::/64")),
            ),
        )
        assert enroll is not None
        self.assertEqual(enroll.address, ("relay.example.net", 41643))
        self.assertIsNone(load_relay_config(self.write("r.ini", RELAY)).enroll)

    def test_errors_name_file_and_line(self) -> None:
        self.assertErrors(
            RELAY + "enroll-port = 41643\n",
            "4: [relay] enroll-port: needs public-endpoint too",
            "4: [relay] enroll-port: needs node-addresses too",
            loader=load_relay_config,
        )
        self.assertErrors(
            RELAY + "public-endpoint = relay.example.net:41641\nnode-addresses = 10.0.0.0/8\n",
            "4: [relay] public-endpoint: is only used with enroll-port",
            "5: [relay] node-addresses: is only used with enroll-port",
            loader=load_relay_config,
        )
        self.assertErrors(
            RELAY + "public-ports = 443\nenroll-port = 443\n"
            "public-endpoint = relay.example.net\nnode-addresses = 100.64.0.0/31, 10.0.0.1/8\n",
            "5: [relay] enroll-port: port 443 is also public port 443",
            "6: [relay] public-endpoint: 'relay.example.net' is not HOST:PORT",
            "7: [relay] node-addresses: '10.0.0.1/8' has host bits set; did you mean 10.0.0.0/8?",
            loader=load_relay_config,
        )
        self.assertErrors(
            RELAY + self.ENROLL + "node-addresses = 100.64.0.0/31\n",
            "6: [relay] node-addresses: 100.64.0.0/31 is too small to assign addresses from",
            loader=load_relay_config,
        )

    def enrolled(self, *records: dict[str, object]) -> None:
        import json

        (self.dir / "state").mkdir(exist_ok=True)
        (self.dir / "state" / "enrolled-nodes.json").write_text(
            json.dumps({"version": 1, "nodes": list(records)})
        )

    def record(self, name: str, key: bytes, address: str, *hostnames: str) -> dict[str, object]:
        from funnel_tw.config.enrolled import enrolled_node_record

        return enrolled_node_record(name, key, (ip_interface(address),), hostnames, 41642, 1.0)

    def test_enrolled_nodes_join_the_sections(self) -> None:
        self.enrolled(self.record("laptop", CAROL_PUB, "100.64.0.3/32", "laptop.example.com"))
        config = load_relay_config(self.write("relay.ini", RELAY + HOME))
        self.assertEqual([n.name for n in config.nodes], ["home", "laptop"])
        self.assertEqual(config.enrolled, frozenset({"laptop"}))
        laptop = config.nodes[1]
        self.assertEqual(laptop.peerapi, (IPv4Address("100.64.0.3"), 41642))
        self.assertEqual(laptop.allowed_ips, (ip_network("100.64.0.3/32"),))
        self.assertEqual(config.warnings, ())

    def test_an_enrolled_node_that_clashes_is_left_out_with_a_warning(self) -> None:
        self.enrolled(
            self.record(
                "laptop", CAROL_PUB, "100.64.0.3/32", "node.example.com", "laptop.example.com"
            ),
            self.record("home", PSK, "100.64.0.4/32", "x.example.com"),
            self.record("copy", ALICE_PUB, "100.64.0.5/32", "y.example.com"),
            self.record("inside", public_key(PSK), "100.64.0.2/32", "z.example.com"),
        )
        # a hostname of a [node] section is shared: laptop joins home's pool; `balance NAME`
        # may name a hostname that only an enrolled node serves (laptop.example.com), not others
        self.assertErrors(
            RELAY + "balance w.example.com = first\n" + HOME,
            "4: [relay] balance w.example.com: no [node] section lists w.example.com in its"
            " hostnames",
            loader=load_relay_config,
        )
        path = self.write("relay.ini", RELAY + "balance laptop.example.com = first\n" + HOME)
        config = load_relay_config(path)
        self.assertEqual([n.name for n in config.nodes], ["home", "laptop"])
        state = self.dir.absolute() / "state" / "enrolled-nodes.json"
        self.assertEqual(
            list(config.warnings),
            [
                f"{path}:1: [relay] state-dir: {state}: enrolled node home left out: "
                "its name is taken",
                f"{path}:1: [relay] state-dir: {state}: enrolled node copy left out: "
                "its key is another node's",
                f"{path}:1: [relay] state-dir: {state}: enrolled node inside left out: "
                "addresses 100.64.0.2/32 are another node's or the relay's",
            ],
        )

    def test_a_damaged_enrolled_file_is_an_error(self) -> None:
        (self.dir / "state").mkdir()
        (self.dir / "state" / "enrolled-nodes.json").write_text('{"nodes": [{"name": 1}]}')
        path = self.write("relay.ini", RELAY + "state-dir = state\n")
        state = self.dir.absolute() / "state" / "enrolled-nodes.json"
        self.assertEqual(
            self.errors(load_relay_config, path),
            [
                f"{path}:4: [relay] state-dir: {state}: 'name' has the wrong type "
                "(written by the enroll listener; restore it)"
            ],
        )

    def joined(self, text: str | None = None) -> None:
        import json

        from funnel_tw.config.enrolled import Enrollment, enrollment_record

        relay = PeerConfig(
            name="relay.example.net",
            public_key=BOB_PUB,
            endpoint=("relay.example.net", 41641),
            allowed_ips=(ip_network("100.64.0.1/32"),),
            persistent_keepalive=25,
            funnel_ingress=True,
            preshared_key=None,
        )
        record = enrollment_record(
            Enrollment("home", (ip_interface("100.64.0.7/32"),), ("a.example.com",), relay)
        )
        (self.dir / "state").mkdir(exist_ok=True)
        (self.dir / "state" / "enrollment.json").write_text(text or json.dumps(record))

    def test_a_joined_node_needs_no_address_nor_peer(self) -> None:
        self.joined()
        path = self.write("node.ini", f"[node]\nprivate-key = {encode_key(ALICE)}\n")
        config = load_node_config(path)
        self.assertEqual(config.addresses, (ip_interface("100.64.0.7/32"),))
        self.assertEqual(config.hostnames, ("a.example.com",))
        (relay,) = config.peers
        self.assertEqual(relay.name, "relay.example.net")
        self.assertTrue(relay.funnel_ingress)
        self.assertEqual(relay.persistent_keepalive, 25)
        self.assertEqual(config.enrollment, self.dir.absolute() / "state" / "enrollment.json")
        # hostname in node.ini wins over the granted names (a name not granted: a warning)
        path = self.write(
            "n2.ini", f"[node]\nprivate-key = {encode_key(ALICE)}\nhostname = b.example.com\n"
        )
        config = load_node_config(path)
        self.assertEqual(config.hostnames, ("b.example.com",))
        self.assertEqual(
            list(config.warnings),
            [
                f"{path}:3: [node] hostname: b.example.com not granted by the relay joined by "
                "token (it grants a.example.com): that relay will not route it"
            ],
        )
        path = self.write(
            "n3.ini", f"[node]\nprivate-key = {encode_key(ALICE)}\nhostname = a.example.com\n"
        )
        self.assertEqual(load_node_config(path).warnings, ())

    def test_a_joined_node_with_address_or_the_relay_as_peer_is_an_error(self) -> None:
        self.joined()
        self.assertErrors(
            NODE + PEER,
            "3: [node] address: the relay assigned 100.64.0.7/32 at join: remove this key",
            "5: [peer relay] public-key: is the relay joined by token: remove this section",
        )
        self.assertErrors(
            f"[node]\nprivate-key = {encode_key(ALICE)}\n[peer relay.example.net]\n"
            f"public-key = {encode_key(CAROL_PUB)}\nallowed-ips = 10.0.0.1/32\n",
            "3: [peer relay.example.net]: same name as the relay joined by token (state-dir)",
        )

    def test_a_damaged_enrollment_is_an_error(self) -> None:
        self.joined('{"relay": {}}')
        path = self.write("node.ini", f"[node]\nprivate-key = {encode_key(ALICE)}\n")
        state = self.dir.absolute() / "state" / "enrollment.json"
        self.assertEqual(
            self.errors(load_node_config, path),
            [
                f"{path}:1: [node] state-dir: {state}: 'name' is missing "
                "(written by funnel-tw join: join again)",
                f"{path}:1: [node] address: required key is missing",
            ],
        )


class TCPFallbackConfigTests(ConfigTestCase):
    """``tcp-fallback`` in [peer] (node) and [relay]: WireGuard over TLS when UDP is blocked."""

    def peer(self, extra: str) -> object:
        config = load_node_config(self.write("node.ini", NODE + PEER + extra))
        return config.peers[0].tcp_fallback  # type: ignore[attr-defined]

    def test_auto_is_the_relay_https_port_for_ingress_peers(self) -> None:
        endpoint = "endpoint = relay.example.net:41641\n"
        self.assertEqual(self.peer(endpoint + "funnel-ingress = yes\n"), ("relay.example.net", 443))
        # an ordinary peer (perhaps plain wireguard-go), or one with no endpoint: none
        self.assertIsNone(self.peer(endpoint))
        self.assertIsNone(self.peer("funnel-ingress = yes\npersistent-keepalive = 25\n"))
        self.assertIsNone(self.peer(endpoint + "funnel-ingress = yes\ntcp-fallback = off\n"))
        self.assertEqual(
            self.peer(endpoint + "tcp-fallback = relay.example.net:8443\n"),
            ("relay.example.net", 8443),
        )

    def test_errors_at_their_line(self) -> None:
        self.assertErrors(
            NODE + PEER + "tcp-fallback = 443\n",
            "7: [peer relay] tcp-fallback: '443' is not HOST:PORT",
        )
        self.assertErrors(
            NODE + PEER + "tcp-fallback = relay.example.net:443\n",
            "7: [peer relay] tcp-fallback: needs an endpoint: the fallback is for a peer we dial",
        )
        self.assertErrors(
            RELAY + "tcp-fallback = maybe\n",
            "4: [relay] tcp-fallback: 'maybe' is not a boolean (use yes/no, true/false, on/off or 1/0)",
            loader=load_relay_config,
        )


# A second node serving node.example.com (a pool with HOME).
POOL_B = (
    HOME.replace("home", "b")
    .replace(encode_key(ALICE_PUB), encode_key(CAROL_PUB))
    .replace("100.64.0.2", "100.64.0.3")
)


class BalanceTests(ConfigTestCase):
    """Pools: several [node] sections per name, ``balance`` and ``balance NAME`` (issue 16)."""

    def test_pool_and_policies(self) -> None:
        path = self.write(
            "relay.ini",
            RELAY
            + "balance = first\nbalance NODE.example.com = least-connections\n"
            + HOME
            + POOL_B,
        )
        config = load_relay_config(path)
        self.assertEqual([n.name for n in config.nodes], ["home", "b"])
        self.assertEqual(config.nodes[1].hostnames, ("node.example.com",))
        self.assertEqual(config.balance, "first")
        self.assertEqual(config.balance_by_name, (("node.example.com", "least-connections"),))
        default = load_relay_config(self.write("r.ini", RELAY + HOME + POOL_B))
        self.assertEqual((default.balance, default.balance_by_name), ("round-robin", ()))

    def test_errors_name_file_and_line(self) -> None:
        self.assertErrors(
            RELAY + "balance = random\nbalance other.example.com = first\n"
            "balance x..y = first\nbalance node.example.com = fastest\nbalanse = first\n" + HOME,
            "4: [relay] balance: 'random' is not one of: round-robin, least-connections, first",
            "5: [relay] balance other.example.com: no [node] section lists other.example.com in"
            " its hostnames",
            "6: [relay] balance x..y: 'x..y' is not a DNS name (or a *.suffix wildcard)",
            "7: [relay] balance node.example.com: 'fastest' is not one of: round-robin,"
            " least-connections, first",
            "8: [relay] balanse: unknown key (did you mean 'balance'?)",
            loader=load_relay_config,
        )

    def test_reload_plan_applies_balance_live(self) -> None:
        from funnel_tw.config.plan import relay_plan

        old = load_relay_config(self.write("a.ini", RELAY + HOME))
        new = load_relay_config(self.write("b.ini", RELAY + "balance = first\n" + HOME))
        plan = relay_plan(old, new)
        self.assertEqual(plan.refused, ())
        self.assertIn("balance", [c.name for c in plan.changes])


class InspectKeysTests(ConfigTestCase):
    """inspect-listen, -mounts, -keep, -body-limit, -show-secrets in [node] (issue 18)."""

    SERVE = "[serve 443]\n/ = 8080\n/hooks/ = 9000\n"

    def test_off_by_default(self) -> None:
        self.assertIsNone(load_node_config(self.write("n.ini", NODE)).inspect)

    def test_good_values(self) -> None:
        from funnel_tw.config.model import InspectConfig

        path = self.write(
            "n.ini",
            NODE + "inspect-listen = 127.0.0.1:4040\ninspect-mounts = /hooks/, /\n"
            "inspect-keep = 20\ninspect-body-limit = 8K\ninspect-show-secrets = yes\n" + self.SERVE,
        )
        config = load_node_config(path)
        self.assertEqual(
            config.inspect, InspectConfig(("127.0.0.1", 4040), ("/hooks/", "/"), 20, 8192, True)
        )
        self.assertEqual(config.warnings, ())
        defaults = load_node_config(self.write("d.ini", NODE + "inspect-listen = [::1]:0\n"))
        self.assertEqual(defaults.inspect, InspectConfig(("::1", 0), (), 500, 65536, False))
        bare = load_node_config(self.write("b.ini", NODE + "inspect-listen = 4040\n"))
        self.assertEqual(bare.inspect, InspectConfig(("127.0.0.1", 4040)))

    def test_not_loopback_is_a_warning(self) -> None:
        path = self.write("n.ini", NODE + "inspect-listen = 0.0.0.0:4040\n")
        (warning,) = load_node_config(path).warnings
        self.assertEqual(
            warning,
            f"{path}:4: [node] inspect-listen: 0.0.0.0 is not a loopback address: whoever"
            " reaches it reads the captured requests (bodies and all) and can replay them",
        )

    def test_errors_name_file_and_line(self) -> None:
        self.assertErrors(
            NODE + "inspect-listen = localhost:4040\ninspect-keep = 0\n"
            "inspect-body-limit = 1T\ninspect-show-secrets = maybe\ninspect-mounts = hooks/\n",
            "4: [node] inspect-listen: 'localhost' is not an IP address (127.0.0.1: this host"
            " only)",
            "5: [node] inspect-keep: is only used with inspect-listen",
            "6: [node] inspect-body-limit: is only used with inspect-listen",
            "7: [node] inspect-show-secrets: is only used with inspect-listen",
            "8: [node] inspect-mounts: is only used with inspect-listen",
        )
        self.assertErrors(
            NODE + "inspect-listen = 127.0.0.1:4040\ninspect-keep = 0\n"
            "inspect-body-limit = 1T\ninspect-show-secrets = maybe\n"
            "inspect-mounts = /api/, hooks/\n" + self.SERVE,
            "5: [node] inspect-keep: 0 is out of range (1..100000)",
            "6: [node] inspect-body-limit: '1T' is not a size (bytes, or a number with k, M or G)",
            "7: [node] inspect-show-secrets: 'maybe' is not a boolean (use yes/no, true/false,"
            " on/off or 1/0)",
            "8: [node] inspect-mounts: 'hooks/': a mount path starts with '/' and has no spaces",
        )
        self.assertErrors(
            NODE + "inspect-listen = 127.0.0.1:4040\ninspect-mounts = /api/\n" + self.SERVE,
            "5: [node] inspect-mounts: /api/ is not a mount of any [serve] (/, /hooks/)",
        )


class TCPBufferKeysTests(ConfigTestCase):
    """tcp-receive-buffer-max, tcp-send-buffer-max, tcp-memory in [node] and [relay]: the
    userspace TCP stack's caps."""

    def test_defaults_are_the_stacks_own(self) -> None:
        from funnel_tw.config import TCPBuffers
        from funnel_tw.config.interface import _FIRST_SEND_BUFFER, _FIRST_WINDOW
        from funnel_tw.netstack import tcp
        from funnel_tw.netstack.stack import MAX_CONNECTIONS, RECEIVE_MEMORY

        stack = TCPBuffers(
            tcp.RECEIVE_BUFFER_MAX, tcp.SEND_BUFFER_MAX, RECEIVE_MEMORY, MAX_CONNECTIONS
        )
        self.assertEqual(load_node_config(self.write("node.ini", NODE)).tcp, stack)
        # the relay's windows toward its nodes may grow twice as far (config/model.py)
        relay = attrs.evolve(stack, receive_buffer_max=2 * tcp.RECEIVE_BUFFER_MAX)
        self.assertEqual(load_relay_config(self.write("relay.ini", RELAY)).tcp, relay)
        self.assertEqual((_FIRST_WINDOW, _FIRST_SEND_BUFFER), (tcp.RECEIVE_BUFFER, tcp.SEND_BUFFER))

    def test_sizes_with_and_without_suffixes(self) -> None:
        from funnel_tw.config import TCPBuffers

        path = self.write(
            "node.ini",
            NODE + "network = userspace\ntcp-receive-buffer-max = 12M\n"
            "tcp-send-buffer-max = 16384k\ntcp-memory = 1G\n",
        )
        self.assertEqual(load_node_config(path).tcp, TCPBuffers(12 << 20, 16 << 20, 1 << 30))
        path = self.write(
            "relay.ini",
            RELAY + "tcp-receive-buffer-max = 131072\ntcp-send-buffer-max = 2M\n"
            "tcp-memory = 128K\n",
        )
        self.assertEqual(load_relay_config(path).tcp, TCPBuffers(128 << 10, 2 << 20, 128 << 10))
        path = self.write(
            "r.ini", RELAY + "tcp-receive-buffer-max = 64m\ntcp-send-buffer-max = 64M\n"
        )
        self.assertEqual(load_relay_config(path).tcp, TCPBuffers(64 << 20, 64 << 20, 256 << 20))

    def test_each_bound_is_an_error_at_its_line(self) -> None:
        for loader, text, section, window in (
            (load_node_config, NODE, "node", "8M"),
            (load_relay_config, RELAY, "relay", "16M"),
        ):
            self.assertErrors(
                text + "tcp-receive-buffer-max = 127K\ntcp-send-buffer-max = 2047K\n"
                "tcp-memory = lots\n",
                f"4: [{section}] tcp-receive-buffer-max: 127K is less than 128K (the window a"
                " connection starts with)",
                f"5: [{section}] tcp-send-buffer-max: 2047K is less than 2M (the send buffer a"
                " connection starts with)",
                f"6: [{section}] tcp-memory: 'lots' is not a size (bytes, or a number with k, M"
                " or G)",
                loader=loader,
            )
            self.assertErrors(
                text + "tcp-receive-buffer-max = 65M\ntcp-send-buffer-max = 1G\n",
                f"4: [{section}] tcp-receive-buffer-max: 65M is more than 64M",
                f"5: [{section}] tcp-send-buffer-max: 1G is more than 64M",
                loader=loader,
            )
            self.assertErrors(
                text + "tcp-memory = 4M\n",
                f"4: [{section}] tcp-memory: 4M is less than tcp-receive-buffer-max ({window}):"
                " no window could grow to it",
                loader=loader,
            )
            self.assertErrors(
                text + "tcp-memory = 16M\ntcp-receive-buffer-max = 32M\n",
                f"4: [{section}] tcp-memory: 16M is less than tcp-receive-buffer-max (32M): no"
                " window could grow to it",
                loader=loader,
            )

    def test_max_connections(self) -> None:
        """tcp-max-connections: how many overlay connections the stack holds at once; on the
        relay, unless set, enough for max-connections (one overlay connection each)."""
        path = self.write("n.ini", NODE + "tcp-max-connections = 40000\n")
        self.assertEqual(load_node_config(path).tcp.connections, 40000)
        self.assertErrors(
            NODE + "tcp-max-connections = 10\n",
            "4: [node] tcp-max-connections: 10 is out of range (64..1000000)",
        )
        path = self.write("r.ini", RELAY + "max-connections = 20000\n")
        self.assertEqual(load_relay_config(path).tcp.connections, 20000 + 1024)
        path = self.write("r.ini", RELAY + "max-connections = 20000\ntcp-max-connections = 900\n")
        self.assertEqual(load_relay_config(path).tcp.connections, 900)  # as the operator said
        path = self.write("r.ini", RELAY + "max-connections = 100\n")
        self.assertEqual(load_relay_config(path).tcp.connections, 16384)

    def test_path_memory(self) -> None:
        """tcp-path-memory: how long a path's saved congestion state is kept (Careful Resume);
        seconds or off, at most a day."""
        self.assertEqual(load_node_config(self.write("n.ini", NODE)).tcp.path_memory, 600.0)
        path = self.write("n.ini", NODE + "tcp-path-memory = 120\n")
        self.assertEqual(load_node_config(path).tcp.path_memory, 120.0)
        path = self.write("r.ini", RELAY + "tcp-path-memory = off\n")
        self.assertEqual(load_relay_config(path).tcp.path_memory, 0.0)
        self.assertErrors(
            NODE + "tcp-path-memory = 100000\n",
            "4: [node] tcp-path-memory: 100000 is more than a day (86400 s): a path changes",
        )
        self.assertErrors(
            NODE + "tcp-path-memory = soon\n",
            "4: [node] tcp-path-memory: 'soon' is not a number of seconds",
        )

    def test_timestamps(self) -> None:
        """tcp-timestamps: RFC 7323 timestamps offered and taken; on unless said."""
        self.assertTrue(load_node_config(self.write("n.ini", NODE)).tcp.timestamps)
        path = self.write("r.ini", RELAY + "tcp-timestamps = no\n")
        self.assertFalse(load_relay_config(path).tcp.timestamps)
        self.assertErrors(
            NODE + "tcp-timestamps = sometimes\n",
            "4: [node] tcp-timestamps: 'sometimes' is not a boolean (use yes/no, true/false, "
            "on/off or 1/0)",
        )

    def test_congestion(self) -> None:
        """tcp-congestion: cubic unless said; bbr; nothing else."""
        self.assertEqual(load_node_config(self.write("n.ini", NODE)).tcp.congestion, "cubic")
        path = self.write("r.ini", RELAY + "tcp-congestion = bbr\n")
        self.assertEqual(load_relay_config(path).tcp.congestion, "bbr")
        self.assertErrors(
            NODE + "tcp-congestion = reno\n",
            "4: [node] tcp-congestion: 'reno' is not one of: cubic, bbr",
        )

    def test_a_bad_receive_cap_is_not_also_blamed_on_tcp_memory(self) -> None:
        self.assertErrors(
            NODE + "tcp-receive-buffer-max = 100M\ntcp-memory = 8M\n",
            "4: [node] tcp-receive-buffer-max: 100M is more than 64M",
        )

    def test_network_tun_refuses_them(self) -> None:
        self.assertErrors(
            NODE + "network = tun\ntcp-receive-buffer-max = 8M\ntcp-memory = 1G\n",
            "5: [node] tcp-receive-buffer-max: applies to network = userspace only (tun: the"
            " kernel's TCP)",
            "6: [node] tcp-memory: applies to network = userspace only (tun: the kernel's TCP)",
        )
