"""Enrollment on a running relay: the enroll listener, and ``invite`` / ``nodes`` /
``remove-node`` on the local API. A change takes the path a reload takes (relay/reload.py):
the effective node list (the [node] sections and the enrolled nodes) is built again and the
plan between it and the running one is applied, so a node enrolled or removed is a WireGuard
peer and a route, or none, at once, without a restart.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from ipaddress import ip_address
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric
from twisted.application.service import Service
from twisted.internet import defer, ssl
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from ...config import RelayConfig, values
from ...config.plan import relay_plan
from ...config.relay import with_enrolled
from ...daemon.enroll import INVITE_PATH, NODES_PATH, REMOVE_PATH, SECRET_BYTES, Token
from ...daemon.localapi.server import ActionRefused
from ...keys import decode_key, encode_key, public_key
from ...overlay.tunnel import display_endpoint
from ...tls.pem import PEMError
from ...web.hostport import format_host_port
from ..reload import apply_relay_plan
from ..service import SESSION_LIFETIME, RelayService
from .certificate import enroll_certificate, pem_pin
from .listener import EnrollFactory
from .store import DEFAULT_EXPIRY, EnrollStore, Refused

log = Logger()

RELAY_KEEPALIVE = 25  # a node behind NAT keeps its mapping open towards the relay


def relay_name(config: RelayConfig) -> str:
    """The relay's name in a joined node's peers: its public host, when that is a NAME."""
    if config.enroll is None:
        return "relay"
    host = config.enroll.public_endpoint[0]
    try:
        ip_address(host)
    except ValueError:
        return host if values.NAME.match(host) else "relay"
    return "relay"


class EnrollService(Service):
    """Invitations, enrollments and removals for one RelayService."""

    def __init__(self, relay: RelayService) -> None:
        self.relay = relay
        self.store = EnrollStore(relay.config.state_dir)
        self.factory = EnrollFactory(relay.reactor, self.enroll)
        self.port: IListeningPort | None = None
        self.pin: bytes | None = None
        relay.localapi.add_action(INVITE_PATH, self.invite)
        relay.localapi.add_route(NODES_PATH, self.nodes)
        relay.localapi.add_action(REMOVE_PATH, self.remove)
        relay.observer.registry.register(_EnrollCollector(self.factory.counters))

    def startService(self) -> None:
        config = self.relay.config
        try:
            self.store.load()
        except ValueError as e:
            raise SystemExit(f"funnel-tw relay: {e}") from None
        super().startService()
        if config.enroll is None:
            return
        try:
            pem = enroll_certificate(config.state_dir)
        except (PEMError, OSError) as e:
            raise SystemExit(f"funnel-tw relay: enroll certificate: {e}") from None
        self.pin = pem_pin(pem)
        options = ssl.PrivateCertificate.loadPEM(pem).options()
        try:
            self.port = self.relay.reactor.listenSSL(
                config.enroll.port, self.factory, options, interface=config.public_address
            )
        except OSError as e:
            raise SystemExit(
                f"funnel-tw relay: cannot listen on {config.public_address}:"
                f"{config.enroll.port} (enroll-port): {e}"
            ) from None
        log.info(
            "enroll listener on {address}:{port}",
            address=config.public_address,
            port=self.listening_port(),
        )

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        stopped = port.stopListening() if port is not None else None
        return stopped if isinstance(stopped, defer.Deferred) else None

    def listening_port(self) -> int:
        if self.port is None:
            return 0
        return int(getattr(self.port.getHost(), "port", 0))

    # --- applying ------------------------------------------------------------------------

    def apply(self) -> None:
        """Make the running relay serve exactly its [node] sections and the enrolled nodes."""
        old = self.relay.config
        new, skipped = with_enrolled(old, self.store.nodes)
        for why in skipped:
            log.warn("enrolled nodes: {why}", why=why)
        plan = relay_plan(old, new)
        if not plan.changes:
            return
        apply_relay_plan(self.relay, new, plan)
        for change in plan.changes:
            log.info("enroll: {change}", change=str(change))

    # --- the enroll listener -------------------------------------------------------------

    def enroll(self, request: dict[str, Any], peer: str) -> dict[str, Any]:
        config = self.relay.config
        assert config.enroll is not None
        try:
            secret = base64.urlsafe_b64decode(str(request["secret"]).encode("ascii"))
            if len(secret) != SECRET_BYTES:
                raise ValueError("secret")
            key = decode_key(str(request["public_key"]))
            port = request.get("peerapi_port", 41642)
            if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
                raise ValueError("peerapi_port")
        except (KeyError, ValueError, UnicodeEncodeError, binascii.Error) as e:
            raise Refused("bad_request", f"malformed field {e}") from None
        if key == public_key(config.private_key):
            raise Refused("bad_request", "the relay's own key")
        static = [n for n in config.nodes if n.name not in config.enrolled]
        if any(n.public_key == key for n in static):
            raise Refused("bad_request", "this key is a [node] section of relay.ini")
        now = self.relay.reactor.seconds()
        record = self.store.redeem(config, secret, key, port, now)
        try:
            self.apply()
        except Exception:  # saved: a reload or a restart applies it
            log.failure(
                "enrolled node {name} saved, but not applied live: reload the relay",
                name=record["name"],
            )
        shared = sorted(
            n.name
            for n in self.relay.config.nodes
            if n.name != record["name"] and set(n.hostnames) & set(record["hostnames"])
        )
        log.info(
            "enrolled node {name} from {peer}: key {key}..., {addresses}, {hostnames}{pool}",
            pool=f" (in a pool with {', '.join(shared)})" if shared else "",
            name=record["name"],
            peer=peer,
            key=record["public_key"][:8],
            addresses=", ".join(record["addresses"]),
            hostnames=", ".join(record["hostnames"]),
        )
        host, wg_port = config.enroll.public_endpoint
        return {
            "version": 1,
            "name": record["name"],
            "addresses": record["addresses"],
            "hostnames": record["hostnames"],
            "enrolled_at": now,
            "relay": {
                "name": relay_name(config),
                "public_key": encode_key(public_key(config.private_key)),
                "endpoint": format_host_port(host, wg_port),
                "allowed_ips": [
                    str(a.ip) + ("/32" if a.version == 4 else "/128") for a in config.addresses
                ],
                "persistent_keepalive": RELAY_KEEPALIVE,
                # WireGuard over TLS on the first public port, when UDP is blocked
                "tcp_fallback": format_host_port(host, config.public_ports[0])
                if config.tcp_fallback
                else None,
            },
        }

    # --- the local API -------------------------------------------------------------------

    def invite(self, body: dict[str, Any]) -> dict[str, Any]:
        config = self.relay.config
        if config.enroll is None or self.pin is None:
            raise ActionRefused(
                f"enrollment is off: set enroll-port, public-endpoint and node-addresses in "
                f"[relay] of {config.path}, then restart the relay"
            )
        try:
            hostnames = values.some_hostnames(str(body.get("hostnames", "")))
            name = body.get("name")
            if name is not None and not (isinstance(name, str) and values.NAME.match(name)):
                raise ValueError(f"--name {name!r}: letters, digits, '.', '_', '-' only")
            expires = body.get("expires", DEFAULT_EXPIRY)
            if not isinstance(expires, int | float) or isinstance(expires, bool):
                raise ValueError("--expires is a number of seconds")
            secret = self.store.invite(
                config,
                hostnames,
                self.relay.reactor.seconds(),
                name=name,
                expires=float(expires),
                reusable=bool(body.get("reusable", False)),
            )
        except (ValueError, Refused) as e:
            raise ActionRefused(str(e)) from None
        host, port = config.enroll.address
        if port == 0:
            port = self.listening_port()
        token = Token(secret=secret, pin=self.pin, host=host, port=port)
        log.info(
            "invitation for {hostnames} ({kind}, expires in {expires:g}s)",
            hostnames=", ".join(hostnames),
            kind="reusable" if body.get("reusable") else "single-use",
            expires=float(expires),
        )
        return {
            "token": token.text(),
            "hostnames": list(hostnames),
            "expires_in": float(expires),
            "reusable": bool(body.get("reusable", False)),
            "enroll": f"{host}:{port}",
        }

    def nodes(self) -> dict[str, Any]:
        config = self.relay.config
        now = self.relay.reactor.seconds()
        peers = {p.name: p for p in self.relay.overlay.device.peers}
        out = []
        for node in config.nodes:
            peer = peers.get(node.name)
            last = peer.last_handshake if peer is not None else None
            out.append(
                {
                    "name": node.name,
                    "kind": "enrolled" if node.name in config.enrolled else "static",
                    "public_key": encode_key(node.public_key),
                    "addresses": [str(n) for n in node.allowed_ips],
                    "hostnames": list(node.hostnames),
                    "endpoint": display_endpoint(peer.endpoint)
                    if peer is not None and peer.endpoint
                    else None,
                    "last_handshake_age": None if last is None else max(0.0, now - last),
                    "session": last is not None and now - last < SESSION_LIFETIME,
                }
            )
        return {
            "nodes": out,
            "enroll": dict(self.factory.counters),
            "enroll_address": "{}:{}".format(*config.enroll.address) if config.enroll else None,
        }

    def remove(self, body: dict[str, Any]) -> dict[str, Any]:
        config = self.relay.config
        name = str(body.get("name", ""))
        if name in {n.name for n in config.nodes} - config.enrolled:
            raise ActionRefused(
                f"{name} is a [node] section of {config.path}: delete it there and reload"
            )
        if not self.store.remove(name):
            raise ActionRefused(f"no enrolled node named {name!r}")
        self.apply()
        log.info("removed enrolled node {name}", name=name)
        return {"removed": name}


class _EnrollCollector:
    """``funnel_relay_enroll_total{outcome}``: enrolled, or the reason it was refused."""

    def __init__(self, counters: dict[str, int]) -> None:
        self.counters = counters

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "funnel_relay_enroll",
            "Enrollment requests, by outcome (enrolled, or the refusal reason).",
            labels=["outcome"],
        )
        for outcome, n in sorted(self.counters.items()):
            family.add_metric([outcome], n)
        yield family


def attach_enroll(relay: RelayService) -> EnrollService:
    """Add enrollment to a relay (the twistd entry point does; tests in-process may)."""
    service = EnrollService(relay)
    service.setServiceParent(relay)
    return service
