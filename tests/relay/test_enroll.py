"""Enrollment on the relay: the invitations and nodes kept in state-dir (store.py), the enroll
listener against hostile clients (listener.py), and a live relay taking and dropping an
enrolled node as a WireGuard peer and a route (live.py)."""

from __future__ import annotations

import base64
import json
import stat
from ipaddress import ip_interface, ip_network
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import task
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.config import RelayConfig, RelayNode
from funnel_tw.config.model import EnrollConfig
from funnel_tw.config.relay import with_enrolled
from funnel_tw.daemon.enroll import REFUSALS, parse_token, secret_hash
from funnel_tw.daemon.localapi.server import ActionRefused
from funnel_tw.keys import encode_key, generate_private_key, public_key
from funnel_tw.relay.enroll.listener import MAX_HEAD, EnrollFactory, EnrollProtocol
from funnel_tw.relay.enroll.store import EnrollStore, Refused


def key() -> bytes:
    return public_key(generate_private_key())


def relay_config(
    state: Path, pools: str = "100.64.0.0/24, fd7a:115c::/64", **kw: Any
) -> RelayConfig:
    config = RelayConfig(
        path=state.parent / "relay.ini",
        private_key=generate_private_key(),
        listen_port=0,
        addresses=(ip_interface("100.64.0.1/32"),),
        public_address="127.0.0.1",
        public_ports=(443,),
        client_hello_timeout=10.0,
        max_connections=100,
        mtu=1280,
        nodes=(),
        state_dir=state,
        enroll=EnrollConfig(
            41643,
            ("relay.example.net", 41641),
            tuple(ip_network(p.strip()) for p in pools.split(",")),
        ),
    )
    return attrs.evolve(config, **kw)


STATIC = RelayNode(
    name="home",
    public_key=key(),
    allowed_ips=(ip_network("100.64.0.2/32"),),
    hostnames=("home.example.com",),
    peerapi=(ip_network("100.64.0.2/32").network_address, 41642),
    endpoint=None,
    persistent_keepalive=0,
    preshared_key=None,
)


class StoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.state = Path(self.mktemp())
        self.store = EnrollStore(self.state)
        self.config = relay_config(self.state, nodes=(STATIC,))

    def redeem(self, secret: bytes, node: bytes, now: float = 10.0) -> dict[str, Any]:
        return self.store.redeem(self.config, secret, node, 41642, now)

    def refused(self, secret: bytes, node: bytes, now: float = 10.0) -> str:
        error = self.assertRaises(Refused, self.redeem, secret, node, now)
        self.assertIn(error.reason, REFUSALS)
        return error.reason

    def test_single_use_and_only_a_hash_on_disk(self) -> None:
        secret = self.store.invite(self.config, ("app.example.com",), 0.0, name="laptop")
        record = self.redeem(secret, node := key())
        self.assertEqual(record["name"], "laptop")
        # the first free address of each family: .1 is the relay's, .2 a [node] section's
        self.assertEqual(record["addresses"], ["100.64.0.3/32", "fd7a:115c::1/128"])
        self.assertEqual(record["public_key"], encode_key(node))
        self.assertEqual(self.refused(secret, key()), "used_token")
        self.assertEqual(self.refused(secret, node), "used_token")
        tokens = self.state / "enroll-tokens.json"
        for path in (tokens, self.state / "enrolled-nodes.json"):
            self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        text = tokens.read_text()
        self.assertNotIn(secret.hex(), text)
        self.assertNotIn(base64.urlsafe_b64encode(secret).decode().rstrip("="), text)
        self.assertIn(secret_hash(secret), text)

    def test_expiry_and_unknown_tokens(self) -> None:
        secret = self.store.invite(self.config, ("app.example.com",), 0.0, expires=60)
        self.assertEqual(self.refused(secret, key(), now=60.0), "expired_token")
        self.assertEqual(self.refused(b"x" * 32, key()), "bad_token")
        self.assertEqual(self.refused(secret, key(), now=60.0 + 2 * 86400), "expired_token")
        self.store.prune(60.0 + 2 * 86400)
        self.assertEqual(self.refused(secret, key()), "bad_token")  # forgotten a day later
        self.assertRaises(
            Refused, self.store.invite, self.config, ("a.example.com",), 0.0, expires=0
        )

    def test_a_reusable_token_makes_a_pool(self) -> None:
        secret = self.store.invite(self.config, ("*.apps.example.com",), 0.0, reusable=True)
        a = self.redeem(secret, key())
        self.config = with_enrolled(self.config, self.store.nodes)[0]
        b = self.store.redeem(self.config, secret, key(), 41642, 11.0)
        self.assertEqual((a["name"], b["name"]), ("apps.example.com", "apps.example.com-2"))
        self.assertNotEqual(a["addresses"], b["addresses"])
        self.assertEqual(self.store.tokens[secret_hash(secret)]["uses"], 2)
        config, skipped = with_enrolled(self.config, self.store.nodes)
        self.assertEqual(skipped, [])
        from funnel_tw.relay.routes import Routes

        pool = Routes(config.nodes).pool("x.apps.example.com")
        assert pool is not None
        self.assertEqual([n.name for n in pool.nodes], ["apps.example.com", "apps.example.com-2"])

    def test_hostnames_bound_by_the_token(self) -> None:
        # a name a [node] section serves: the enrolled node joins its pool
        secret = self.store.invite(self.config, ("home.example.com",), 0.0)
        record = self.redeem(secret, key())
        self.assertEqual(record["hostnames"], ["home.example.com"])
        secret = self.store.invite(self.config, ("app.example.com",), 0.0, reusable=True)
        node = key()
        first = self.redeem(secret, node)
        self.config = with_enrolled(self.config, self.store.nodes)[0]
        again = self.redeem(secret, node, 20.0)  # the same node again: same name and addresses
        self.assertEqual((again["name"], again["addresses"]), (first["name"], first["addresses"]))
        self.assertEqual(again["hostnames"], ["app.example.com"])  # what the token grants
        self.assertEqual(len(self.store.nodes), 2)

    def test_pool_exhausted(self) -> None:
        self.config = relay_config(self.state, pools="100.64.0.0/30")
        first = self.store.invite(self.config, ("a.example.com",), 0.0)
        second = self.store.invite(self.config, ("b.example.com",), 0.0)
        record = self.redeem(first, key())
        self.assertEqual(record["addresses"], ["100.64.0.2/32"])  # .1 relay, .3 broadcast
        self.config = with_enrolled(self.config, self.store.nodes)[0]
        self.assertEqual(self.refused(second, key()), "no_address_left")
        self.assertEqual(self.store.tokens[secret_hash(second)]["uses"], 0)  # not consumed

    def test_survives_a_restart_and_remove(self) -> None:
        secret = self.store.invite(self.config, ("app.example.com",), 0.0)
        self.redeem(secret, key())
        again = EnrollStore(self.state)
        again.load()
        self.assertEqual(again.nodes, self.store.nodes)
        self.assertEqual(again.tokens, self.store.tokens)
        self.assertTrue(again.remove("app.example.com"))
        self.assertFalse(again.remove("app.example.com"))
        self.assertEqual(json.loads((self.state / "enrolled-nodes.json").read_text())["nodes"], [])

    def test_malformed_token_entries_are_dropped_at_load(self) -> None:
        secret = self.store.invite(self.config, ("app.example.com",), 0.0)
        data = json.loads((self.state / "enroll-tokens.json").read_text())
        data["tokens"]["bogus"] = {"hostnames": "app.example.com", "expires": "never"}
        data["tokens"]["other"] = []
        (self.state / "enroll-tokens.json").write_text(json.dumps(data))
        again = EnrollStore(self.state)
        again.load()
        self.assertEqual(list(again.tokens), [secret_hash(secret)])

    def test_damaged_files_are_named(self) -> None:
        self.state.mkdir(parents=True)
        (self.state / "enroll-tokens.json").write_text("{")
        error = self.assertRaises(ValueError, self.store.load)
        self.assertIn("enroll-tokens.json: not JSON", str(error))


class ListenerTests(SynchronousTestCase):
    """The enroll protocol on a StringTransport: what hostile clients get."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.calls: list[dict[str, Any]] = []
        self.factory = EnrollFactory(self.clock, self.handle, timeout=10.0, max_open=2)

    def handle(self, request: dict[str, Any], peer: str) -> dict[str, Any]:
        self.calls.append(request)
        if request.get("secret") == "bad":
            raise Refused("bad_token", "no such token")
        if request.get("secret") == "bug":
            raise OSError(28, "No space left on device")
        return {"ok": True}

    def connect(self) -> tuple[EnrollProtocol, StringTransport]:
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=None)
        transport.getPeer = lambda: type("A", (), {"host": "198.51.100.7", "port": 5555})()  # type: ignore[method-assign]
        protocol.makeConnection(transport)
        return protocol, transport

    def answer(self, data: bytes) -> tuple[int, dict[str, Any], StringTransport]:
        protocol, transport = self.connect()
        protocol.dataReceived(data)
        protocol.connectionLost()
        head, _, body = transport.value().partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1]) if head else 0
        return status, json.loads(body) if body else {}, transport

    def post(self, body: bytes, path: bytes = b"/v0/enroll", extra: bytes = b"") -> bytes:
        return (
            b"POST "
            + path
            + b" HTTP/1.1\r\nHost: x\r\n"
            + extra
            + b"Content-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )

    def test_good_request(self) -> None:
        status, answer, transport = self.answer(self.post(b'{"secret": "s"}'))
        self.assertEqual((status, answer), (200, {"ok": True}))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.factory.counters, {"enrolled": 1})

    def test_refusals_are_answered_and_counted(self) -> None:
        cases = [
            (self.post(b'{"secret": "bad"}'), 403, "bad_token"),
            (self.post(b"not json"), 400, "bad_request"),
            (self.post(b"[1, 2]"), 400, "bad_request"),
            (self.post(b"{}", path=b"/other"), 404, "bad_request"),
            (b"GET /v0/enroll HTTP/1.1\r\n\r\n", 405, "bad_request"),
            (b"\x16\x03\x01garbage\r\n\r\n", 400, "bad_request"),
            (b"POST /v0/enroll HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411, "bad_request"),
            (b"POST /v0/enroll HTTP/1.1\r\nContent-Length: 5000\r\n\r\n", 413, "too_large"),
            (
                b"POST /v0/enroll HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                411,
                "bad_request",
            ),
        ]
        for data, status, reason in cases:
            with self.subTest(data=data[:30]):
                got, answer, transport = self.answer(data)
                self.assertEqual(got, status)
                self.assertEqual(answer["error"], reason)
                self.assertTrue(transport.disconnecting)
        self.assertEqual(self.factory.counters["bad_request"], 7)
        self.assertEqual(self.factory.counters["bad_token"], 1)
        self.assertEqual(self.factory.counters["too_large"], 1)
        self.assertEqual(self.factory.open, 0)

    def test_a_failure_is_answered_and_logged(self) -> None:
        status, answer, _ = self.answer(self.post(b'{"secret": "bug"}'))
        self.assertEqual((status, answer["error"]), (503, "error"))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_an_endless_head_is_cut_at_8_kib(self) -> None:
        protocol, transport = self.connect()
        for _ in range(1000):  # 1 MiB without an end of head
            protocol.dataReceived(b"X-Filler: " + b"a" * 1014 + b"\r\n")
        self.assertLessEqual(len(protocol.buffer), MAX_HEAD + 1024)
        self.assertIn(b" 431 ", transport.value())
        self.assertEqual(self.factory.counters, {"too_large": 1})

    def test_a_large_body_is_refused_before_it_is_read(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(b"POST /v0/enroll HTTP/1.1\r\nContent-Length: 1000000000\r\n\r\n")
        self.assertIn(b" 413 ", transport.value())
        protocol.dataReceived(b"x" * 100000)
        self.assertLess(len(protocol.buffer), 200)  # what came after is dropped unread
        self.assertEqual(self.calls, [])

    def test_slow_clients_are_aborted_at_the_deadline(self) -> None:
        protocol, transport = self.connect()
        for _ in range(9):
            protocol.dataReceived(b"P")
            self.clock.advance(1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)  # the deadline does not restart with each byte
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.factory.counters, {"timeout": 1})
        protocol.connectionLost()
        self.assertEqual(self.factory.counters, {"timeout": 1})
        self.assertEqual(self.factory.open, 0)

    def test_connections_over_the_cap_are_aborted(self) -> None:
        held = [self.connect(), self.connect()]
        _, third = self.connect()
        self.assertTrue(third.disconnected)
        self.assertEqual(self.factory.counters, {"too_many": 1})
        for protocol, _ in held:
            protocol.connectionLost()
        _, fourth = self.connect()
        self.assertFalse(fourth.disconnected)
        self.assertEqual(self.factory.counters, {"too_many": 1, "closed_early": 2})


class LiveTests(SynchronousTestCase):
    """An enrolled node becomes a WireGuard peer and a route of a running relay at once, and
    remove-node takes both away: the path a reload takes."""

    def setUp(self) -> None:
        from funnel_tw.relay.enroll.live import attach_enroll
        from funnel_tw.relay.service import RelayService

        self.state = Path(self.mktemp())
        self.state.mkdir(parents=True)
        self.clock = task.Clock()
        self.relay = RelayService(relay_config(self.state, nodes=(STATIC,)), reactor=self.clock)
        self.enroll = attach_enroll(self.relay)
        self.enroll.store.load()
        self.enroll.pin = bytes(32)  # as the started listener sets it

    def enroll_node(self, token: str, node: bytes) -> dict[str, Any]:
        parsed = parse_token(token)
        request = {
            "secret": base64.urlsafe_b64encode(parsed.secret).decode(),
            "public_key": encode_key(node),
            "peerapi_port": 41642,
        }
        return self.enroll.enroll(request, "198.51.100.7:5555")

    def peers(self) -> list[str]:
        return [p.name for p in self.relay.overlay.device.peers]

    def test_enroll_and_remove_live(self) -> None:
        invitation = self.enroll.invite({"hostnames": "app.example.com", "name": "laptop"})
        self.assertEqual(invitation["enroll"], "relay.example.net:41643")
        node = key()
        answer = self.enroll_node(invitation["token"], node)
        self.assertEqual(answer["name"], "laptop")
        self.assertEqual(answer["relay"]["name"], "relay.example.net")
        self.assertEqual(answer["relay"]["endpoint"], "relay.example.net:41641")
        self.assertEqual(answer["relay"]["allowed_ips"], ["100.64.0.1/32"])
        self.assertEqual(answer["relay"]["tcp_fallback"], "relay.example.net:443")
        from funnel_tw.config.enrolled import enrollment_from

        peer = enrollment_from(answer).relay  # what the node records and loads
        self.assertEqual(peer.tcp_fallback, ("relay.example.net", 443))
        self.assertTrue(peer.funnel_ingress)
        self.assertEqual(
            answer["relay"]["public_key"], encode_key(public_key(self.relay.config.private_key))
        )
        route = self.relay.routes.lookup("app.example.com")
        assert route is not None
        self.assertEqual((route.name, route.public_key), ("laptop", node))
        self.assertEqual(self.peers(), ["home", "laptop"])
        self.assertEqual(self.relay.config.enrolled, frozenset({"laptop"}))
        listed = {n["name"]: n["kind"] for n in self.enroll.nodes()["nodes"]}
        self.assertEqual(listed, {"home": "static", "laptop": "enrolled"})

        self.assertRaises(ActionRefused, self.enroll.remove, {"name": "home"})
        self.assertRaises(ActionRefused, self.enroll.remove, {"name": "nobody"})
        self.enroll.remove({"name": "laptop"})
        self.assertIsNone(self.relay.routes.lookup("app.example.com"))
        self.assertEqual(self.peers(), ["home"])
        self.assertEqual(self.relay.config.enrolled, frozenset())

    def test_malformed_requests_and_refused_invitations(self) -> None:
        for request in (
            {},
            {"secret": "!!", "public_key": encode_key(key())},
            {"secret": base64.urlsafe_b64encode(bytes(32)).decode(), "public_key": "x"},
            {
                "secret": base64.urlsafe_b64encode(bytes(32)).decode(),
                "public_key": encode_key(key()),
                "peerapi_port": True,
            },
            {
                "secret": base64.urlsafe_b64encode(bytes(32)).decode(),
                "public_key": encode_key(STATIC.public_key),
            },
        ):
            error = self.assertRaises(Refused, self.enroll.enroll, request, "x")
            self.assertEqual(error.reason, "bad_request")
        for body in (
            {"hostnames": ""},
            {"hostnames": "a b"},
            {"hostnames": "a.example.com", "name": "../x"},
            {"hostnames": "a.example.com", "expires": "soon"},
        ):
            self.assertRaises(ActionRefused, self.enroll.invite, body)
        self.relay.config = attrs.evolve(self.relay.config, enroll=None)
        error = self.assertRaises(ActionRefused, self.enroll.invite, {"hostnames": "a.example.com"})
        self.assertIn("enrollment is off", str(error))


class CertificateTests(SynchronousTestCase):
    def test_kept_renewed_with_the_same_key_and_0600(self) -> None:
        import datetime

        from funnel_tw.relay.enroll.certificate import enroll_certificate, pem_pin
        from funnel_tw.tls.pem import PEMError

        state = Path(self.mktemp())
        now = datetime.datetime.now(datetime.UTC)
        first = enroll_certificate(state, now)
        path = state / "enroll.pem"
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertEqual(enroll_certificate(state, now + datetime.timedelta(days=30)), first)
        later = enroll_certificate(state, now + datetime.timedelta(days=3400))
        self.assertNotEqual(later, first)  # renewed near its end...
        self.assertEqual(pem_pin(later), pem_pin(first))  # ...with the key the tokens pin
        path.write_text("garbage")
        error = self.assertRaises(PEMError, enroll_certificate, state)
        self.assertIn("invites are then void", str(error))
