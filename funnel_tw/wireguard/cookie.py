"""mac1, mac2 and cookie replies: WireGuard's defence against handshake floods.

The responder side (:class:`CookieChecker`) checks mac1 on every handshake message and, when
under load, demands a valid mac2 made with a cookie bound to the sender's address. The initiator
side (:class:`CookieGenerator`, one per peer) adds both MACs and stores cookies it is sent.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from . import crypto
from .messages import COOKIE_REPLY_SIZE, CookieReply, pack_cookie_reply, unpack_cookie_reply

_LABEL_MAC1 = b"mac1----"
_LABEL_COOKIE = b"cookie--"


def _address_bytes(source: tuple[str, int]) -> bytes:
    return f"{source[0]}|{source[1]}".encode()


class CookieChecker:
    """Validates the MACs on messages sent to us and makes cookie replies."""

    def __init__(
        self,
        local_public: bytes,
        cookie_refresh_time: float = 120.0,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._mac1_key = crypto.hash_(_LABEL_MAC1, local_public)
        self._cookie_key = crypto.hash_(_LABEL_COOKIE, local_public)
        self._refresh = cookie_refresh_time
        self._random = random_bytes
        self._secret = b""
        self._secret_set = float("-inf")

    def check_mac1(self, message: bytes) -> bool:
        end = len(message) - 32
        return crypto.mac(self._mac1_key, message[:end]) == message[end : end + 16]

    def _cookie(self, source: tuple[str, int], now: float) -> bytes | None:
        if now - self._secret_set > self._refresh:
            return None
        return crypto.mac(self._secret, _address_bytes(source))

    def check_mac2(self, message: bytes, source: tuple[str, int], now: float) -> bool:
        cookie = self._cookie(source, now)
        if cookie is None:
            return False
        end = len(message) - 16
        return crypto.mac(cookie, message[:end]) == message[end:]

    def create_reply(
        self, message: bytes, receiver: int, source: tuple[str, int], now: float
    ) -> bytes:
        """A cookie reply to ``message`` (whose mac1 was already checked)."""
        if now - self._secret_set > self._refresh:
            self._secret = self._random(32)
            self._secret_set = now
        cookie = crypto.mac(self._secret, _address_bytes(source))
        end = len(message) - 32
        mac1 = message[end : end + 16]
        nonce = self._random(24)
        sealed = crypto.xaead_seal(self._cookie_key, nonce, cookie, mac1)
        return pack_cookie_reply(CookieReply(receiver, nonce, sealed))


class CookieGenerator:
    """Adds mac1/mac2 to our handshake messages for one peer, remembering cookies it sends us."""

    def __init__(self, remote_public: bytes, cookie_refresh_time: float = 120.0) -> None:
        self._mac1_key = crypto.hash_(_LABEL_MAC1, remote_public)
        self._cookie_key = crypto.hash_(_LABEL_COOKIE, remote_public)
        self._refresh = cookie_refresh_time
        self._last_mac1: bytes | None = None
        self._cookie: bytes | None = None
        self._cookie_set = float("-inf")

    def add_macs(self, message: bytes, now: float) -> bytes:
        """``message`` (without MACs) followed by mac1 and mac2."""
        mac1 = crypto.mac(self._mac1_key, message)
        self._last_mac1 = mac1
        if self._cookie is not None and now - self._cookie_set <= self._refresh:
            mac2 = crypto.mac(self._cookie, message + mac1)
        else:
            self._cookie = None
            mac2 = bytes(16)
        return message + mac1 + mac2

    def consume_reply(self, data: bytes, now: float) -> bool:
        """Store the cookie of a reply to our last message; False if it does not authenticate."""
        if self._last_mac1 is None or len(data) != COOKIE_REPLY_SIZE:
            return False
        reply = unpack_cookie_reply(data)
        try:
            cookie = crypto.xaead_open(self._cookie_key, reply.nonce, reply.cookie, self._last_mac1)
        except crypto.InvalidTag:
            return False
        self._cookie = cookie
        self._cookie_set = now
        return True
