"""Two nodes behind one relay, routed by SNI: exact names, a wildcard, and names nobody serves."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e import harness


class TwoNodesTests(SynchronousTestCase):
    """Node "apps" is routed ``*.apps.example.test`` by the relay and serves a. and b. of it;
    node "other" serves other.example.test and the exact name special.apps.example.test,
    which must win over the wildcard."""

    def setUp(self) -> None:
        harness.require_tools(self, "curl")
        self.funnel = harness.Funnel(self.addCleanup)
        self.apps = self.funnel.add_node(
            "apps",
            ["a.apps.example.test", "b.apps.example.test"],
            ["*.apps.example.test"],
        )
        self.other = self.funnel.add_node(
            "other",
            ["other.example.test", "special.apps.example.test"],
        )
        self.funnel.start()

    def assert_reaches(self, name: str, node: harness.Node, http2: bool) -> None:
        result = self.funnel.curl(node, name, path=f"/{name}", http2=http2)
        self.assertEqual((result.returncode, result.status), (0, 200), f"{name}: {result.stderr}")
        self.assertIn(node.text, result.body, name)
        self.assertIn(f"path=/{name}", result.body)

    def test_each_name_reaches_its_backend(self) -> None:
        for name, node in [
            ("a.apps.example.test", self.apps),
            ("b.apps.example.test", self.apps),
            ("other.example.test", self.other),
            ("special.apps.example.test", self.other),  # exact beats *.apps.example.test
        ]:
            for http2 in (False, True):
                self.assert_reaches(name, node, http2)

    def test_names_nobody_serves_are_closed(self) -> None:
        """Routed by the wildcard but not in the node's list (the node refuses the ingress),
        two labels under the wildcard, the bare suffix, and an unknown name: all closed."""
        for name in (
            "c.apps.example.test",
            "x.a.apps.example.test",
            "apps.example.test",
            "unknown.example.test",
        ):
            result = self.funnel.curl(self.apps, name, timeout=12)
            self.assertNotEqual(result.returncode, 0, name)
            self.assertEqual(result.status, 0, name)
            self.assertNotIn(self.apps.text, result.body)
            self.assertNotIn(self.other.text, result.body)
        relay_log = self.funnel.relay.log() if self.funnel.relay else ""
        # c.apps: the node said no, and the relay's line says who asked for what and why
        self.assertRegex(
            relay_log,
            r"public connection from 127\.0\.0\.1:\d+ for c\.apps\.example\.test:\d+ closed: "
            r"refused by node apps: node answered 403 Forbidden: denied",
        )
        self.assertIn("unknown.example.test:", relay_log)
        # and the funnel still works afterwards
        self.assert_reaches("a.apps.example.test", self.apps, http2=False)


class WildcardNodeHostnameTests(SynchronousTestCase):
    """docs/configuration.md: a node's ``hostname`` may be ``*.suffix`` "for every name under
    suffix". A node configured that way should serve any one-label name under it."""

    def setUp(self) -> None:
        harness.require_tools(self, "curl")
        self.funnel = harness.Funnel(self.addCleanup)
        self.node = self.funnel.add_node("wild", ["*.wild.example.test"])
        self.funnel.start(probe=False)

    def test_wildcard_node_hostname_serves_a_name_under_it(self) -> None:
        result = self.funnel.curl(self.node, "x.wild.example.test", timeout=12)
        self.assertEqual(
            (result.returncode, result.status),
            (0, 200),
            f"{result.stderr}\n{self.funnel.logs()[-3000:]}",
        )
        self.assertIn(self.node.text, result.body)

    # Bug: NodeService.admits_funnel checks ``host in config.hostnames`` and ServeConfig keys
    # allow_funnel/web by the literal "name:port", so "*.wild.example.test" never matches
    # "x.wild.example.test": the node answers the relay's /v0/ingress with 403 ("denied").
