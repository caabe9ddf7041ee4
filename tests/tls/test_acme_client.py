"""ACMEClient against a small fake ACME server (twisted.web, plain HTTP on loopback), for what
Pebble cannot be made to do: rate limits with Retry-After, broken answers, nonce rejections on
demand, an unreachable directory. Pebble itself is in tests/interop/test_acme_pebble.py."""

from __future__ import annotations

import base64
import datetime
import email.utils
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import treq
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy import jwk
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase
from twisted.web import resource, server
from twisted.web.client import Agent

from funnel_tw import keys
from funnel_tw.config import load_node_config
from funnel_tw.node.service import build_acme_source
from funnel_tw.tls.acme import (
    ACMEClient,
    ACMEError,
    ari_certificate_id,
    dns01_value,
    key_authorization,
)
from funnel_tw.tls.store import CertificateStore
from tests._support import Issued, free_port, issue, make_ca, wait_until

BAD_NONCE = "urn:ietf:params:acme:error:badNonce"
RATE_LIMITED = "urn:ietf:params:acme:error:rateLimited"

#: (status, headers, body) answered by a route
Answer = tuple[int, dict[str, str], bytes]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def problem(kind: str, detail: str, status: int = 400) -> Answer:
    body = json.dumps({"type": kind, "detail": detail, "status": status}).encode()
    return status, {"content-type": "application/problem+json"}, body


class FakeACME(resource.Resource):
    """Directory, nonces and POST routes; every answer can be replaced per path."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.base = ""
        self.counter = 0
        self.reject_nonces = 0  # reject this many of the next POSTs with badNonce
        self.posts: list[tuple[str, dict[str, Any], Any]] = []  # path, protected, payload
        self.routes: dict[str, Callable[[dict[str, Any], Any], Answer]] = {
            "/acct": lambda p, body: (201, {"location": self.base + "/acct/1"}, b"{}"),
            "/order": lambda p, body: (
                201,
                {"location": self.base + "/order/1"},
                json.dumps(
                    {
                        "status": "pending",
                        "identifiers": body["identifiers"],
                        "authorizations": [self.base + "/authz/1"],
                        "finalize": self.base + "/finalize/1",
                    }
                ).encode(),
            ),
        }
        self.directory: Callable[[], Answer] = lambda: (
            200,
            {},
            json.dumps(
                {
                    "newNonce": self.base + "/nonce",
                    "newAccount": self.base + "/acct",
                    "newOrder": self.base + "/order",
                }
            ).encode(),
        )

    def nonce(self) -> str:
        self.counter += 1
        return b64(f"nonce-{self.counter}".encode())

    def _answer(self, request: server.Request, answer: Answer) -> bytes:
        status, headers, body = answer
        request.setResponseCode(status)
        request.setHeader(b"replay-nonce", self.nonce().encode())
        for name, value in headers.items():
            request.setHeader(name.encode(), value.encode())
        return body

    def render_GET(self, request: server.Request) -> bytes:
        path = request.path.decode()
        if path == "/dir":
            return self._answer(request, self.directory())
        if path == "/nonce":
            return self._answer(request, (200, {}, b""))
        return self._answer(request, (404, {}, b"not found"))

    def render_HEAD(self, request: server.Request) -> bytes:
        return self.render_GET(request)

    def render_POST(self, request: server.Request) -> bytes:
        path = request.path.decode()
        jws = json.loads(request.content.read())
        protected = json.loads(unb64(jws["protected"]))
        payload = json.loads(unb64(jws["payload"])) if jws["payload"] else None
        self.posts.append((path, protected, payload))
        if self.reject_nonces > 0:
            self.reject_nonces -= 1
            return self._answer(request, problem(BAD_NONCE, "JWS has an invalid anti-replay nonce"))
        route = self.routes.get(path)
        if route is None:
            return self._answer(request, (404, {}, b"no route"))
        return self._answer(request, route(protected, payload))


class ClientTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.fake = FakeACME()
        port = reactor.listenTCP(0, server.Site(self.fake), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.fake.base = f"http://127.0.0.1:{port.getHost().port}"
        self.clock = task.Clock()
        self.client = self.make_client(self.fake.base + "/dir")

    def make_client(self, url: str, sleeper: Any = None) -> ACMEClient:
        http = treq.client.HTTPClient(Agent(reactor))
        return ACMEClient(url, ec.generate_private_key(ec.SECP256R1()), http, sleeper or reactor)

    async def raises(self, coro: Any) -> ACMEError:
        try:
            await coro
        except ACMEError as e:
            return e
        raise AssertionError("no ACMEError")

    # --- the ordinary path -----------------------------------------------------------------

    async def test_account_then_order(self) -> None:
        """newAccount is signed with the JWK, later requests with the account URL (kid); every
        request uses a nonce the server gave, none twice; the order's payload is JSON."""
        url = await self.client.register("admin@example.test")
        self.assertEqual(url, self.fake.base + "/acct/1")
        location, order = await self.client.new_order(["a.example.test", "b.example.test"])
        self.assertEqual(location, self.fake.base + "/order/1")
        self.assertEqual(order.authorizations, (self.fake.base + "/authz/1",))
        (p1, account, body1), (p2, order_protected, body2) = self.fake.posts
        self.assertEqual(p2, "/order")
        self.assertEqual(p1, "/acct")
        self.assertIn("jwk", account)
        self.assertNotIn("kid", account)
        self.assertEqual(account["url"], self.fake.base + "/acct")
        self.assertEqual(body1["contact"], ["mailto:admin@example.test"])
        self.assertTrue(body1["termsOfServiceAgreed"])
        self.assertEqual(order_protected["kid"], url)
        self.assertNotIn("jwk", order_protected)
        self.assertEqual(
            body2["identifiers"],
            [
                {"type": "dns", "value": "a.example.test"},
                {"type": "dns", "value": "b.example.test"},
            ],
        )
        self.assertNotEqual(account["nonce"], order_protected["nonce"])

    # --- rate limits -------------------------------------------------------------------------

    async def test_rate_limited_with_retry_after_seconds(self) -> None:
        def limited(p: dict[str, Any], body: Any) -> Answer:
            status, headers, text = problem(RATE_LIMITED, "too many new accounts", 429)
            return status, headers | {"retry-after": "120"}, text

        self.fake.routes["/acct"] = limited
        error = await self.raises(self.client.register(None))
        self.assertTrue(error.rate_limited)
        self.assertEqual(error.retry_after, 120.0)
        self.assertEqual(error.status, 429)
        self.assertEqual(error.kind, RATE_LIMITED)
        self.assertIn("too many new accounts", str(error))

    async def test_rate_limited_with_retry_after_date(self) -> None:
        when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=600)

        def limited(p: dict[str, Any], body: Any) -> Answer:
            status, headers, text = problem(RATE_LIMITED, "slow down", 429)
            return status, headers | {"retry-after": email.utils.format_datetime(when, True)}, text

        self.fake.routes["/acct"] = limited
        error = await self.raises(self.client.register(None))
        self.assertTrue(error.rate_limited)
        assert error.retry_after is not None
        self.assertTrue(590 <= error.retry_after <= 601, error.retry_after)

    async def test_rate_limited_problem_without_429(self) -> None:
        self.fake.routes["/acct"] = lambda p, body: problem(RATE_LIMITED, "accounts", 503)
        error = await self.raises(self.client.register(None))
        self.assertTrue(error.rate_limited)
        self.assertIsNone(error.retry_after)

    async def test_other_errors_are_not_rate_limits(self) -> None:
        self.fake.routes["/acct"] = lambda p, body: problem(
            "urn:ietf:params:acme:error:malformed", "bad contact", 400
        )
        error = await self.raises(self.client.register("x"))
        self.assertFalse(error.rate_limited)
        self.assertEqual(error.kind, "urn:ietf:params:acme:error:malformed")
        self.assertIn("bad contact", str(error))

    async def test_error_that_is_not_a_problem_document(self) -> None:
        self.fake.routes["/acct"] = lambda p, body: (502, {}, b"<html>Bad Gateway</html>")
        error = await self.raises(self.client.register(None))
        self.assertEqual(error.status, 502)
        self.assertIn("Bad Gateway", str(error))

    # --- nonces ------------------------------------------------------------------------------

    async def test_bad_nonce_once_is_retried(self) -> None:
        self.fake.reject_nonces = 1
        url = await self.client.register(None)
        self.assertEqual(url, self.fake.base + "/acct/1")
        self.assertEqual([p for p, _, _ in self.fake.posts], ["/acct", "/acct"])
        first, second = (protected["nonce"] for _, protected, _ in self.fake.posts)
        self.assertNotEqual(first, second)

    async def test_bad_nonce_twice_is_an_error(self) -> None:
        self.fake.reject_nonces = 2
        error = await self.raises(self.client.register(None))
        self.assertEqual(error.kind, BAD_NONCE)
        self.assertEqual(error.status, 400)
        self.assertIn("badNonce", str(error))
        self.assertEqual(len(self.fake.posts), 2, "one retry, not more")

    async def test_no_nonce_from_the_server(self) -> None:
        class NoNonce(FakeACME):
            def nonce(self) -> str:
                return ""

        fake = NoNonce()
        port = reactor.listenTCP(0, server.Site(fake), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        fake.base = f"http://127.0.0.1:{port.getHost().port}"
        error = await self.raises(self.make_client(fake.base + "/dir").register(None))
        self.assertIn("Replay-Nonce", str(error))

    # --- broken answers ----------------------------------------------------------------------

    async def test_directory_unreachable(self) -> None:
        url = f"http://127.0.0.1:{free_port()}/dir"
        error = await self.raises(self.make_client(url).register(None))
        self.assertIn(url, str(error))
        self.assertIn("refused", str(error).lower())

    async def test_directory_http_error(self) -> None:
        self.fake.directory = lambda: (500, {}, b"oops")
        error = await self.raises(self.client.register(None))
        self.assertEqual(error.status, 500)
        self.assertIn("HTTP 500", str(error))

    async def test_directory_not_json(self) -> None:
        self.fake.directory = lambda: (200, {}, b"<html>hello</html>")
        error = await self.raises(self.client.register(None))
        self.assertIn("invalid JSON", str(error))

    async def test_directory_json_array(self) -> None:
        self.fake.directory = lambda: (200, {}, b"[1, 2]")
        error = await self.raises(self.client.register(None))
        self.assertIn("directory", str(error))

    async def test_directory_json_string(self) -> None:
        """Was a bug: a JSON string as the directory raises AttributeError out of get_directory()
        ('str' object has no attribute 'pop'), not ACMEError."""
        self.fake.directory = lambda: (200, {}, b'"a string"')
        error = await self.raises(self.client.register(None))
        self.assertIn("directory", str(error))

    async def test_directory_without_urls(self) -> None:
        """Was a bug: a directory object without newNonce/newAccount is accepted, and the first use
        raises KeyError ('Directory field "newNonce" not found'), not ACMEError."""
        self.fake.directory = lambda: (200, {}, b'{"meta": {}}')
        error = await self.raises(self.client.register(None))
        self.assertIn("directory", str(error))

    def _authz(self, body: bytes) -> None:
        self.fake.routes["/authz/1"] = lambda p, payload: (200, {}, body)

    async def test_resource_not_json(self) -> None:
        self._authz(b"not json")
        await self.client.register(None)
        error = await self.raises(self.client.authorization(self.fake.base + "/authz/1"))
        self.assertIn("invalid JSON", str(error))

    async def test_resource_with_a_wrong_field(self) -> None:
        self._authz(b'{"status": 5}')
        await self.client.register(None)
        error = await self.raises(self.client.authorization(self.fake.base + "/authz/1"))
        self.assertIn("invalid Authorization", str(error))

    async def test_resource_that_is_not_an_object(self) -> None:
        """Was a bug: JSON that is not an object is accepted as a resource with every field None
        (josepy does not check); issue() then fails outside ACMEError (AttributeError on
        authz.identifier.value, TypeError iterating order.authorizations). For an Order, a
        JSON string raises AttributeError from _parse instead."""
        await self.client.register(None)
        for body in (b'"pending"', b"[1, 2]"):
            self._authz(body)
            error = await self.raises(self.client.authorization(self.fake.base + "/authz/1"))
            self.assertIn("Authorization", str(error))

    async def test_account_without_location(self) -> None:
        self.fake.routes["/acct"] = lambda p, body: (201, {}, b"{}")
        error = await self.raises(self.client.register(None))
        self.assertIn("Location", str(error))

    async def test_certificate_that_is_not_pem(self) -> None:
        self.fake.routes["/cert"] = lambda p, body: (200, {}, b'{"certificate": "no"}')
        await self.client.register(None)
        error = await self.raises(self.client.certificate(self.fake.base + "/cert"))
        self.assertIn("not a PEM chain", str(error))

    # --- polling -----------------------------------------------------------------------------

    async def _wait_posts(self, count: int) -> None:
        await wait_until(
            lambda: len(self.fake.posts) >= count,
            5,
            f"{count} POSTs",
            detail=lambda: f"only {len(self.fake.posts)} POSTs",
        )

    async def _wait_answered(self, d: defer.Deferred[Any]) -> None:
        """Until poll() has taken the last answer in: it returned, or it sleeps on the clock."""
        await wait_until(lambda: d.called or self.clock.getDelayedCalls(), 5, "poll() to go on")

    async def test_poll_returns_when_done(self) -> None:
        """Was a bug: poll() compares str(resource.status), which is 'Status(valid)', with 'valid':
        it never sees a finished resource and polls MAX_POLLS times (60 s), then fails."""
        self.fake.routes["/order/1"] = lambda p, body: (
            200,
            {},
            json.dumps({"status": "valid", "authorizations": [], "finalize": "f"}).encode(),
        )
        client = self.make_client(self.fake.base + "/dir", sleeper=self.clock)
        await client.register(None)
        d = defer.Deferred.fromCoroutine(
            client.poll(self.fake.base + "/order/1", messages.Order, {"valid", "invalid"})
        )
        self.addCleanup(lambda: d.called or (d.cancel(), d.addErrback(lambda f: None)))
        await self._wait_posts(2)
        await self._wait_answered(d)
        self.assertTrue(d.called, "poll() went on polling a resource whose status is valid")
        order = await d
        self.assertEqual(order.status, messages.STATUS_VALID)

    async def test_poll_waits_as_retry_after_says(self) -> None:
        """Retry-After decides the wait (capped at 30 s); without it, one second."""
        retry_after = iter(["7", "3600", None])

        def order(p: dict[str, Any], body: Any) -> Answer:
            value = next(retry_after, None)
            headers = {"retry-after": value} if value else {}
            body_out = {"status": "processing", "authorizations": [], "finalize": "f"}
            return 200, headers, json.dumps(body_out).encode()

        self.fake.routes["/order/1"] = order
        client = self.make_client(self.fake.base + "/dir", sleeper=self.clock)
        await client.register(None)
        d = defer.Deferred.fromCoroutine(
            client.poll(self.fake.base + "/order/1", messages.Order, {"valid", "invalid"})
        )
        self.addCleanup(lambda: d.called or (d.cancel(), d.addErrback(lambda f: None)))
        waits = []
        for posts in (2, 3, 4):
            await self._wait_posts(posts)
            await self._wait_answered(d)
            (call,) = self.clock.getDelayedCalls()
            waits.append(call.getTime() - self.clock.seconds())
            self.clock.advance(waits[-1])
        self.assertEqual(waits, [7.0, 30.0, 1.0])

    # --- renewal information (ARI) ------------------------------------------------------------

    async def test_renewal_window_from_ari(self) -> None:
        cert = ari_cert()
        cert_id = ari_certificate_id(cert)
        base = self.fake.directory

        def directory() -> Answer:
            status, headers, body = base()
            data = json.loads(body) | {"renewalInfo": self.fake.base + "/ari/"}
            return status, headers, json.dumps(data).encode()

        window = {"start": "2030-01-02T00:00:00Z", "end": "2030-01-03T00:00:00Z"}
        seen: list[str] = []
        original = self.fake.render_GET

        def render_get(request: server.Request) -> bytes:
            if request.path.startswith(b"/ari/"):
                seen.append(request.path.decode())
                return json.dumps({"suggestedWindow": window}).encode()
            return original(request)

        self.fake.directory = directory
        self.fake.render_GET = render_get  # type: ignore[method-assign]
        start, end = await self.client.renewal_window(cert) or (None, None)
        self.assertEqual(seen, [f"/ari/{cert_id}"])
        self.assertEqual(start, datetime.datetime(2030, 1, 2, tzinfo=datetime.UTC))
        self.assertEqual(end, datetime.datetime(2030, 1, 3, tzinfo=datetime.UTC))

    async def test_no_ari_without_renewal_info(self) -> None:
        self.assertIsNone(await self.client.renewal_window(ari_cert()))


def ari_cert() -> x509.Certificate:
    """draft-ietf-acme-ari's example: AKI 69:88:5B:..., serial 00:87:65:43:21."""
    aki = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
    return issue(
        "ari.example.test",
        san=(),
        serial=0x87654321,
        not_before=datetime.timedelta(0),
        extensions=[(x509.AuthorityKeyIdentifier(aki, None, None), False)],
    ).cert


class HelperTests(TestCase):
    def test_ari_certificate_id(self) -> None:
        self.assertEqual(ari_certificate_id(ari_cert()), "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE")

    def test_key_authorization_uses_the_rfc7638_thumbprint(self) -> None:
        # RFC 7638 section 3.1: this RSA key's SHA-256 thumbprint
        n = (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tS"
            "oc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65"
            "YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyr"
            "dkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJz"
            "KnqDKgw"
        )
        key = jwk.JWK.from_json({"kty": "RSA", "n": n, "e": "AQAB"})
        self.assertEqual(
            key_authorization("tok", key), "tok.NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        )

    def test_dns01_value(self) -> None:
        expected = b64(hashlib.sha256(b"tok.thumb").digest())
        self.assertEqual(dns01_value("tok.thumb"), expected)
        self.assertNotIn("=", dns01_value("x"))


class CAFileTests(TestCase):
    """``acme-ca-file`` as build_acme_source reads it, against an HTTPS fake server."""

    timeout = 20

    async def _directory_through(self, bundle: list[x509.Certificate], signer: Issued) -> None:
        leaf = issue("localhost", issuer=signer)
        fake = FakeACME()
        options = leaf.private_certificate().options()
        port = reactor.listenSSL(0, server.Site(fake), options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        fake.base = f"https://localhost:{port.getHost().port}"

        folder = Path(self.mktemp()).absolute()
        folder.mkdir()
        (folder / "ca.pem").write_bytes(
            b"".join(c.public_bytes(serialization.Encoding.PEM) for c in bundle)
        )
        (folder / "node.ini").write_text(f"""[node]
private-key = {keys.encode_key(keys.generate_private_key())}
address = 100.64.0.2/32
hostname = node.example.test

[tls]
source = acme
acme-directory = {fake.base}/dir
acme-ca-file = ca.pem
""")
        config = load_node_config(folder / "node.ini")
        source = build_acme_source(config, CertificateStore(config.hostnames), reactor)
        client = source._client()
        directory = await client.get_directory()
        self.assertEqual(directory["newNonce"], fake.base + "/nonce")

    async def test_ca_file_with_one_certificate(self) -> None:
        ca = make_ca("the ACME server's CA")
        await self._directory_through([ca.cert], ca)

    async def test_ca_file_with_several_certificates(self) -> None:
        """Was a bug: build_acme_source loads acme-ca-file with ssl.Certificate.loadPEM, which reads
        the first certificate only; a bundle whose right CA is not first is not trusted
        (ACMEError: ... certificate verify failed)."""
        ca, other = make_ca("the ACME server's CA"), make_ca("another CA")
        await self._directory_through([other.cert, ca.cert], ca)
