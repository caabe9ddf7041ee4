"""OpenID Connect for a policy: the authorization code flow with PKCE and a nonce, discovery and
JWKS fetched from the issuer, the ID token verified by joserfc (signature by the issuer's keys,
iss, aud, exp, iat, nonce), and a session kept in the browser as a cookie.

The session cookie (``__Host-funnel-tw-NAME``) and the short-lived login cookie that carries
state, nonce and PKCE verifier through the provider are JWE (``dir``, A256GCM): encrypted and
authenticated under a key in state-dir (0600), so sessions survive restarts and a changed or
forged cookie is simply not one. Both are ``Secure; HttpOnly; SameSite=Lax; Path=/``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import secrets
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from joserfc import jwe, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, OctKey
from twisted.internet import defer
from twisted.web import client
from twisted.web.http_headers import Headers

from ...config.access import read_secret_text
from ...config.model import AccessPolicy
from .forward import _Collect
from .policy import Identity

__all__ = [
    "CALLBACK",
    "LOGIN_COOKIE",
    "LOGOUT",
    "LoginError",
    "OIDCClient",
    "load_session_key",
    "session_cookie",
]

CALLBACK = "/.funnel-tw/oidc/callback"
LOGOUT = "/.funnel-tw/oidc/logout"
LOGIN_COOKIE = "__Host-funnel-tw-login"
LOGIN_LIFETIME = 600  # seconds to complete a login at the provider
KEY_FILE = "access-session.key"
TIMEOUT = 10.0
_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]
_JWE = {"alg": "dir", "enc": "A256GCM"}
MAX_COOKIE = 4096
SESSION_CACHE = 1024


class LoginError(Exception):
    """A login that cannot be completed; ``reason`` is the counter's name."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


def load_session_key(state_dir: Path) -> OctKey:
    """The 256-bit cookie key, made on first use (0600, refused if others can read it)."""
    path = state_dir / KEY_FILE
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.urlsafe_b64encode(os.urandom(32)).decode() + "\n")
    text = read_secret_text(path)
    raw = base64.urlsafe_b64decode(text)
    if len(raw) != 32:
        raise ValueError(f"{path}: not a 32-byte key")
    return OctKey.import_key(raw)


def session_cookie(policy: str) -> str:
    return f"__Host-funnel-tw-{policy}"


def cookie_header(name: str, value: str, max_age: int) -> bytes:
    """Set-Cookie for a node cookie; ``max_age`` 0 deletes it (with a past Expires too, for
    clients that only know Expires)."""
    gone = "; Expires=Thu, 01 Jan 1970 00:00:00 GMT" if max_age <= 0 else ""
    return (
        f"{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}{gone}".encode()
    )


def seal(key: OctKey, payload: dict[str, Any]) -> str:
    return jwe.encrypt_compact(_JWE, json.dumps(payload, separators=(",", ":")), key)


def unseal(key: OctKey, value: str | None) -> dict[str, Any] | None:
    """The payload of a cookie we made, or None for anything else (tampered, foreign, junk)."""
    if not value or len(value) > MAX_COOKIE:
        return None
    try:
        plain = jwe.decrypt_compact(value, key, algorithms=["dir", "A256GCM"]).plaintext
        payload = json.loads(plain or b"")
    except (JoseError, ValueError, TypeError):
        return None
    return payload if isinstance(payload, dict) else None


def allowed(patterns: tuple[str, ...], email: str) -> bool:
    """oidc-allow: an exact address, or ``*@domain``."""
    email = email.lower()
    domain = email.rpartition("@")[2]
    return email in patterns or f"*@{domain}" in patterns


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@attrs.frozen
class Login:
    """What the login cookie carries through the provider."""

    location: str  # the provider's authorize URL to redirect to
    cookie: str


class OIDCClient:
    """One policy's relying party."""

    def __init__(
        self,
        config: AccessPolicy,
        key: OctKey,
        reactor: Any,
        now: Callable[[], float] = time.time,
    ) -> None:
        assert config.oidc_issuer is not None and config.oidc_client_id is not None
        self.config = config
        self.issuer = config.oidc_issuer
        self.client_id = config.oidc_client_id
        self.secret = (
            read_secret_text(config.oidc_client_secret_file)
            if config.oidc_client_secret_file
            else None
        )
        self.key = key
        self.reactor = reactor
        self.now = now
        self.agent = client.Agent(reactor, connectTimeout=TIMEOUT)
        self._sessions: OrderedDict[str, dict[str, Any]] = OrderedDict()  # verified cookies
        self._metadata: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._keys_fetched = 0.0

    # --- sessions (synchronous: every request of a logged-in browser) -------------------

    def session(self, cookie: str | None) -> Identity | None:
        if not cookie:
            return None
        payload = self._sessions.get(cookie)
        if payload is not None:
            self._sessions.move_to_end(cookie)
        else:
            payload = unseal(self.key, cookie)
            if payload is None or payload.get("p") != self.config.name:
                return None
            # decrypting costs ~100 us; a browser sends the same cookie with every request
            self._sessions[cookie] = payload
            while len(self._sessions) > SESSION_CACHE:
                self._sessions.popitem(last=False)
        if not isinstance(payload.get("x"), int) or payload["x"] <= self.now():
            return None
        email = payload.get("e")
        if not isinstance(email, str) or not allowed(self.config.oidc_allow, email):
            return None  # oidc-allow changed since: the session no longer admits
        name = payload.get("n") if isinstance(payload.get("n"), str) else None
        return Identity(email, email=email, name=name)

    # --- the provider --------------------------------------------------------------------

    async def _get_json(self, url: str) -> Any:
        return await self._json(self.agent.request(b"GET", url.encode(), Headers()))

    async def _json(self, d: defer.Deferred[Any]) -> Any:
        timer = self.reactor.callLater(TIMEOUT, d.cancel)
        try:
            response = await d
            done: defer.Deferred[bytes] = defer.Deferred()
            response.deliverBody(_Collect(done))
            body = await done
        finally:
            if timer.active():
                timer.cancel()
        if response.code != 200:
            detail = body[:200].decode("utf-8", "replace")
            raise LoginError("oidc_provider_error", f"{response.code} from the provider: {detail}")
        return json.loads(body)

    async def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            found = await self._get_json(self.issuer + "/.well-known/openid-configuration")
            if not isinstance(found, dict) or found.get("issuer", "").rstrip("/") != self.issuer:
                raise LoginError("oidc_provider_error", "discovery names another issuer")
            for field in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(found.get(field), str):
                    raise LoginError("oidc_provider_error", f"discovery has no {field}")
            self._metadata = found
        return self._metadata

    async def keys(self, refresh: bool = False) -> KeySet:
        # a token signed with a key we do not know: fetch again, at most once a minute
        if self._keys is None or (refresh and self.now() - self._keys_fetched > 60):
            meta = await self.metadata()
            self._keys = KeySet.import_key_set(await self._get_json(meta["jwks_uri"]))
            self._keys_fetched = self.now()
        return self._keys

    async def start(self, redirect_uri: str, return_to: str) -> Login:
        meta = await self.metadata()
        state, nonce = _b64(os.urandom(24)), _b64(os.urandom(24))
        verifier = _b64(os.urandom(48))  # RFC 7636: 43 to 128 characters
        challenge = _b64(hashlib.sha256(verifier.encode()).digest())
        query = urllib.parse.urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": redirect_uri,
                "scope": "openid email profile",
                "state": state,
                "nonce": nonce,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        endpoint = meta["authorization_endpoint"]
        location = endpoint + ("&" if "?" in endpoint else "?") + query
        cookie = seal(
            self.key,
            {
                "p": self.config.name,
                "s": state,
                "o": nonce,
                "v": verifier,
                "r": return_to,
                "u": redirect_uri,
                "x": int(self.now()) + LOGIN_LIFETIME,
            },
        )
        return Login(location, cookie)

    async def finish(self, login: dict[str, Any], code: str) -> tuple[Identity, str]:
        """Exchange the code, verify the ID token; (identity, session cookie value)."""
        meta = await self.metadata()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": login["u"],
            "code_verifier": login["v"],
        }
        headers = Headers({b"content-type": [b"application/x-www-form-urlencoded"]})
        if self.secret is not None:
            pair = f"{urllib.parse.quote(self.client_id)}:{urllib.parse.quote(self.secret)}"
            headers.setRawHeaders(b"authorization", [b"Basic " + base64.b64encode(pair.encode())])
        else:
            form["client_id"] = self.client_id
        body = client.FileBodyProducer(io.BytesIO(urllib.parse.urlencode(form).encode()))
        answer = await self._json(
            self.agent.request(b"POST", meta["token_endpoint"].encode(), headers, body)
        )
        id_token = answer.get("id_token") if isinstance(answer, dict) else None
        if not isinstance(id_token, str):
            raise LoginError("oidc_no_id_token")
        claims = await self._verify(id_token, login["o"])
        email = claims.get("email")
        if not isinstance(email, str) or claims.get("email_verified") is not True:
            raise LoginError("oidc_email_unverified")
        if not allowed(self.config.oidc_allow, email):
            raise LoginError("oidc_not_allowed", email)
        name = claims.get("name") if isinstance(claims.get("name"), str) else None
        lifetime = int(self.config.oidc_session_lifetime)
        session = seal(
            self.key,
            {"p": self.config.name, "e": email, "n": name, "x": int(self.now()) + lifetime},
        )
        return Identity(email, email=email, name=name), session

    async def _verify(self, id_token: str, nonce: str) -> dict[str, Any]:
        registry = jwt.JWTClaimsRegistry(
            now=lambda: int(self.now()),
            leeway=60,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.client_id},
            exp={"essential": True},
            iat={"essential": True},
            nonce={"essential": True, "value": nonce},
            sub={"essential": True},
        )
        for refresh in (False, True):
            try:
                token = jwt.decode(id_token, await self.keys(refresh), algorithms=_ALGORITHMS)
                break
            except JoseError as e:
                if refresh:
                    raise LoginError("oidc_bad_id_token", str(e)) from None
            except ValueError as e:
                raise LoginError("oidc_bad_id_token", str(e)) from None
        try:
            registry.validate(token.claims)
        except JoseError as e:
            raise LoginError("oidc_bad_id_token", str(e)) from None
        azp = token.claims.get("azp")
        if azp is not None and azp != self.client_id:
            raise LoginError("oidc_bad_id_token", "azp names another client")
        return dict(token.claims)


def safe_return(path: str) -> str:
    """Where to go after the login: a path on this host, never another site."""
    if not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path


def state_matches(login: dict[str, Any], state: str) -> bool:
    expected = login.get("s")
    return isinstance(expected, str) and secrets.compare_digest(expected, state)
