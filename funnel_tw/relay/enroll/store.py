"""The relay's invitations and enrolled nodes, kept in state-dir (no Twisted, time passed in).

- ``enroll-tokens.json``: one entry per invitation, keyed by the SHA-256 of its secret (the
  secret itself is never stored): hostnames granted, name, expiry, single-use or reusable, uses.
- ``enrolled-nodes.json`` (config/enrolled.py): the nodes that enrolled; loading relay.ini adds
  them to its [node] sections.

Both are written 0600 and atomically, nodes before tokens, so a token is consumed only once its
node is on disk. An enrollment decides everything here (:meth:`EnrollStore.redeem`); the
listener only carries bytes, and relay/enroll/live.py applies the result to the running relay.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, ip_interface, ip_network
from pathlib import Path
from typing import Any

from ...config import RelayConfig
from ...config.enrolled import (
    RELAY_ENROLLED,
    enrolled_node_record,
    read_enrolled_nodes,
    read_json,
    relay_node,
    write_private_json,
)
from ...config.model import IPInterface, IPNetwork
from ...daemon.enroll import new_secret, secret_hash
from ...keys import encode_key

TOKENS = "enroll-tokens.json"
DEFAULT_EXPIRY = 3600.0
MAX_EXPIRY = 365 * 86400.0
KEEP_EXPIRED = 86400.0  # an expired token is remembered this long, to say "expired"
MAX_TOKENS = 10000
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


class Refused(Exception):
    """An enrollment or invitation refused; ``reason`` is a key of daemon/enroll.REFUSALS
    (or ``invite`` for an invitation), the message is for a person."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _valid_token(entry: Any) -> bool:
    """A token entry as :meth:`EnrollStore.invite` writes it (others are dropped at load)."""
    if not isinstance(entry, dict):
        return False
    hostnames = entry.get("hostnames")
    return (
        isinstance(hostnames, list)
        and bool(hostnames)
        and all(isinstance(h, str) for h in hostnames)
        and isinstance(entry.get("expires"), int | float)
        and isinstance(entry.get("uses"), int)
        and isinstance(entry.get("reusable"), bool)
        and isinstance(entry.get("name"), str | None)
    )


class EnrollStore:
    def __init__(self, state_dir: Path) -> None:
        self.tokens_path = state_dir / TOKENS
        self.nodes_path = state_dir / RELAY_ENROLLED
        self.tokens: dict[str, dict[str, Any]] = {}
        self.nodes: list[dict[str, Any]] = []

    def load(self) -> None:
        """Read both files; ValueError naming the file when one is damaged."""
        try:
            self.nodes = read_enrolled_nodes(self.nodes_path)
        except ValueError as e:
            raise ValueError(f"{self.nodes_path}: {e}") from None
        if not self.tokens_path.exists():
            return
        try:
            data = read_json(self.tokens_path)
            tokens = data["tokens"] if isinstance(data, dict) else None
            if not isinstance(tokens, dict):
                raise ValueError("no 'tokens' table")
        except (ValueError, KeyError) as e:
            raise ValueError(f"{self.tokens_path}: {e}") from None
        self.tokens = {k: v for k, v in tokens.items() if _valid_token(v)}

    def _save_tokens(self) -> None:
        write_private_json(self.tokens_path, {"version": 1, "tokens": self.tokens})

    def _save_nodes(self) -> None:
        write_private_json(self.nodes_path, {"version": 1, "nodes": self.nodes})

    def prune(self, now: float) -> None:
        for key, entry in list(self.tokens.items()):
            if now > float(entry.get("expires", 0)) + KEEP_EXPIRED:
                del self.tokens[key]

    # --- invitations -----------------------------------------------------------------------

    def invite(
        self,
        config: RelayConfig,
        hostnames: tuple[str, ...],
        now: float,
        *,
        name: str | None = None,
        expires: float = DEFAULT_EXPIRY,
        reusable: bool = False,
    ) -> bytes:
        """A new invitation; returns its secret (only its hash is kept)."""
        if not 0 < expires <= MAX_EXPIRY:
            raise Refused("invite", f"expires must be 1..{int(MAX_EXPIRY)} seconds")
        self.prune(now)
        if len(self.tokens) >= MAX_TOKENS:
            raise Refused("invite", f"{MAX_TOKENS} invitations are pending: let some expire")
        secret = new_secret()
        self.tokens[secret_hash(secret)] = {
            "hostnames": list(hostnames),
            "name": name,
            "created": now,
            "expires": now + expires,
            "reusable": reusable,
            "uses": 0,
        }
        self._save_tokens()
        return secret

    # --- enrollment ------------------------------------------------------------------------

    def redeem(
        self, config: RelayConfig, secret: bytes, key: bytes, peerapi_port: int, now: float
    ) -> dict[str, Any]:
        """Enroll the node with ``key``: its record (new, or its old one with the token's
        hostnames). Refused says why not; nothing is changed then. A hostname another node
        serves is shared: the nodes form a pool, as [node] sections listing one name do."""
        digest = secret_hash(secret)
        entry = self.tokens.get(digest)
        if entry is None:
            raise Refused("bad_token", "no such token")
        if now >= float(entry["expires"]):
            raise Refused("expired_token", "token expired")
        if entry["uses"] and not entry["reusable"]:
            raise Refused("used_token", "single-use token already used")
        # names another node serves too: the two form a pool (relay/balance.py)
        hostnames = tuple(entry["hostnames"])
        old = next((r for r in self.nodes if r["public_key"] == encode_key(key)), None)
        if old is not None:
            name = old["name"]
            addresses = tuple(ip_interface(a) for a in old["addresses"])
        else:
            name = self._name(config, entry.get("name") or hostnames[0].removeprefix("*."))
            addresses = self._assign(config)
        record = enrolled_node_record(name, key, addresses, hostnames, peerapi_port, now)
        relay_node(record)  # a record that could not be loaded again is never written
        self.nodes = [r for r in self.nodes if r is not old] + [record]
        self._save_nodes()
        entry["uses"] += 1
        entry["last_used"] = now
        self._save_tokens()
        return record

    def _name(self, config: RelayConfig, wanted: str) -> str:
        base = _NAME_CHARS.sub("-", wanted).strip("-._")[:60] or "node"
        taken = {n.name for n in config.nodes} | {r["name"] for r in self.nodes}
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}-{n}"
        return name

    def _assign(self, config: RelayConfig) -> tuple[IPInterface, ...]:
        """The lowest free address of the first pool of each family in node-addresses."""
        assert config.enroll is not None
        used: list[IPNetwork] = [ip_network(a.ip) for a in config.addresses]
        used += [net for n in config.nodes for net in n.allowed_ips]
        used += [ip_interface(a).network for r in self.nodes for a in r["addresses"]]
        out: list[IPInterface] = []
        families: set[int] = set()
        for pool in config.enroll.node_addresses:
            if pool.version in families:
                continue
            free = next(_free(pool, used), None)
            if free is not None:
                out.append(free)
                families.add(pool.version)
        if not out:
            raise Refused("no_address_left", "node-addresses has no free address")
        return tuple(out)

    def remove(self, name: str) -> bool:
        kept = [r for r in self.nodes if r["name"] != name]
        if len(kept) == len(self.nodes):
            return False
        self.nodes = kept
        self._save_nodes()
        return True


def _free(pool: IPNetwork, used: list[IPNetwork]) -> Iterator[IPInterface]:
    """Free single addresses of ``pool``, lowest first (never the network or broadcast one);
    at most a million are tried."""
    v4 = isinstance(pool, IPv4Network)
    first = int(pool.network_address) + 1
    last = int(pool.broadcast_address) - (1 if v4 else 0)
    # single addresses (most of them) in a set; the few wider networks checked one by one
    hosts = {
        int(net.network_address)
        for net in used
        if net.num_addresses == 1 and net.version == pool.version
    }
    wide = [
        (int(net.network_address), int(net.broadcast_address))
        for net in used
        if net.num_addresses > 1 and net.version == pool.version
    ]
    for value in range(first, min(last, first + 1_000_000) + 1):
        if value in hosts or any(low <= value <= high for low, high in wide):
            continue
        yield IPv4Interface((value, 32)) if v4 else IPv6Interface((value, 128))
