"""The enrollment files in a state-dir: what ``funnel-tw join`` and the relay's enroll listener
write, and what loading node.ini / relay.ini reads beside the file (docs/operations.md).

- relay: ``<state-dir>/enrolled-nodes.json``: the nodes that enrolled with a token. Loading
  relay.ini adds them to the ``[node NAME]`` sections, so the relay, a reload, ``check-config``
  and ``status`` all see one node list.
- node: ``<state-dir>/enrollment.json``: the relay it joined (key, endpoint, overlay networks)
  and the addresses and hostnames it was given; loading node.ini adds the relay as a
  funnel-ingress peer and takes ``address`` from it.

Both are JSON written 0600 (atomically) by funnel-tw itself; a file that does not parse is a
configuration error naming it, never a traceback.
"""

from __future__ import annotations

import json
import os
import tempfile
from ipaddress import ip_interface, ip_network
from pathlib import Path
from typing import Any

import attrs

from funnel_tw.keys import decode_key, encode_key

from . import values
from .model import IPInterface, IPNetwork, PeerConfig, RelayNode

__all__ = [
    "NODE_ENROLLMENT",
    "RELAY_ENROLLED",
    "Enrollment",
    "enrolled_node_record",
    "enrollment_record",
    "read_enrolled_nodes",
    "read_enrollment",
    "read_json",
    "write_private_json",
]

RELAY_ENROLLED = "enrolled-nodes.json"
NODE_ENROLLMENT = "enrollment.json"
MAX_STATE_FILE = 8 << 20


def write_private_json(path: Path, data: object) -> None:
    """Write ``data`` as JSON readable by the owner only, replacing ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    """The parsed file; ValueError with a reason for a person (too large, not JSON...)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_STATE_FILE + 1)
    except OSError as e:
        raise ValueError(f"cannot read: {e.strerror or e}") from None
    if len(data) > MAX_STATE_FILE:
        raise ValueError(f"larger than {MAX_STATE_FILE} bytes")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"not JSON: {e}") from None


def _field(record: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(record, dict) or key not in record:
        raise ValueError(f"{key!r} is missing")
    value = record[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ValueError(f"{key!r} has the wrong type")
    return value


def _strings(record: Any, key: str) -> list[str]:
    items = _field(record, key, list)
    if not all(isinstance(i, str) for i in items):
        raise ValueError(f"{key!r} is not a list of strings")
    return list(items)


def _interfaces(record: Any, key: str) -> tuple[IPInterface, ...]:
    try:
        found = tuple(ip_interface(a) for a in _strings(record, key))
    except ValueError as e:
        raise ValueError(f"{key!r}: {e}") from None
    if not found:
        raise ValueError(f"{key!r} is empty")
    return found


def _networks(record: Any, key: str) -> tuple[IPNetwork, ...]:
    try:
        return tuple(ip_network(a) for a in _strings(record, key))
    except ValueError as e:
        raise ValueError(f"{key!r}: {e}") from None


# --- the relay's enrolled nodes ---------------------------------------------------------------


def enrolled_node_record(
    name: str,
    key: bytes,
    addresses: tuple[IPInterface, ...],
    hostnames: tuple[str, ...],
    peerapi_port: int,
    enrolled_at: float,
) -> dict[str, Any]:
    return {
        "name": name,
        "public_key": encode_key(key),
        "addresses": [str(a) for a in addresses],
        "hostnames": list(hostnames),
        "peerapi_port": peerapi_port,
        "enrolled_at": enrolled_at,
    }


def relay_node(record: Any) -> RelayNode:
    """The RelayNode of one record of enrolled-nodes.json (ValueError when malformed)."""
    name = _field(record, "name", str)
    if not values.NAME.match(name):
        raise ValueError(f"{name!r} is not a node name")
    key = decode_key(_field(record, "public_key", str))
    addresses = _interfaces(record, "addresses")
    hostnames = tuple(values.hostname(h) for h in _strings(record, "hostnames"))
    if not hostnames:
        raise ValueError(f"node {name}: no hostnames")
    port = values.port(str(_field(record, "peerapi_port", int)))
    return RelayNode(
        name=name,
        public_key=key,
        allowed_ips=tuple(a.network for a in addresses),
        hostnames=hostnames,
        peerapi=(addresses[0].ip, port),
        endpoint=None,
        persistent_keepalive=0,
        preshared_key=None,
    )


def read_enrolled_nodes(path: Path) -> list[dict[str, Any]]:
    """The records of enrolled-nodes.json ([] when there is none); ValueError when malformed."""
    if not path.exists():
        return []
    data = read_json(path)
    records = _field(data, "nodes", list)
    for record in records:
        relay_node(record)  # every record is checked
    return list(records)


# --- the node's enrollment ---------------------------------------------------------------------


@attrs.frozen
class Enrollment:
    """What a node was given when it joined a relay."""

    name: str  # the node's name at the relay
    addresses: tuple[IPInterface, ...]
    hostnames: tuple[str, ...]
    relay: PeerConfig
    enrolled_at: float = 0.0


def enrollment_record(enrollment: Enrollment) -> dict[str, Any]:
    relay = enrollment.relay
    assert relay.endpoint is not None
    host, port = relay.endpoint
    fallback = relay.tcp_fallback
    return {
        "version": 1,
        "name": enrollment.name,
        "addresses": [str(a) for a in enrollment.addresses],
        "hostnames": list(enrollment.hostnames),
        "enrolled_at": enrollment.enrolled_at,
        "relay": {
            "name": relay.name,
            "public_key": encode_key(relay.public_key),
            "endpoint": _host_port(host, port),
            "allowed_ips": [str(n) for n in relay.allowed_ips],
            "persistent_keepalive": relay.persistent_keepalive,
            "tcp_fallback": _host_port(*fallback) if fallback is not None else None,
        },
    }


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def enrollment_from(data: Any) -> Enrollment:
    """An Enrollment from its JSON form (what the relay answered, or enrollment.json)."""
    relay = _field(data, "relay", dict)
    name = _field(relay, "name", str)
    if not values.NAME.match(name):
        raise ValueError(f"relay name {name!r} is not a NAME")
    node_name = _field(data, "name", str)
    if not values.NAME.match(node_name):
        raise ValueError(f"node name {node_name!r} is not a NAME")
    keepalive = _field(relay, "persistent_keepalive", int)
    allowed = _networks(relay, "allowed_ips")
    if not allowed:
        raise ValueError("'allowed_ips' is empty")
    endpoint = values.endpoint(_field(relay, "endpoint", str))
    # WireGuard over TLS when UDP is blocked: where the relay said (absent: as tcp-fallback =
    # auto, the endpoint's host and port 443; null: none)
    fallback: tuple[str, int] | None = (endpoint[0], 443)
    if "tcp_fallback" in relay:
        given = relay["tcp_fallback"]
        fallback = None if given is None else values.endpoint(_field(relay, "tcp_fallback", str))
    peer = PeerConfig(
        name=name,
        public_key=decode_key(_field(relay, "public_key", str)),
        endpoint=endpoint,
        allowed_ips=allowed,
        persistent_keepalive=values.keepalive(str(keepalive)),
        funnel_ingress=True,
        preshared_key=None,
        tcp_fallback=fallback,
    )
    at = data.get("enrolled_at", 0.0)
    return Enrollment(
        name=node_name,
        addresses=_interfaces(data, "addresses"),
        hostnames=tuple(values.hostname(h) for h in _strings(data, "hostnames")),
        relay=peer,
        enrolled_at=float(at) if isinstance(at, int | float) else 0.0,
    )


def read_enrollment(path: Path) -> Enrollment | None:
    """enrollment.json in a node's state-dir (None when the node has not joined a relay)."""
    if not path.exists():
        return None
    return enrollment_from(read_json(path))
