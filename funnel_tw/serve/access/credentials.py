"""Basic and bearer credentials: parsing the Authorization header (bounded, strict) and
checking it against an htpasswd file or a bearer-tokens file.

bcrypt is slow on purpose (milliseconds to a tenth of a second a check), so a verified
basic credential is remembered in a bounded LRU keyed by a keyed hash of the header: a
browser sends the same header with every request, and only the first one pays.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections import OrderedDict
from typing import Literal

import attrs
import bcrypt

from . import shacrypt

__all__ = [
    "MAX_AUTHORIZATION",
    "BasicCredential",
    "BearerCredential",
    "Credentials",
    "parse_authorization",
]

MAX_AUTHORIZATION = 4096
"""Bytes of an Authorization header looked at; a longer one is refused unparsed."""
CACHE_SIZE = 1024


@attrs.frozen
class BasicCredential:
    user: str
    password: bytes = attrs.field(repr=False)
    header: bytes = attrs.field(repr=False)


@attrs.frozen
class BearerCredential:
    token: bytes = attrs.field(repr=False)


Parsed = BasicCredential | BearerCredential | Literal["malformed", "oversized", "other"] | None


def parse_authorization(value: bytes | None) -> Parsed:
    """The credential an Authorization header carries; "malformed"/"oversized" for a bad
    one, "other" for another scheme, None without the header."""
    if value is None:
        return None
    if len(value) > MAX_AUTHORIZATION:
        return "oversized"
    scheme, _, rest = value.strip().partition(b" ")
    rest = rest.strip()
    if scheme.lower() == b"basic":
        try:
            decoded = base64.b64decode(rest, validate=True)
        except (binascii.Error, ValueError):
            return "malformed"
        user, colon, password = decoded.partition(b":")
        if not colon or not user:
            return "malformed"
        try:
            name = user.decode("utf-8")
        except UnicodeDecodeError:
            return "malformed"
        return BasicCredential(name, password, value)
    if scheme.lower() == b"bearer":
        if not rest or b" " in rest:
            return "malformed"
        return BearerCredential(rest)
    return "other"


def check_password(password: bytes, hashed: str) -> bool:
    """bcrypt ($2y$/$2b$/$2a$: the first 72 bytes count, as Apache's) or SHA-crypt."""
    if hashed.startswith("$2"):
        # the bcrypt package knows $2b$ and $2a$; Apache writes $2y$, the same algorithm
        normalized = "$2b$" + hashed[4:] if hashed.startswith("$2y$") else hashed
        try:
            return bcrypt.checkpw(password[:72], normalized.encode())
        except ValueError:
            return False
    return shacrypt.verify(password, hashed)


class Credentials:
    """The users of an htpasswd file and the tokens of a bearer-tokens file of one policy."""

    def __init__(
        self, users: dict[str, str] | None = None, tokens: dict[bytes, str] | None = None
    ) -> None:
        self.users = users  # None: the policy takes no basic credentials
        self.tokens = tokens
        self._key = os.urandom(32)
        self._verified: OrderedDict[bytes, str] = OrderedDict()

    def _cache_key(self, header: bytes) -> bytes:
        return hmac.new(self._key, header, hashlib.sha256).digest()

    def cached(self, credential: BasicCredential) -> str | None:
        """The user, if this exact header was verified before (and the user still exists)."""
        key = self._cache_key(credential.header)
        user = self._verified.get(key)
        if user is None or self.users is None or user not in self.users:
            return None
        self._verified.move_to_end(key)
        return user

    def verify_basic(self, credential: BasicCredential) -> str | None:
        """The user if the password matches (slow: run it off the reactor thread)."""
        if self.users is None:
            return None
        hashed = self.users.get(credential.user)
        if hashed is None:
            # as slow as a real check, so a wrong user name cannot be told from a wrong password
            if self.users:
                check_password(credential.password, next(iter(self.users.values())))
            return None
        if not check_password(credential.password, hashed):
            return None
        return credential.user

    def remember(self, credential: BasicCredential, user: str) -> None:
        self._verified[self._cache_key(credential.header)] = user
        while len(self._verified) > CACHE_SIZE:
            self._verified.popitem(last=False)

    def verify_bearer(self, credential: BearerCredential) -> str | None:
        """The token's NAME: its SHA-256 compared to each listed one in constant time."""
        if self.tokens is None:
            return None
        digest = hashlib.sha256(credential.token).digest()
        found = None
        for known, name in self.tokens.items():
            if hmac.compare_digest(digest, known):
                found = name
        return found
