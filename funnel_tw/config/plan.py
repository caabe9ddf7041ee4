"""A reload's plan: what differs between the running configuration and the file just read.

A pure function of two parsed configurations (no reactor, no service), so every decision a
reload makes is unit-tested on its own. The daemon then applies the plan (node/reload.py,
relay/reload.py) and logs one line per change.

Two tables per daemon say everything:

- ``*_RESTART``: keys that cannot change under a running daemon (the WireGuard UDP socket, the
  static key, the overlay addresses, the state-dir...). If any differs the whole reload is
  refused with "KEY changed: restart to apply": never half of a file applied.
- ``*_SECTIONS``: kinds of named sections, each a function from a configuration to
  ``{name: value}``; a name only in the new file is added, only in the old one removed, in
  both with a different value changed. A new section type (``[access NAME]``, say) is one
  more line here, and the daemon's applier picks it up by its kind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import attrs

from .model import NodeConfig, RelayConfig

__all__ = [
    "COMMON_RESTART",
    "NODE_RESTART",
    "NODE_SECTIONS",
    "RELAY_RESTART",
    "RELAY_SECTIONS",
    "Change",
    "Plan",
    "node_plan",
    "peer_changes",
    "plan",
    "relay_plan",
]

C = TypeVar("C")

Restart = tuple[str, Callable[[Any], object]]
Sections = tuple[str, Callable[[Any], Mapping[str, object]]]


@attrs.frozen
class Change:
    """One thing a reload changes: ``[KIND NAME] added|removed|changed (what)``."""

    kind: str  # "peer", "node", "serve", "tls", "hostname", "setting", "public-port", ...
    action: str  # "added" | "removed" | "changed"
    name: str
    old: object = None
    new: object = None
    detail: str = ""  # which keys of a changed section, or "OLD -> NEW" of a setting

    def __str__(self) -> str:
        if self.kind == "setting":
            return f"{self.name} {self.detail}"
        label = f"{self.kind} {self.name}" if self.kind != self.name else self.kind
        text = f"[{label}] {self.action}"
        return f"{text} ({self.detail})" if self.detail else text


@attrs.frozen
class Plan:
    """The changes to apply, or why the reload is refused (then nothing is applied)."""

    changes: tuple[Change, ...] = ()
    refused: tuple[str, ...] = ()

    def of(self, *kinds: str) -> list[Change]:
        return [c for c in self.changes if c.kind in kinds]

    def touches(self, *kinds: str) -> bool:
        return any(c.kind in kinds for c in self.changes)


def _changed_fields(old: object, new: object) -> str:
    """The attrs fields that differ, as config keys (``allowed_ips`` -> ``allowed-ips``)."""
    cls: Any = type(old)
    if not (attrs.has(cls) and cls is type(new)):
        return ""
    names = [
        f.name.replace("_", "-")
        for f in attrs.fields(cls)
        if getattr(old, f.name) != getattr(new, f.name)
    ]
    return ", ".join(n for n in names if n != "preshared-key") + (
        ", preshared-key" if "preshared-key" in names else ""
    )


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value) or "(none)"
    return "(none)" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def diff_sections(kind: str, old: Mapping[str, object], new: Mapping[str, object]) -> list[Change]:
    """Added, removed and changed sections of one kind, in a stable order."""
    out = [Change(kind, "removed", name, old=old[name]) for name in old if name not in new]
    for name, value in new.items():
        if name not in old:
            out.append(Change(kind, "added", name, new=value))
        elif old[name] != value:
            detail = _changed_fields(old[name], value)
            out.append(Change(kind, "changed", name, old=old[name], new=value, detail=detail))
    return out


def plan(
    old: C,
    new: C,
    *,
    restart: Sequence[Restart],
    sections: Sequence[Sections],
    settings: Sequence[Restart] = (),
) -> Plan:
    """The generic diff: restart-only keys first (any change refuses the whole reload)."""
    refused = tuple(
        f"{key} changed: restart to apply" for key, get in restart if get(old) != get(new)
    )
    if refused:
        return Plan(refused=refused)
    changes: list[Change] = []
    for kind, items in sections:
        changes += diff_sections(kind, items(old), items(new))
    for key, get in settings:
        before, after = get(old), get(new)
        if before != after:
            detail = f"{_show(before)} -> {_show(after)}"
            changes.append(Change("setting", "changed", key, before, after, detail))
    return Plan(changes=tuple(changes))


# the fields of a [peer] / [node] section the WireGuard device holds (the key aside)
WIREGUARD_FIELDS = ("allowed_ips", "endpoint", "persistent_keepalive", "preshared_key")

P = TypeVar("P", bound="_Keyed")


class _Keyed(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def public_key(self) -> bytes: ...


def peer_changes(
    plan: Plan, kind: str, cls: type[P]
) -> tuple[list[str], list[P], list[tuple[P, P]]]:
    """What the WireGuard device must do for the ``kind`` sections of a plan: (names to
    remove, peers to add, (old, new) to update in place). A changed key is a removal and an
    addition; a change of fields the device does not hold (hostnames, funnel-ingress) is
    nothing here."""
    remove: list[str] = []
    add: list[P] = []
    update: list[tuple[P, P]] = []
    for change in plan.of(kind):
        old = change.old if isinstance(change.old, cls) else None
        new = change.new if isinstance(change.new, cls) else None
        rekeyed = old is not None and new is not None and new.public_key != old.public_key
        if old is not None and (new is None or rekeyed):
            remove.append(old.name)
        if new is not None and (old is None or rekeyed):
            add.append(new)
        elif (
            old is not None
            and new is not None
            and any(getattr(old, f) != getattr(new, f) for f in WIREGUARD_FIELDS)
        ):
            update.append((old, new))
    return remove, add, update


# --- node.ini ---------------------------------------------------------------------------------

# keys of both daemons that only a restart applies: the WireGuard identity and socket, the
# state folder, the userspace TCP stack's buffer caps (the stack is built once), and the
# listeners and files of metrics and access logs
COMMON_RESTART: list[Restart] = [
    ("listen-port", lambda c: c.listen_port),
    ("private-key", lambda c: c.private_key),
    ("address", lambda c: c.addresses),
    ("state-dir", lambda c: c.state_dir),
    ("mtu", lambda c: c.mtu),
    ("tcp-receive-buffer-max", lambda c: c.tcp.receive_buffer_max),
    ("tcp-send-buffer-max", lambda c: c.tcp.send_buffer_max),
    ("tcp-memory", lambda c: c.tcp.memory),
    ("tcp-max-connections", lambda c: c.tcp.connections),
    ("tcp-path-memory", lambda c: c.tcp.path_memory),
    ("tcp-timestamps", lambda c: c.tcp.timestamps),
    ("tcp-congestion", lambda c: c.tcp.congestion),
    ("metrics-listen", lambda c: c.ops.metrics_listen),
    ("access-log", lambda c: c.ops.access_log),
    ("access-log-format", lambda c: c.ops.access_log_format),
]

NODE_RESTART: list[Restart] = [
    *COMMON_RESTART,
    ("network", lambda c: c.network),
    ("peerapi-port", lambda c: c.peerapi_port),
    ("inspect-*", lambda c: c.inspect),  # the inspector's listener and ring (docs/inspector.md)
]

NODE_SECTIONS: list[Sections] = [
    ("peer", lambda c: {p.name: p for p in c.peers}),
    ("hostname", lambda c: {h: h for h in c.hostnames}),
    ("tls", lambda c: {"tls": c.tls}),
    ("serve", lambda c: {str(s.key): s for s in c.serve}),
    ("access", lambda c: {a.name: a for a in c.access}),
]


def node_plan(old: NodeConfig, new: NodeConfig) -> Plan:
    return plan(old, new, restart=NODE_RESTART, sections=NODE_SECTIONS)


# --- relay.ini --------------------------------------------------------------------------------

RELAY_RESTART: list[Restart] = [
    *COMMON_RESTART,
    ("public-address", lambda c: c.public_address),
    ("http-redirect-port", lambda c: c.http_redirect_port),
    ("enroll-port, public-endpoint, node-addresses", lambda c: c.enroll),
]

RELAY_SECTIONS: list[Sections] = [
    ("node", lambda c: {n.name: n for n in c.nodes}),
    ("public-port", lambda c: {str(p): p for p in c.public_ports}),
]

RELAY_SETTINGS: list[Restart] = [
    ("client-hello-timeout", lambda c: c.client_hello_timeout),
    ("ingress-connect-timeout", lambda c: c.ingress_connect_timeout),
    ("idle-timeout", lambda c: c.idle_timeout),
    ("max-connections", lambda c: c.max_connections),
    ("max-connections-per-ip", lambda c: c.max_connections_per_ip),
    ("shutdown-timeout", lambda c: c.shutdown_timeout),
    ("tcp-fallback", lambda c: c.tcp_fallback),
    ("balance", lambda c: (c.balance, c.balance_by_name)),
]


def relay_plan(old: RelayConfig, new: RelayConfig) -> Plan:
    return plan(old, new, restart=RELAY_RESTART, sections=RELAY_SECTIONS, settings=RELAY_SETTINGS)
