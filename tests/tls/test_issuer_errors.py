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


class WaitForRelayTests(TestCase):
    """tls-alpn-01 needs the relay: checks wait for a relay session instead of failing early."""

    def test_waits_then_issues_as_soon_as_a_session_exists(self) -> None:
        logged = Logged(self)
        h = Harness(self)
        session = [False]
        h.source.reachable = lambda: session[0]
        h.start()
        h.clock.pump([issuer.REACH_POLL] * 30)
        self.assertEqual(h.clients, [], "asked the CA before the relay could reach us")
        self.assertEqual(h.source.failures, 0)
        (info,) = [m for m in logged.at(LogLevel.info) if "waiting for a relay session" in m]
        self.assertIn(NAME, info)
        session[0] = True
        h.clock.advance(issuer.REACH_POLL)
        self.assertIsNotNone(h.source.current)
        self.assertEqual(h.ca.orders, 1)

    def test_goes_ahead_after_the_wait(self) -> None:
        h = Harness(self)
        h.source.reachable = lambda: False
        h.start()
        polls = int(issuer.REACH_WAIT / issuer.REACH_POLL)
        h.clock.pump([issuer.REACH_POLL] * (polls - 2))
        self.assertEqual(h.ca.orders, 0)
        h.clock.pump([issuer.REACH_POLL] * 3)
        self.assertEqual(h.ca.orders, 1)  # unreachable for two minutes: try, and say why
