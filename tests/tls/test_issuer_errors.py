"""ACMESource failures an operator must see: a hostname added to a node that already has a
certificate, and a validation failure, each an error naming the hostname and the likely cause."""

from __future__ import annotations

from twisted.logger import LogLevel
from twisted.trial.unittest import TestCase

from funnel_tw.tls import issuer
from tests.tls.test_issuer import DAY, LIFETIME, NAME, OTHER, Harness, Logged


class AddedNameTests(TestCase):
    def _added(self) -> tuple[Harness, Logged]:
        logged = Logged(self)
        h = Harness(self, names=[NAME, OTHER])
        h.ca.store_file(h.pem, [NAME], age=DAY, lifetime=LIFETIME)  # far from expiry
        h.source.start()
        return h, logged

    def test_a_failing_added_name_is_an_error_naming_it(self) -> None:
        h, logged = self._added()
        h.source._client().validation = "invalid"  # type: ignore[attr-defined]
        h.clock.advance(0)
        self.assertEqual(logged.at(LogLevel.warn), [])
        (error,) = logged.at(LogLevel.error)
        self.assertIn(f"no certificate for {OTHER}", error)
        self.assertNotIn(f"for {NAME},", error)
        self.assertIn("acme-tls/1", error)
        self.assertIn("retrying in 60 s", error)
        self.assertEqual(h.source.uncovered(), [OTHER])

    def test_uncovered_is_empty_once_issued(self) -> None:
        h, logged = self._added()
        h.clock.advance(0)
        self.assertEqual(h.source.uncovered(), [])
        self.assertEqual(logged.at(LogLevel.error), [])

    def test_every_challenge_kind_has_a_cause(self) -> None:
        for kind in ("tls-alpn-01", "dns-01"):
            text = issuer.LIKELY_CAUSE[kind].format(name=OTHER)
            self.assertIn(OTHER, text)
