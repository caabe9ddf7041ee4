"""DNS provider plugins for dns-01: ``[tls] acme-dns-plugin = NAME``, found via twisted.plugin."""

from __future__ import annotations

import sys
from pathlib import Path

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

import twisted.plugins
from funnel_tw import keys
from funnel_tw.config import ConfigError, load_node_config
from funnel_tw.node.service import build_acme_source
from funnel_tw.tls.challenges import ChallengeError, dns_plugin
from funnel_tw.tls.store import CertificateStore

PLUGIN = """
from twisted.internet import defer
from twisted.plugin import IPlugin
from zope.interface import implementer, provider

from funnel_tw.tls.challenges import IChallengeResponder, IChallengeResponderFactory


@implementer(IChallengeResponder)
class Recorder:
    challenge_type = "dns-01"

    def __init__(self, reactor):
        self.reactor = reactor
        self.calls = []

    def start_responding(self, name, token, key_authorization):
        self.calls.append(("set", name))
        return defer.succeed(None)

    def stop_responding(self, name, token, key_authorization):
        self.calls.append(("clear", name))
        return defer.succeed(None)


@implementer(IPlugin, IChallengeResponderFactory)
class Factory:
    name = "fake-dns"

    def create(self, reactor):
        return Recorder(reactor)


fake_dns = Factory()
"""


class DNSPluginTests(SynchronousTestCase):
    def setUp(self) -> None:
        root = Path(self.mktemp()).absolute()
        (root / "twisted" / "plugins").mkdir(parents=True)
        (root / "twisted" / "plugins" / "ftw_test_fake_dns.py").write_text(PLUGIN)
        plugins_dir = str(root / "twisted" / "plugins")
        twisted.plugins.__path__.append(plugins_dir)
        sys.path.append(str(root))
        self.addCleanup(twisted.plugins.__path__.remove, plugins_dir)
        self.addCleanup(sys.path.remove, str(root))
        self.dir = root

    def node_ini(self, tls: str) -> Path:
        path = self.dir / "node.ini"
        path.write_text(f"""[node]
private-key = {keys.encode_key(keys.generate_private_key())}
address = 100.64.0.2/32
hostname = node.example.com

[tls]
source = acme
acme-directory = https://127.0.0.1:14000/dir
{tls}
""")
        return path

    def test_found_by_name(self) -> None:
        responder = dns_plugin("fake-dns", task.Clock())
        self.assertEqual(type(responder).__name__, "Recorder")
        self.assertEqual(responder.challenge_type, "dns-01")

    def test_unknown_name(self) -> None:
        with self.assertRaises(ChallengeError) as caught:
            dns_plugin("nope", task.Clock())
        self.assertIn("no DNS provider plugin named 'nope'", str(caught.exception))
        self.assertIn("fake-dns", str(caught.exception))

    def test_node_uses_the_plugin(self) -> None:
        config = load_node_config(
            self.node_ini("acme-challenge = dns-01\nacme-dns-plugin = fake-dns")
        )
        self.assertEqual(config.tls.acme_dns_plugin, "fake-dns")
        source = build_acme_source(config, CertificateStore(config.hostnames), task.Clock())
        self.assertEqual(type(source.responder).__name__, "Recorder")

    def test_unknown_plugin_is_a_config_error(self) -> None:
        config = load_node_config(self.node_ini("acme-challenge = dns-01\nacme-dns-plugin = nope"))
        with self.assertRaises(ConfigError) as caught:
            build_acme_source(config, CertificateStore(config.hostnames), task.Clock())
        self.assertIn(
            "[tls] acme-dns-plugin: no DNS provider plugin named 'nope'", str(caught.exception)
        )

    def test_plugin_needs_dns_01_and_excludes_a_hook(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            load_node_config(self.node_ini("acme-dns-plugin = fake-dns"))
        self.assertIn(
            "acme-dns-plugin: is only used with acme-challenge = dns-01", str(caught.exception)
        )
        with self.assertRaises(ConfigError) as caught:
            load_node_config(
                self.node_ini(
                    "acme-challenge = dns-01\nacme-dns-plugin = fake-dns\nacme-dns-hook = /bin/true"
                )
            )
        self.assertIn(
            "acme-dns-hook: cannot be combined with acme-dns-plugin", str(caught.exception)
        )
