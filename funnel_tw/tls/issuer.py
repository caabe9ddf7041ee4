"""``[tls] source = acme``: get and renew certificates for the node's hostnames.

At start the node serves what it has: the stored ACME certificate, else a self-signed one, so
TLS works even while the ACME server is down. Then it checks hourly (with jitter) and renews
inside the server's ARI window when offered, else once two thirds of the lifetime are gone.
A failure keeps the current certificate, backs off exponentially (honouring Retry-After and
rate-limit answers) and is loud in the log once the certificate is within a week of expiry.
A new certificate replaces the old one for new handshakes; open connections are untouched.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from acme import messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from .acme import ACMEClient, ACMEError, key_authorization, make_csr, status_of
from .challenges import ChallengeError, IChallengeResponder
from .pem import PEMError, key_pem, load_combined, load_key_and_chain, new_key, write_private
from .store import Certificate, CertificateStore, name_matches

log = Logger()

CHECK_EVERY = 3600.0
CHECK_JITTER = 300.0
FIRST_BACKOFF = 60.0
MAX_BACKOFF = 6 * 3600.0
LOUD_BEFORE = datetime.timedelta(days=7)
REACH_POLL = 1.0  # seconds between two looks for a relay session before a check
REACH_WAIT = 120.0  # then the check goes ahead anyway (and fails loudly if unreachable)
# what an operator should look at when the CA could not validate a name
LIKELY_CAUSE = {
    "tls-alpn-01": "the CA connects to {name}:443 with ALPN acme-tls/1: check that public DNS "
    "for {name} points at the relay, that the relay lists {name} in this node's [node] "
    "hostnames, and that port 443 of the relay is reachable from the internet",
    "dns-01": "the CA looks up the TXT record _acme-challenge.{name}: check that the DNS hook "
    "or plugin sets it in the zone the public DNS serves for {name}",
}


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def renewal_due(
    cert: Certificate,
    now: datetime.datetime,
    window: tuple[datetime.datetime, datetime.datetime] | None,
) -> bool:
    if window is not None:
        return now >= window[0]
    leaf = cert.chain[0]
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    return now >= leaf.not_valid_before_utc + lifetime * 2 / 3


class ACMESource:
    def __init__(
        self,
        *,
        store: CertificateStore,
        names: list[str],
        directory: Path,
        client: ACMEClient | None,
        client_factory: Callable[[ec.EllipticCurvePrivateKey], ACMEClient] | None = None,
        email: str | None,
        responder: IChallengeResponder,
        fallback: Any,
        reactor: Any,
        rng: random.Random | None = None,
        reachable: Callable[[], bool] | None = None,
    ) -> None:
        """``client_factory(account_key)`` builds the client (the key lives in ``directory``).

        ``reachable()`` says whether the CA can reach the node's challenge answers yet (for
        tls-alpn-01: a session with a relay exists); checks wait for it, up to REACH_WAIT.
        """
        self.store = store
        self.names = names
        self.directory = directory
        self.client = client
        self.client_factory = client_factory
        self.email = email
        self.responder = responder
        self.fallback = fallback
        self.reactor = reactor
        self.rng = rng or random.Random()
        self.reachable = reachable
        self._waited = 0.0
        self.current: Certificate | None = None
        self.backoff = FIRST_BACKOFF
        self.failures = 0
        self.last_error: str | None = None
        self.next_check: float | None = None
        self._call: IDelayedCall | None = None
        self._stopped = False
        self._running: defer.Deferred[None] | None = None

    @property
    def path(self) -> Path:
        return self.directory / f"{self.names[0].replace('*', '_wildcard_')}.pem"

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            key, chain = load_combined(self.path)
            self.current = Certificate(key, chain, source=f"acme {self.path}")
            self.store.install(self.current)
        except (OSError, PEMError):
            self.fallback.load()  # serve something while the first certificate is fetched
        self._schedule(0.0)

    def stop(self) -> None:
        self._stopped = True  # a check still waiting on the server schedules nothing more
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self, delay: float) -> None:
        if self._stopped:
            return
        if self._call is not None and self._call.active():
            self._call.cancel()
        self.next_check = self.reactor.seconds() + delay
        self._call = self.reactor.callLater(delay, self._check)

    def _check(self) -> None:
        self._call = None
        if self.reachable is not None and not self.reachable() and self._waited < REACH_WAIT:
            if self._waited == 0:
                log.info(
                    "waiting for a relay session before asking the CA for {names} "
                    "(its validation comes through the relay)",
                    names=", ".join(self.names),
                )
            self._waited += REACH_POLL
            self._schedule(REACH_POLL)
            return
        self._waited = 0.0
        self._running = defer.Deferred.fromCoroutine(self.check())

    # --- the decision ----------------------------------------------------------------------

    async def check(self) -> None:
        """Renew if due; schedule the next check either way."""
        try:
            if await self._due():
                await self.issue()
            self.failures = 0
            self.backoff = FIRST_BACKOFF
            self.last_error = None
            self._schedule(CHECK_EVERY + self.rng.uniform(0, CHECK_JITTER))
        except (ACMEError, ChallengeError, OSError) as e:
            self._failed(e)
        except Exception as e:  # a bug must not end renewal for good: log it and retry
            log.failure("unexpected error while renewing certificates")
            self._failed(e)

    def uncovered(self) -> list[str]:
        """The configured names the current certificate does not cover (all without one)."""
        if self.current is None:
            return list(self.names)
        covered = self.current.names
        return [n for n in self.names if not any(name_matches(c, n) for c in covered)]

    async def _due(self) -> bool:
        if self.current is None:
            return True
        if self.uncovered():
            return True  # a hostname was added since: a new certificate now
        window = None
        try:
            assert self.client is not None or self.client_factory is not None
            window = await self._client().renewal_window(self.current.chain[0])
        except ACMEError:
            pass  # no renewal information: use the lifetime rule
        return renewal_due(self.current, _now(), window)

    def _failed(self, error: Exception) -> None:
        self.failures += 1
        self.last_error = str(error)
        retry_after = getattr(error, "retry_after", None)
        delay = min(self.backoff * (1 + self.rng.uniform(0, 0.1)), MAX_BACKOFF)
        if retry_after is not None:
            delay = max(delay, retry_after)
        self.backoff = min(self.backoff * 2, MAX_BACKOFF)
        expiring = self.current is not None and (self.current.not_after - _now() < LOUD_BEFORE)
        uncovered = self.uncovered()
        if uncovered and self.current is not None:
            # a hostname added since the current certificate: it is not served until this works
            log.error(
                "no certificate for {missing} (configured since the current certificate was "
                "issued): {error}; retrying in {delay:.0f} s",
                missing=", ".join(uncovered),
                error=error,
                delay=delay,
            )
        elif expiring or self.current is None:
            log.error(
                "certificate for {names} could not be {what}: {error}; "
                "{left}; retrying in {delay:.0f} s",
                names=", ".join(self.names),
                what="renewed" if self.current else "obtained",
                error=error,
                left=f"expires {self.current.not_after.isoformat()}"
                if self.current
                else "serving a self-signed certificate meanwhile",
                delay=delay,
            )
        else:
            log.warn(
                "certificate renewal for {names} failed: {error}; retrying in {delay:.0f} s",
                names=", ".join(self.names),
                error=error,
                delay=delay,
            )
        self._schedule(delay)

    # --- issuing ----------------------------------------------------------------------------

    def _account_key(self) -> ec.EllipticCurvePrivateKey:
        path = self.directory / "account.key"
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ACMEError(f"{path} is not an ECDSA key")
            return key
        key = new_key()
        write_private(path, key_pem(key))
        return key

    def _client(self) -> ACMEClient:
        if self.client is None:
            assert self.client_factory is not None
            self.client = self.client_factory(self._account_key())
        return self.client

    async def issue(self) -> Certificate:
        client = self._client()
        if client.account_url is None:
            await client.register(self.email)
        order_url, order = await client.new_order(self.names)
        for authz_url in order.authorizations:
            await self._authorize(client, authz_url)
        order = await client.poll(order_url, messages.Order, {"ready", "valid", "invalid"})
        if status_of(order) == "invalid":
            raise ACMEError(f"order {order_url} became invalid")
        key = new_key()
        if status_of(order) == "ready":
            await client.finalize(order, make_csr(key, self.names))
            order = await client.poll(order_url, messages.Order, {"valid", "invalid"})
        if status_of(order) != "valid" or not order.certificate:
            raise ACMEError(f"order {order_url} did not produce a certificate")
        chain_pem = await client.certificate(order.certificate)
        try:
            _, chain = load_key_and_chain(key_pem(key), chain_pem)
        except PEMError as e:
            raise ACMEError(f"the issued certificate is unusable: {e}") from None
        write_private(self.path, key_pem(key) + chain_pem)
        self.current = Certificate(key, chain, source=f"acme {self.path}")
        self.store.install(self.current)
        log.info(
            "certificate for {names} issued, valid until {until}",
            names=", ".join(self.names),
            until=self.current.not_after.isoformat(),
        )
        return self.current

    async def _authorize(self, client: ACMEClient, url: str) -> None:
        authz = await client.authorization(url)
        if status_of(authz) == "valid":
            return
        name = authz.identifier.value
        wanted = self.responder.challenge_type
        found = None
        for challb in authz.challenges:
            raw = challb.to_partial_json()
            if raw.get("type") == wanted:
                found = raw
        if found is None:
            offered = ", ".join(c.to_partial_json().get("type", "?") for c in authz.challenges)
            raise ACMEError(f"the server offers no {wanted} challenge for {name} ({offered})")
        key_authz = key_authorization(found["token"], client.key)
        await self.responder.start_responding(name, found["token"], key_authz)
        try:
            await client.answer(found["url"])
            authz = await client.poll(url, messages.Authorization, {"valid", "invalid"})
        finally:
            try:
                await self.responder.stop_responding(name, found["token"], key_authz)
            except ChallengeError as e:
                log.warn(
                    "cleaning up the {kind} answer for {name} failed: {error}",
                    kind=wanted,
                    name=name,
                    error=e,
                )
        if status_of(authz) != "valid":
            details = [
                c.to_partial_json().get("error", {}).get("detail", "") for c in authz.challenges
            ]
            raise ACMEError(
                f"{wanted} validation of {name} failed: "
                f"{'; '.join(d for d in details if d) or 'invalid'} "
                f"({LIKELY_CAUSE.get(wanted, 'check the challenge set-up').format(name=name)})"
            )

    def status(self) -> dict[str, Any]:
        return {
            "source": "acme",
            "names": self.names,
            "not_after": self.current.not_after.isoformat() if self.current else None,
            "failures": self.failures,
            "last_error": self.last_error,
            "next_check_in": max(0.0, self.next_check - self.reactor.seconds())
            if self.next_check is not None
            else None,
        }
