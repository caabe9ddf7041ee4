"""ACMESource (``[tls] source = acme``) with a fake ACME client and a task.Clock: when it renews
(ARI window, else 2/3 of the lifetime), how it schedules (hourly + jitter, exponential backoff
with a cap, Retry-After), what it logs, what it keeps on failure, and the files it writes."""

from __future__ import annotations

import base64
import datetime
import os
import random
from pathlib import Path
from typing import Any

from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy import jwk
from twisted.internet import defer, task
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from funnel_tw.tls import issuer
from funnel_tw.tls.acme import ACMEError
from funnel_tw.tls.challenges import ChallengeError, IChallengeResponder
from funnel_tw.tls.issuer import (
    CHECK_EVERY,
    CHECK_JITTER,
    FIRST_BACKOFF,
    MAX_BACKOFF,
    ACMESource,
    renewal_due,
)
from funnel_tw.tls.pem import key_pem, write_private
from funnel_tw.tls.sources import SelfSignedSource
from funnel_tw.tls.store import Certificate, CertificateStore
from tests._support import make_ca, sign

NAME = "node.example.test"
OTHER = "other.example.test"
BASE = "https://acme.example.test"
DAY = datetime.timedelta(days=1)
LIFETIME = 90 * DAY


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def token() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()


class FixedRandom(random.Random):
    """``uniform(a, b)`` always answers ``a + (b - a) * at``."""

    def __init__(self, at: float) -> None:
        super().__init__(0)
        self.at = at

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.at


class FakeCA:
    """Signs leaves for CSRs; the 'server side' the fake clients share (accounts, orders)."""

    def __init__(self) -> None:
        self.ca = make_ca("fake ACME CA", not_before=-400 * DAY, not_after=400 * DAY)
        self.key, self.cert = self.ca.key, self.ca.cert
        self.accounts: dict[bytes, str] = {}  # account key thumbprint -> URL
        self.orders = 0
        self.lifetime = LIFETIME
        self.age = datetime.timedelta(0)  # how long ago issued certificates started

    def leaf(
        self,
        public_key: Any,
        names: list[str],
        age: datetime.timedelta | None = None,
        lifetime: datetime.timedelta | None = None,
    ) -> x509.Certificate:
        start = utcnow() - (self.age if age is None else age)
        return sign(
            names[0],
            public_key,
            self.ca,
            san=names,
            not_before=start,
            not_after=start + (lifetime or self.lifetime),
        )

    def chain_pem(self, leaf: x509.Certificate) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, self.cert))

    def store_file(
        self, path: Path, names: list[str], age: datetime.timedelta, lifetime: datetime.timedelta
    ) -> bytes:
        """A ``<name>.pem`` as the issuer writes it, for a certificate issued ``age`` ago."""
        key = ec.generate_private_key(ec.SECP256R1())
        data = key_pem(key) + self.chain_pem(self.leaf(key.public_key(), names, age, lifetime))
        write_private(path, data)
        return data


class FakeClient:
    """What ACMESource uses of ACMEClient, answering at once (no network, no waiting)."""

    def __init__(self, ca: FakeCA, account_key: ec.EllipticCurvePrivateKey) -> None:
        self.ca = ca
        self.account_key = account_key
        self.key = jwk.JWKEC(key=account_key)
        self.account_url: str | None = None
        self.calls: list[str] = []
        self.fail_at: dict[str, Exception] = {}  # method name -> raised there
        self.pending: dict[str, defer.Deferred[None]] = {}  # method name -> wait for this
        self.window: tuple[datetime.datetime, datetime.datetime] | None = None
        self.authz_status = "pending"  # as the server first shows an authorization
        self.validation = "valid"  # what answering the challenge leads to
        self.challenge_types = ["tls-alpn-01", "dns-01"]
        self.chain_override: bytes | None = None
        self.csr: x509.CertificateSigningRequest | None = None
        self.names: list[str] = []

    async def _step(self, name: str) -> None:
        self.calls.append(name)
        if name in self.pending:
            await self.pending.pop(name)
        if name in self.fail_at:
            raise self.fail_at[name]

    async def register(self, email: str | None) -> str:
        await self._step("register")
        thumb = self.key.thumbprint(hash_function=hashes.SHA256)
        url = self.ca.accounts.setdefault(thumb, f"{BASE}/acct/{len(self.ca.accounts) + 1}")
        self.account_url = url
        return url

    def _authz(self, name: str, status: str) -> messages.Authorization:
        challenges = []
        for i, kind in enumerate(self.challenge_types):
            body: dict[str, Any] = {
                "type": kind,
                "url": f"{BASE}/chall/{name}/{kind}",
                "token": token(),
                "status": "invalid" if status == "invalid" and i == 0 else "pending",
            }
            if status == "invalid" and i == 0:  # the one that was tried
                body["error"] = {
                    "type": "urn:ietf:params:acme:error:connection",
                    "detail": f"Failed to connect to {name}:443",
                }
            challenges.append(body)
        body = {
            "identifier": {"type": "dns", "value": name.removeprefix("*.")},
            "status": status,
            "challenges": challenges,
        }
        if name.startswith("*."):
            body["wildcard"] = True
        return messages.Authorization.from_json(body)

    def _order(self, status: str) -> messages.Order:
        body: dict[str, Any] = {
            "status": status,
            "identifiers": [{"type": "dns", "value": n} for n in self.names],
            "authorizations": [f"{BASE}/authz/{n}" for n in self.names],
            "finalize": f"{BASE}/finalize/1",
        }
        if status == "valid":
            body["certificate"] = f"{BASE}/cert/1"
        return messages.Order.from_json(body)

    async def new_order(self, names: list[str]) -> tuple[str, messages.Order]:
        await self._step("new_order")
        self.ca.orders += 1
        self.names = list(names)
        self.csr = None
        return f"{BASE}/order/1", self._order("pending")

    async def authorization(self, url: str) -> messages.Authorization:
        await self._step("authorization")
        return self._authz(url.rsplit("/", 1)[1], self.authz_status)

    async def answer(self, url: str) -> None:
        await self._step("answer")

    async def poll(self, url: str, kind: type[Any], done: set[str]) -> Any:
        await self._step("poll")
        if kind is messages.Authorization:
            return self._authz(url.rsplit("/", 1)[1], self.validation)
        return self._order("valid" if self.csr is not None else "ready")

    async def finalize(self, order: messages.Order, csr_der: bytes) -> None:
        await self._step("finalize")
        self.csr = x509.load_der_x509_csr(csr_der)

    async def certificate(self, url: str) -> bytes:
        await self._step("certificate")
        if self.chain_override is not None:
            return self.chain_override
        assert self.csr is not None
        names = self.csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        leaf = self.ca.leaf(self.csr.public_key(), names.value.get_values_for_type(x509.DNSName))
        return self.ca.chain_pem(leaf)

    async def renewal_window(
        self, cert: x509.Certificate
    ) -> tuple[datetime.datetime, datetime.datetime] | None:
        self.calls.append("renewal_window")
        return self.window


@implementer(IChallengeResponder)
class FakeResponder:
    challenge_type = "tls-alpn-01"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.fail_start: Exception | None = None

    def start_responding(self, name: str, token: str, key_authorization: str) -> Any:
        self.calls.append(("start", name, key_authorization))
        if self.fail_start is not None:
            return defer.fail(self.fail_start)
        return defer.succeed(None)

    def stop_responding(self, name: str, token: str, key_authorization: str) -> Any:
        self.calls.append(("stop", name, key_authorization))
        return defer.succeed(None)


class Logged:
    """The issuer's log events."""

    def __init__(self, test: TestCase) -> None:
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self)
        test.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace") == "funnel_tw.tls.issuer":
            self.events.append(event)

    def at(self, level: LogLevel) -> list[str]:
        return [formatEvent(e) for e in self.events if e.get("log_level") == level]


class Harness:
    """An ACMESource on a Clock, its folder, its store, its fake CA and clients."""

    def __init__(
        self,
        test: TestCase,
        names: list[str] | None = None,
        folder: Path | None = None,
        ca: FakeCA | None = None,
        jitter: float = 0.0,
    ) -> None:
        self.names = names or [NAME]
        self.folder = folder or Path(test.mktemp()).absolute()
        self.ca = ca or FakeCA()
        self.clock = task.Clock()
        self.store = CertificateStore(self.names)
        self.responder = FakeResponder()
        self.clients: list[FakeClient] = []
        self.fail_at: dict[str, Exception] = {}  # copied into each new client
        self.source = ACMESource(
            store=self.store,
            names=self.names,
            directory=self.folder / "acme",
            client=None,
            client_factory=self._client,
            email="admin@example.test",
            responder=self.responder,
            fallback=SelfSignedSource(self.store, self.folder / "tls", self.clock),
            reactor=self.clock,
            rng=FixedRandom(jitter),
        )
        test.addCleanup(self.source.stop)

    def _client(self, key: ec.EllipticCurvePrivateKey) -> FakeClient:
        client = FakeClient(self.ca, key)
        client.fail_at = dict(self.fail_at)
        self.clients.append(client)
        return client

    @property
    def client(self) -> FakeClient:
        return self.clients[-1]

    @property
    def pem(self) -> Path:
        return self.folder / "acme" / f"{self.names[0].replace('*', '_wildcard_')}.pem"

    def delay(self) -> float:
        """Seconds until the next scheduled check."""
        (call,) = self.clock.getDelayedCalls()
        return call.getTime() - self.clock.seconds()

    def run_next(self) -> None:
        """Let the next scheduled check run (to completion: the fakes never wait)."""
        self.clock.advance(self.delay())

    def start(self) -> None:
        self.source.start()
        self.clock.advance(0)


def fingerprint(cert: Certificate | None) -> str:
    assert cert is not None
    return cert.chain[0].fingerprint(hashes.SHA256()).hex()


class RenewalDueTests(TestCase):
    def cert(self, start: datetime.datetime) -> Certificate:
        ca = FakeCA()
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = ca.leaf(key.public_key(), [NAME], age=utcnow() - start, lifetime=LIFETIME)
        return Certificate(key, [leaf, ca.cert])

    def test_two_thirds_of_the_lifetime(self) -> None:
        start = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
        cert = self.cert(start)
        two_thirds = start + LIFETIME * 2 / 3  # 60 days
        self.assertFalse(renewal_due(cert, two_thirds - datetime.timedelta(minutes=1), None))
        self.assertTrue(renewal_due(cert, two_thirds, None))
        self.assertTrue(renewal_due(cert, start + LIFETIME + DAY, None))  # expired

    def test_the_ari_window_decides_when_offered(self) -> None:
        start = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
        cert = self.cert(start)
        late = (start + 80 * DAY, start + 82 * DAY)
        early = (start + 10 * DAY, start + 12 * DAY)
        self.assertFalse(renewal_due(cert, start + 70 * DAY, late), "2/3 gone, window ahead")
        self.assertTrue(renewal_due(cert, start + 80 * DAY, late))
        self.assertTrue(renewal_due(cert, start + 11 * DAY, early), "window open at 1/9")
        self.assertFalse(renewal_due(cert, start + 9 * DAY, early))


class SourceTests(TestCase):
    def issued(self, h: Harness) -> Certificate:
        """The source's certificate, failing with its last error when there is none."""
        self.assertIsNone(h.source.last_error, "issuance failed")
        assert h.source.current is not None
        return h.source.current

    # --- the first certificate -------------------------------------------------------------

    def test_self_signed_first_then_issued(self) -> None:
        h = Harness(self, names=[NAME, OTHER])
        h.source.start()
        serving = h.store.lookup(NAME)
        assert serving is not None
        self.assertTrue(serving.source.startswith("self-signed"), serving.source)
        self.assertEqual(h.delay(), 0.0, "the first check runs at once")
        h.clock.advance(0)
        current = self.issued(h)
        self.assertEqual(sorted(current.names), [NAME, OTHER])
        self.assertIs(h.store.lookup(NAME), current)
        self.assertIs(h.store.lookup(OTHER), current)
        # each name proven through the responder, started and stopped
        self.assertEqual(
            [(action, name) for action, name, _ in h.responder.calls],
            [("start", NAME), ("stop", NAME), ("start", OTHER), ("stop", OTHER)],
        )
        # the key authorization is token.thumbprint of the account key
        thumb = h.client.key.thumbprint(hash_function=hashes.SHA256)
        suffix = base64.urlsafe_b64encode(thumb).rstrip(b"=").decode()
        self.assertTrue(all(k.endswith("." + suffix) for _, _, k in h.responder.calls))
        status = h.source.status()
        self.assertEqual(status["failures"], 0)
        self.assertIsNone(status["last_error"])
        self.assertEqual(status["not_after"], current.not_after.isoformat())

    def test_a_valid_authorization_needs_no_challenge(self) -> None:
        h = Harness(self)
        h.source.start()
        h.source._client().authz_status = "valid"  # type: ignore[attr-defined]
        h.clock.advance(0)
        self.issued(h)
        self.assertEqual(h.responder.calls, [])
        self.assertNotIn("answer", h.client.calls)

    # --- scheduling after success ----------------------------------------------------------

    def test_hourly_with_jitter(self) -> None:
        for at, expected in ((0.0, CHECK_EVERY), (0.5, 3750.0), (1.0, CHECK_EVERY + CHECK_JITTER)):
            h = Harness(self, jitter=at)
            h.start()
            self.issued(h)
            self.assertEqual(h.delay(), expected)
            self.assertEqual(h.source.status()["next_check_in"], expected)
            # the next check looks (renewal information) and, not due, leaves it alone
            orders = h.ca.orders
            h.run_next()
            self.assertEqual(h.ca.orders, orders)
            self.assertIn("renewal_window", h.client.calls)
            self.assertEqual(h.delay(), expected)

    def test_renews_at_two_thirds(self) -> None:
        h = Harness(self)
        h.ca.store_file(h.pem, [NAME], age=59 * DAY, lifetime=LIFETIME)
        h.start()
        first = fingerprint(h.source.current)
        self.assertEqual(h.ca.orders, 0, "59 of 90 days: not due")
        self.patch(issuer, "_now", lambda: utcnow() + 2 * DAY)
        h.run_next()
        self.assertEqual(h.ca.orders, 1)
        second = fingerprint(self.issued(h))
        self.assertNotEqual(first, second)
        self.assertIs(h.store.lookup(NAME), h.source.current)
        stored = x509.load_pem_x509_certificates(h.pem.read_bytes())[0]
        self.assertEqual(stored.fingerprint(hashes.SHA256()).hex(), second)

    def test_ari_window_open_renews_early(self) -> None:
        h = Harness(self)
        h.ca.store_file(h.pem, [NAME], age=DAY, lifetime=LIFETIME)
        h.source.start()
        h.source._client().window = (utcnow() - DAY, utcnow() + DAY)  # type: ignore[attr-defined]
        h.clock.advance(0)
        self.assertEqual(h.ca.orders, 1, "the server's window is open: renew now")
        self.issued(h)

    def test_ari_window_ahead_holds_renewal(self) -> None:
        h = Harness(self)
        h.ca.store_file(h.pem, [NAME], age=70 * DAY, lifetime=LIFETIME)
        h.source.start()
        h.source._client().window = (utcnow() + DAY, utcnow() + 2 * DAY)  # type: ignore[attr-defined]
        h.clock.advance(0)
        self.assertEqual(h.ca.orders, 0, "past 2/3, but the server says later")

    def test_no_ari_answer_falls_back_to_two_thirds(self) -> None:
        h = Harness(self)
        h.ca.store_file(h.pem, [NAME], age=70 * DAY, lifetime=LIFETIME)
        h.source.start()
        client = h.source._client()

        async def no_ari(cert: Any) -> None:
            raise ACMEError("renewalInfo: HTTP 500")

        client.renewal_window = no_ari  # type: ignore[method-assign]
        h.clock.advance(0)
        self.assertEqual(h.ca.orders, 1)
        self.issued(h)

    # --- failures ----------------------------------------------------------------------------

    def test_backoff_doubles_up_to_the_cap(self) -> None:
        for at in (0.0, 1.0):
            h = Harness(self, jitter=at)
            h.fail_at = {"register": ACMEError("HTTP 503: down")}
            h.start()
            delays = [h.delay()]
            for _ in range(10):
                h.run_next()
                delays.append(h.delay())
            backoff = [min(FIRST_BACKOFF * 2**i, MAX_BACKOFF) for i in range(11)]
            expected = [min(b * (1 + 0.1 * at), MAX_BACKOFF) for b in backoff]
            for got, want in zip(delays, expected, strict=True):
                self.assertAlmostEqual(got, want, places=6)
            self.assertEqual(delays[-1], MAX_BACKOFF)
            self.assertEqual(h.source.failures, 11)
            self.assertEqual(h.source.last_error, "HTTP 503: down")

    def test_success_resets_the_backoff(self) -> None:
        h = Harness(self)
        h.fail_at = {"register": ACMEError("down")}
        h.start()
        h.run_next()
        self.assertEqual(h.delay(), 2 * FIRST_BACKOFF)
        h.client.fail_at = {}
        h.run_next()
        self.issued(h)
        self.assertEqual(h.delay(), CHECK_EVERY)
        self.assertEqual(h.source.failures, 0)
        self.patch(issuer, "_now", lambda: utcnow() + 70 * DAY)
        h.client.fail_at = {"new_order": ACMEError("down again")}
        h.run_next()
        self.assertEqual(h.delay(), FIRST_BACKOFF, "backoff starts over")

    def test_retry_after_is_honoured(self) -> None:
        h = Harness(self)
        h.fail_at = {"new_order": ACMEError("rate limited", status=429, retry_after=7200)}
        h.start()
        self.assertEqual(h.delay(), 7200)
        self.assertEqual(h.source.status()["next_check_in"], 7200)
        # a Retry-After shorter than the backoff does not shorten it
        h.client.fail_at = {"new_order": ACMEError("slow down", status=429, retry_after=5)}
        h.run_next()
        self.assertEqual(h.delay(), 2 * FIRST_BACKOFF)
        # nor does the cap apply to what the server asks for (rate limits last days)
        h.client.fail_at = {"new_order": ACMEError("weekly limit", status=429, retry_after=3e5)}
        h.run_next()
        self.assertEqual(h.delay(), 3e5)

    def test_loud_when_expiring_within_a_week(self) -> None:
        logged = Logged(self)
        h = Harness(self)
        h.ca.store_file(h.pem, [NAME], age=87 * DAY, lifetime=LIFETIME)  # 3 days left
        h.fail_at = {"new_order": ACMEError("HTTP 503: maintenance")}
        h.start()
        (error,) = logged.at(LogLevel.error)
        self.assertIn(NAME, error)
        self.assertIn("could not be renewed", error)
        self.assertIn("HTTP 503: maintenance", error)
        assert h.source.current is not None
        self.assertIn(h.source.current.not_after.isoformat(), error)
        self.assertIn("retrying in 60 s", error)

    def test_only_a_warning_while_far_from_expiry(self) -> None:
        logged = Logged(self)
        h = Harness(self)
        h.ca.store_file(h.pem, [NAME], age=70 * DAY, lifetime=LIFETIME)  # due, 20 days left
        h.fail_at = {"new_order": ACMEError("HTTP 503: maintenance")}
        h.start()
        self.assertEqual(logged.at(LogLevel.error), [])
        (warning,) = logged.at(LogLevel.warn)
        self.assertIn("HTTP 503: maintenance", warning)

    def test_loud_without_any_certificate(self) -> None:
        logged = Logged(self)
        h = Harness(self)
        h.fail_at = {"register": ACMEError("GET https://acme.example.test/dir: refused")}
        h.start()
        (error,) = logged.at(LogLevel.error)
        self.assertIn("could not be obtained", error)
        self.assertIn("self-signed", error)

    def test_a_failure_never_replaces_the_certificate(self) -> None:
        failures: list[tuple[str, Any]] = [
            ("new_order", ACMEError("HTTP 503")),
            ("validation", "invalid"),
            ("no challenge", ["http-01"]),
            ("responder", ChallengeError("hook set failed with status 1: no token")),
            ("finalize", ACMEError("badCSR")),
            ("unusable chain", b"-----BEGIN CERTIFICATE-----\nnot base64\n"),
            ("wrong key", None),
        ]
        for what, how in failures:
            h = Harness(self)
            before = h.ca.store_file(h.pem, [NAME], age=70 * DAY, lifetime=LIFETIME)
            h.source.start()
            current = h.source.current
            client = h.source._client()
            if what in ("new_order", "finalize"):
                client.fail_at = {what: how}
            elif what == "validation":
                client.validation = how
            elif what == "no challenge":
                client.challenge_types = how
            elif what == "responder":
                h.responder.fail_start = how
            elif what == "unusable chain":
                client.chain_override = how
            else:  # a chain for another key
                other = ec.generate_private_key(ec.SECP256R1())
                client.chain_override = h.ca.chain_pem(h.ca.leaf(other.public_key(), [NAME]))
            h.clock.advance(0)
            self.assertEqual(h.source.failures, 1, what)
            self.assertIsNotNone(h.source.last_error, what)
            self.assertIs(h.source.current, current, what)
            self.assertIs(h.store.lookup(NAME), current, what)
            self.assertEqual(h.pem.read_bytes(), before, what)
            self.assertEqual(h.delay(), FIRST_BACKOFF, what)

    def test_failure_messages(self) -> None:
        h = Harness(self)
        h.source.start()
        h.source._client().validation = "invalid"  # type: ignore[attr-defined]
        h.clock.advance(0)
        self.assertEqual(
            h.source.last_error,
            f"tls-alpn-01 validation of {NAME} failed: Failed to connect to {NAME}:443 ("
            + issuer.LIKELY_CAUSE["tls-alpn-01"].format(name=NAME)
            + ")",
        )
        # the challenge answer is removed after a failed validation too
        self.assertEqual([a for a, _, _ in h.responder.calls], ["start", "stop"])

        h2 = Harness(self)
        h2.source.start()
        h2.source._client().challenge_types = ["http-01", "dns-01"]  # type: ignore[attr-defined]
        h2.clock.advance(0)
        self.assertEqual(
            h2.source.last_error,
            f"the server offers no tls-alpn-01 challenge for {NAME} (http-01, dns-01)",
        )

    # --- files -------------------------------------------------------------------------------

    def test_files_are_private_and_reused_across_restarts(self) -> None:
        h = Harness(self)
        h.start()
        first = fingerprint(self.issued(h))
        acme_dir = h.folder / "acme"
        self.assertEqual(acme_dir.stat().st_mode & 0o777, 0o700)
        self.assertEqual(h.pem.stat().st_mode & 0o777, 0o600)
        account = acme_dir / "account.key"
        self.assertEqual(account.stat().st_mode & 0o777, 0o600)
        account_pem = account.read_bytes()
        self.assertEqual(len(h.ca.accounts), 1)
        self.assertEqual(h.client.calls.count("register"), 1)
        h.source.stop()

        # a restart: the stored certificate is served at once, nothing is ordered
        again = Harness(self, folder=h.folder, ca=h.ca)
        again.start()
        self.assertEqual(fingerprint(again.source.current), first)
        assert again.source.current is not None
        self.assertTrue(again.source.current.source.startswith("acme "))
        self.assertIs(again.store.lookup(NAME), again.source.current)
        self.assertEqual(h.ca.orders, 1)
        # with the same account key, so the server still knows one account
        self.assertEqual(
            again.client.account_key.private_numbers(), h.client.account_key.private_numbers()
        )
        self.assertEqual(account.read_bytes(), account_pem)
        self.patch(issuer, "_now", lambda: utcnow() + 70 * DAY)
        again.run_next()
        self.issued(again)
        self.assertEqual(h.ca.orders, 2)
        self.assertEqual(len(h.ca.accounts), 1, "the account was created once")

    def test_wildcard_first_name_file(self) -> None:
        h = Harness(self, names=["*.apps.example.test", NAME])
        h.responder.challenge_type = "dns-01"
        h.start()
        self.issued(h)
        self.assertEqual(h.pem.name, "_wildcard_.apps.example.test.pem")
        self.assertTrue(h.pem.exists())
        self.assertIs(h.store.lookup("x.apps.example.test"), h.source.current)

    def test_an_unreadable_stored_file_means_a_new_certificate(self) -> None:
        h = Harness(self)
        write_private(h.pem, b"garbage")
        h.source.start()
        serving = h.store.lookup(NAME)
        assert serving is not None
        self.assertTrue(serving.source.startswith("self-signed"))
        h.clock.advance(0)
        self.issued(h)

    # --- bugs --------------------------------------------------------------------------------

    def test_stop_during_a_check_leaves_nothing_scheduled(self) -> None:
        """Was a bug: stop() cancels only the timer; a check in flight (waiting on the ACME server)
        schedules the next check when it ends, after the service stopped, so the node keeps
        ordering certificates after stopService and the reactor is left with a DelayedCall."""
        h = Harness(self)
        h.source.start()
        gate: defer.Deferred[None] = defer.Deferred()
        h.source._client().pending["new_order"] = gate  # type: ignore[attr-defined]
        h.clock.advance(0)
        self.assertEqual(h.clock.getDelayedCalls(), [], "the check is waiting on the server")
        h.source.stop()
        gate.callback(None)
        self.assertEqual(h.clock.getDelayedCalls(), [], "a check was scheduled after stop()")

    def test_an_unexpected_error_is_retried(self) -> None:
        """An unexpected error (a bug, a malformed answer that slips past the parser) is logged
        with its traceback and retried with backoff like any failure; it must never end
        renewal for good. (Before the fix it escaped check(): no retry was ever scheduled.)"""
        h = Harness(self)
        h.fail_at = {"new_order": TypeError("Object of type Identifier is not JSON serializable")}
        h.source.start()
        h.clock.advance(0)
        running = h.source._running
        if running is not None:
            running.addErrback(lambda f: None)  # keep trial's unhandled-error check quiet
        self.assertEqual(h.source.failures, 1)
        self.assertIn("not JSON serializable", h.source.last_error or "")
        self.assertEqual(h.delay(), FIRST_BACKOFF)
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)  # logged with traceback

    def test_a_stored_certificate_missing_a_name_is_replaced(self) -> None:
        """A stored <name>.pem that no longer covers every configured hostname (a name added
        to node.ini) is replaced at once, not at 2/3 of its lifetime."""
        h = Harness(self, names=[NAME, OTHER])
        h.ca.store_file(h.pem, [NAME], age=DAY, lifetime=LIFETIME)
        h.start()
        self.assertEqual(h.ca.orders, 1, "no certificate ordered for the new name")
        self.assertEqual(sorted(self.issued(h).names), [NAME, OTHER])
