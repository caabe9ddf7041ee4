"""The enrollment token (daemon/enroll.py): its format, the hash the relay keeps, the pin, and
a parser that only ever says "not a token" to outside bytes."""

from __future__ import annotations

import base64
import contextlib
import datetime
import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.daemon.enroll import (
    MAX_TOKEN_CHARS,
    TOKEN_PREFIX,
    Token,
    TokenError,
    parse_token,
    pin_matches,
    secret_hash,
    spki_pin,
)
from funnel_tw.tls.signing import sign_certificate

HOSTS = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}", fullmatch=True),
    st.ip_addresses().map(str),
)


def token(**kw: object) -> Token:
    values: dict[str, object] = {
        "secret": bytes(32),
        "pin": bytes(range(32)),
        "host": "relay.example.net",
        "port": 41643,
    }
    values.update(kw)
    return Token(**values)  # type: ignore[arg-type]


def raw(body: bytes) -> str:
    return TOKEN_PREFIX + base64.urlsafe_b64encode(body).rstrip(b"=").decode()


class TokenFormatTests(SynchronousTestCase):
    def test_one_opaque_string(self) -> None:
        text = token().text()
        self.assertTrue(text.startswith("ftw1."))
        self.assertNotIn("=", text)
        self.assertTrue(all(c.isalnum() or c in "-_." for c in text))
        self.assertEqual(parse_token(f"  {text}\n"), token())

    def test_ipv6_address(self) -> None:
        t = token(host="2001:db8::1", port=443)
        self.assertEqual(parse_token(t.text()), t)

    @given(
        st.binary(min_size=32, max_size=32),
        st.binary(min_size=32, max_size=32),
        HOSTS,
        st.integers(1, 65535),
    )
    def test_round_trip(self, secret: bytes, pin: bytes, host: str, port: int) -> None:
        t = Token(secret=secret, pin=pin, host=host, port=port)
        self.assertEqual(parse_token(t.text()), t)
        self.assertLessEqual(len(t.text()), MAX_TOKEN_CHARS)

    def test_what_is_wrong_is_said(self) -> None:
        cases = {
            "": "does not start with 'ftw1.'",
            "ftw2.AAAA": "does not start with 'ftw1.'",
            "ftw1.": "too short",
            "ftw1.!!!!": "not base64url",
            "ftw1.AAB=": "not base64url",
            raw(bytes(64) + b"host"): "not HOST:PORT",
            raw(bytes(64) + b"host:0"): "no valid port",
            raw(bytes(64) + b"host:99999"): "no valid port",
            raw(bytes(64) + b"ho st:80"): "not HOST:PORT",
            raw(bytes(64) + b"\xff:80"): "not text",
            "ftw1." + "A" * MAX_TOKEN_CHARS: "too long",
        }
        for text, why in cases.items():
            with self.subTest(text=text[:40]):
                error = self.assertRaises(TokenError, parse_token, text)
                self.assertIn(why, str(error))
                self.assertTrue(str(error).startswith("not a funnel-tw token"))

    @given(st.text(max_size=600))
    def test_outside_text_is_a_token_or_a_token_error(self, text: str) -> None:
        with contextlib.suppress(TokenError):
            parse_token(text)  # anything else raised fails the test

    @given(st.binary(max_size=600))
    def test_outside_bytes_after_the_prefix(self, body: bytes) -> None:
        try:
            t = parse_token(raw(body))
        except TokenError:
            return
        self.assertEqual(t.secret + t.pin, body[:64])
        self.assertTrue(0 < t.port < 65536)


class SecretAndPinTests(SynchronousTestCase):
    def test_the_relay_keeps_a_hash(self) -> None:
        secret = os.urandom(32)
        digest = secret_hash(secret)
        self.assertEqual(digest, secret_hash(secret))
        self.assertEqual(len(digest), 64)
        self.assertNotIn(secret.hex(), digest)
        self.assertNotEqual(digest, secret_hash(os.urandom(32)))

    def test_pin_is_of_the_public_key(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)

        def cert() -> bytes:
            c = sign_certificate(
                "x",
                key.public_key(),
                key,
                not_before=now,
                not_after=now + datetime.timedelta(days=1),
            )
            return c.public_bytes(serialization.Encoding.DER)

        first, renewed = cert(), cert()
        self.assertNotEqual(first, renewed)
        self.assertEqual(spki_pin(first), spki_pin(renewed))  # renewal keeps the pin
        t = token(pin=spki_pin(first))
        self.assertTrue(pin_matches(t, renewed))
        self.assertFalse(pin_matches(token(), first))
        self.assertFalse(pin_matches(t, b"garbage"))
