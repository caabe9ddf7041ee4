"""The sans-IO core of access policies: addresses, rate, credentials, SHA-crypt, with fixed
time and htpasswd files made by Apache's htpasswd."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import time
from ipaddress import ip_network
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.config.model import AccessPolicy
from funnel_tw.serve.access import shacrypt
from funnel_tw.serve.access.addresses import RELOAD_EVERY, AddressFilter
from funnel_tw.serve.access.credentials import MAX_AUTHORIZATION, parse_authorization
from funnel_tw.serve.access.limits import RateLimiter, client_key
from funnel_tw.serve.access.policy import Identity, Pending, Policy, Refusal


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


def htpasswd(path: Path, flag: str, user: str, password: str) -> None:
    create = "c" if not path.exists() else ""
    subprocess.run(
        ["htpasswd", f"-b{create}{flag}", str(path), user, password],
        check=True,
        capture_output=True,
    )
    path.chmod(0o600)


class RateLimiterTests(SynchronousTestCase):
    def test_burst_then_rate(self) -> None:
        limiter = RateLimiter(rate=2.0, burst=3)
        self.assertEqual([limiter.take("198.51.100.1", 0.0) for _ in range(3)], [None] * 3)
        self.assertAlmostEqual(limiter.take("198.51.100.1", 0.0), 0.5)
        self.assertIsNone(limiter.take("198.51.100.2", 0.0), "another client has its own bucket")
        self.assertIsNone(limiter.take("198.51.100.1", 0.5))
        self.assertIsNotNone(limiter.take("198.51.100.1", 0.5))
        self.assertIsNone(limiter.take("198.51.100.1", 100.0))
        self.assertEqual(RateLimiter.retry_after(0.01), 1)
        self.assertEqual(RateLimiter.retry_after(2.5), 3)

    def test_refused_attempts_do_not_refill(self) -> None:
        """Hammering while limited keeps the client limited: tokens only grow with time."""
        limiter = RateLimiter(rate=1.0, burst=1)
        limiter.take("10.0.0.1", 0.0)
        for i in range(10):
            self.assertIsNotNone(limiter.take("10.0.0.1", i * 0.05))
        self.assertIsNone(limiter.take("10.0.0.1", 1.5))

    def test_table_is_bounded(self) -> None:
        limiter = RateLimiter(rate=1.0, burst=1, max_clients=100)
        for i in range(10_000):
            limiter.take(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 0.0)
        self.assertEqual(len(limiter.buckets), 100)

    def test_ipv6_by_64(self) -> None:
        self.assertEqual(client_key("2001:db8::1"), client_key("2001:db8::ffff:1"))
        self.assertNotEqual(client_key("2001:db8::1"), client_key("2001:db8:0:1::1"))
        self.assertEqual(client_key("::ffff:192.0.2.1"), "192.0.2.1")


class AddressFilterTests(SynchronousTestCase):
    def test_deny_before_allow(self) -> None:
        f = AddressFilter([ip_network("198.51.100.0/24")], [ip_network("198.51.100.7/32")])
        self.assertIsNone(f.check("198.51.100.1", 0))
        self.assertEqual(f.check("198.51.100.7", 0), "denied")
        self.assertEqual(f.check("203.0.113.1", 0), "not_allowed")
        self.assertEqual(f.check("2001:db8::1", 0), "not_allowed")
        self.assertEqual(f.check("::ffff:198.51.100.7", 0), "denied")
        self.assertEqual(f.check("garbage", 0), "not_allowed")
        self.assertIsNone(AddressFilter([], []).check("203.0.113.1", 0), "no allow: everyone")

    def test_allow_file_reloads(self) -> None:
        path = Path(self.mktemp())
        path.write_text("# hooks\n192.0.2.0/24\n")
        errors: list[str] = []
        f = AddressFilter([], [], path, errors.append)
        self.assertIsNone(f.check("192.0.2.9", 0))
        self.assertEqual(f.check("203.0.113.9", 0), "not_allowed")
        path.write_text("203.0.113.0/24  # moved\n")
        os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
        self.assertIsNone(f.check("192.0.2.9", 1.0), "not looked at before RELOAD_EVERY")
        self.assertIsNone(f.check("203.0.113.9", RELOAD_EVERY + 1))
        self.assertEqual(f.check("192.0.2.9", RELOAD_EVERY + 1), "not_allowed")
        path.write_text("not a network\n")
        os.utime(path, ns=(time.time_ns() + 2 * 10**9, time.time_ns() + 2 * 10**9))
        self.assertIsNone(f.check("203.0.113.9", 3 * RELOAD_EVERY), "the last good list stays")
        self.assertEqual(len(errors), 1)
        self.assertIn("'not a network' is not an IP network", errors[0])


class AuthorizationParseTests(SynchronousTestCase):
    def test_hostile_headers(self) -> None:
        self.assertEqual(parse_authorization(b"Basic " + b"A" * MAX_AUTHORIZATION), "oversized")
        self.assertEqual(parse_authorization(b"Basic !!!notbase64"), "malformed")
        self.assertEqual(parse_authorization(b"Basic " + base64.b64encode(b"nocolon")), "malformed")
        self.assertEqual(parse_authorization(b"Basic " + base64.b64encode(b":pw")), "malformed")
        self.assertEqual(parse_authorization(b"Basic " + base64.b64encode(b"\xff:pw")), "malformed")
        self.assertEqual(parse_authorization(b"Bearer a b"), "malformed")
        self.assertEqual(parse_authorization(b"Digest x"), "other")
        self.assertIsNone(parse_authorization(None))


class PolicyTests(SynchronousTestCase):
    def setUp(self) -> None:
        if shutil.which("htpasswd") is None:
            self.skipTest("htpasswd (apache2-utils) not installed")
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.users = self.dir / "staff.htpasswd"
        htpasswd(self.users, "B", "alice", "wonderland")
        htpasswd(self.users, "5", "bob", "builder")  # SHA-512-crypt
        htpasswd(self.users, "2", "carol", "c4rol")  # SHA-256-crypt
        self.tokens = self.dir / "tokens"
        self.tokens.write_text(f"ci:sha256:{hashlib.sha256(b'tok-ci').hexdigest()}\n")
        self.tokens.chmod(0o600)

    def test_apache_hashes_verify(self) -> None:
        """Each scheme Apache's htpasswd writes, checked by our bcrypt and SHA-crypt code."""
        policy = Policy(AccessPolicy("staff", basic_auth_file=self.users))
        for user, password in (("alice", "wonderland"), ("bob", "builder"), ("carol", "c4rol")):
            pending = policy.check_credentials(basic(user, password))
            assert isinstance(pending, Pending)
            self.assertEqual(policy.credentials.verify_basic(pending.credential), user)
            wrong = policy.check_credentials(basic(user, password + "x"))
            assert isinstance(wrong, Pending)
            self.assertIsNone(policy.credentials.verify_basic(wrong.credential))

    def test_cached_after_verification(self) -> None:
        policy = Policy(AccessPolicy("staff", basic_auth_file=self.users))
        header = basic("alice", "wonderland")
        pending = policy.check_credentials(header)
        assert isinstance(pending, Pending)
        user = policy.credentials.verify_basic(pending.credential)
        self.assertEqual(policy.basic_done(pending, user), Identity("alice"))
        self.assertEqual(policy.check_credentials(header), Identity("alice"), "no slow check")
        self.assertIsInstance(policy.check_credentials(basic("alice", "other")), Pending)
        refusal = policy.basic_done(pending, None)
        assert isinstance(refusal, Refusal)
        self.assertEqual((refusal.status, refusal.reason), (401, "bad_password"))
        self.assertEqual(
            refusal.headers, ((b"WWW-Authenticate", b'Basic realm="staff", charset="UTF-8"'),)
        )

    def test_bearer_and_any_kind_suffices(self) -> None:
        policy = Policy(
            AccessPolicy("api", basic_auth_file=self.users, bearer_tokens_file=self.tokens)
        )
        self.assertEqual(policy.check_credentials(b"Bearer tok-ci"), Identity("ci"))
        refusal = policy.check_credentials(b"Bearer tok-other")
        assert isinstance(refusal, Refusal)
        self.assertEqual((refusal.status, refusal.reason), (401, "bad_token"))
        self.assertEqual(len(refusal.headers), 2, "both kinds are offered")
        self.assertIsInstance(policy.check_credentials(basic("alice", "wonderland")), Pending)
        missing = policy.check_credentials(None)
        assert isinstance(missing, Refusal)
        self.assertEqual(missing.reason, "no_credentials")

    def test_connection_steps(self) -> None:
        policy = Policy(
            AccessPolicy(
                "hooks",
                allow=(ip_network("192.0.2.0/24"),),
                rate_limit=1.0,
                rate_burst=2,
                max_request_body=100,
            )
        )
        refusal = policy.check_connection("203.0.113.1", 0)
        assert refusal is not None
        self.assertEqual((refusal.status, refusal.reason), (403, "address_not_allowed"))
        self.assertIsNone(policy.check_connection("192.0.2.1", 0))
        self.assertIsNone(policy.check_connection("192.0.2.1", 0))
        limited = policy.check_connection("192.0.2.1", 0.25)
        assert limited is not None
        self.assertEqual((limited.status, limited.headers), (429, ((b"Retry-After", b"1"),)))
        too_big = policy.check_body(101)
        assert too_big is not None
        self.assertEqual(too_big.status, 413)
        self.assertIsNone(policy.check_body(100))

    def test_identity_headers(self) -> None:
        self.assertEqual(
            Identity("ali\u00e7e", email="a@example.com", groups="admins").headers(),
            {
                b"Remote-User": b"ali\\xe7e",
                b"Remote-Email": b"a@example.com",
                b"Remote-Groups": b"admins",
            },
        )


class ShaCryptTests(SynchronousTestCase):
    def test_specification_vectors(self) -> None:
        """Drepper's published test vectors (rounds given and default)."""
        vectors = [
            (
                "5",
                "saltstring",
                None,
                b"Hello world!",
                "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5",
            ),
            (
                "5",
                "saltstringsaltstring",
                10000,
                b"Hello world!",
                "$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA",
            ),
            (
                "6",
                "saltstring",
                None,
                b"Hello world!",
                "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJu"
                "esI68u4OTLiBFdcbYEdFCoEOfaS35inz1",
            ),
        ]
        for variant, salt, rounds, password, expected in vectors:
            self.assertEqual(shacrypt.sha_crypt(password, salt, rounds, variant), expected)
            self.assertTrue(shacrypt.verify(password, expected))
            self.assertFalse(shacrypt.verify(password + b"x", expected))

    def test_excessive_rounds_refused(self) -> None:
        self.assertFalse(shacrypt.verify(b"x", "$5$rounds=999999999$salt$" + "a" * 43))
