"""One policy's decision, without Twisted: what the guard asks, in the order of docs/access.md.

Each step returns None to go on or a `Refusal` (status, reason counted and logged, headers).
Credentials that need a slow check (an uncached bcrypt) come back as `Pending`: the caller runs
`Credentials.verify_basic` off the reactor thread and then `Policy.basic_done`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
from cryptography import x509

from ...config.access import read_bearer_tokens, read_htpasswd
from ...config.model import AccessPolicy
from .addresses import AddressFilter
from .certificates import ClientCA, common_name
from .credentials import BasicCredential, BearerCredential, Credentials, parse_authorization
from .limits import RateLimiter

__all__ = ["Identity", "Pending", "Policy", "Refusal"]


@attrs.frozen
class Refusal:
    status: int
    reason: str  # the counter's name and the log's why
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes | None = None  # None: a short text of the status


@attrs.frozen
class Identity:
    """Who passed, as the backend learns it (Remote-User, -Email, -Name, -Groups)."""

    user: str
    email: str | None = None
    name: str | None = None
    groups: str | None = None

    def headers(self) -> dict[bytes, bytes]:
        out = {b"Remote-User": self.user}
        for header, value in (
            (b"Remote-Email", self.email),
            (b"Remote-Name", self.name),
            (b"Remote-Groups", self.groups),
        ):
            if value is not None:
                out[header] = value
        # header values are bytes; anything outside printable ASCII is escaped, never raw
        return {k: v.encode("ascii", "backslashreplace") for k, v in out.items() if v}


@attrs.frozen
class Pending:
    """A basic credential to verify slowly."""

    credential: BasicCredential


class Policy:
    """The state of one [access NAME]: address filter, rate buckets, users and tokens."""

    def __init__(
        self, config: AccessPolicy, on_error: Callable[[str], None] = lambda why: None
    ) -> None:
        self.config = config
        self.name = config.name
        self.addresses = AddressFilter(config.allow, config.deny, config.allow_file, on_error)
        self.rate = (
            RateLimiter(config.rate_limit, config.rate_burst or 1)
            if config.rate_limit is not None
            else None
        )
        users = read_htpasswd(config.basic_auth_file) if config.basic_auth_file else None
        tokens = (
            read_bearer_tokens(config.bearer_tokens_file) if config.bearer_tokens_file else None
        )
        self.credentials = Credentials(users, tokens)
        self.client_ca = ClientCA(config.client_ca_file) if config.client_ca_file else None

    def check_certificate(
        self, leaf: x509.Certificate | None, chain: Sequence[x509.Certificate]
    ) -> Identity | Refusal | None:
        """client-ca-file: a certificate from one of its CAs is required (403 otherwise);
        its subject CN becomes Remote-User. None: the policy asks for no certificate."""
        if self.client_ca is None:
            return None
        if leaf is None:
            return Refusal(403, "client_certificate_missing")
        why = self.client_ca.verify(leaf, chain)
        if why is not None:
            return Refusal(403, "client_certificate_invalid")
        name = common_name(leaf)
        if not name:
            return Refusal(403, "client_certificate_without_cn")
        return Identity(name)

    @property
    def wants_credentials(self) -> bool:
        return self.credentials.users is not None or self.credentials.tokens is not None

    def check_connection(self, ip: str, now: float) -> Refusal | None:
        """deny/allow, then the rate limit: all a non-HTTP port applies, and an HTTP
        request's first two steps (every request counts, so guessing passwords is limited)."""
        why = self.addresses.check(ip, now)
        if why is not None:
            return Refusal(403, f"address_{why}")
        if self.rate is not None:
            wait = self.rate.take(ip, now)
            if wait is not None:
                retry = str(RateLimiter.retry_after(wait)).encode()
                return Refusal(429, "rate_limited", ((b"Retry-After", retry),))
        return None

    def check_body(self, length: int | None) -> Refusal | None:
        """A declared body over max-request-body (a chunked one is counted as it arrives)."""
        limit = self.config.max_request_body
        if limit is not None and length is not None and length > limit:
            return Refusal(413, "body_too_large")
        return None

    def challenge(self, reason: str) -> Refusal:
        """401 with a WWW-Authenticate for each credential kind the policy takes."""
        realm = self.name.replace('"', "").encode()
        headers = []
        if self.credentials.users is not None:
            headers.append((b"WWW-Authenticate", b'Basic realm="%s", charset="UTF-8"' % realm))
        if self.credentials.tokens is not None:
            headers.append((b"WWW-Authenticate", b'Bearer realm="%s"' % realm))
        return Refusal(401, reason, tuple(headers))

    def check_credentials(self, authorization: bytes | None) -> Identity | Pending | Refusal:
        """Basic or bearer, whichever the header carries (any one kind the policy takes
        suffices); Pending for a basic credential not verified before."""
        parsed = parse_authorization(authorization)
        if parsed is None:
            return self.challenge("no_credentials")
        if isinstance(parsed, str):
            return self.challenge(f"credentials_{parsed}")
        if isinstance(parsed, BearerCredential):
            name = self.credentials.verify_bearer(parsed)
            return Identity(name) if name is not None else self.challenge("bad_token")
        if self.credentials.users is None:
            return self.challenge("credentials_other")
        user = self.credentials.cached(parsed)
        if user is not None:
            return Identity(user)
        return Pending(parsed)

    def basic_done(self, pending: Pending, user: str | None) -> Identity | Refusal:
        if user is None:
            return self.challenge("bad_password")
        self.credentials.remember(pending.credential, user)
        return Identity(user)
