"""What node.ini and relay.ini share: the WireGuard interface keys of [node] / [relay], the
userspace TCP stack's buffer caps (tcp-*), and the checks across the peers of that interface
([peer NAME] / [node NAME])."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from funnel_tw.keys import public_key

from . import values
from .ini import Section
from .model import CONGESTION, TCP_DEFAULTS, IPInterface, IPNetwork, TCPBuffers

__all__ = ["TCP_KEYS", "WireGuardKeys", "check_peers", "tcp_buffers", "wireguard_keys"]

TCP_KEYS = (
    "tcp-receive-buffer-max",
    "tcp-send-buffer-max",
    "tcp-memory",
    "tcp-max-connections",
    "tcp-path-memory",
    "tcp-timestamps",
    "tcp-congestion",
)
# netstack's tcp.RECEIVE_BUFFER and tcp.SEND_BUFFER: the window and send buffer a connection
# starts with, so a cap below them would mean nothing
_FIRST_WINDOW = 128 << 10
_FIRST_SEND_BUFFER = 2 << 20
# far below what window scale 14 allows (1 GiB): one connection holding more is a mistake
_BUFFER_CAP = 64 << 20


@attrs.frozen
class WireGuardKeys:
    """The [node] / [relay] keys both files share."""

    private_key: bytes
    listen_port: int
    addresses: tuple[IPInterface, ...]
    mtu: int


def wireguard_keys(
    section: Section, assigned: tuple[IPInterface, ...] | None = None
) -> WireGuardKeys | None:
    """The interface keys of `section`; None if a required one is missing or wrong (recorded).
    ``assigned``: the addresses a relay gave at join, used when ``address`` is absent."""
    private_key = section.secret("private-key", required=True)
    listen_port = section.opt("listen-port", values.listen_port, 41641)
    if assigned is not None and "address" in section.values:
        shown = ", ".join(str(a) for a in assigned)
        section.error("address", f"the relay assigned {shown} at join: remove this key")
    if assigned is not None:
        addresses: tuple[IPInterface, ...] | None = assigned
    else:
        addresses = section.req("address", values.interfaces)
    mtu = section.opt("mtu", lambda v: values.integer(v, 576, 9000), 1280)
    if private_key is None or addresses is None:
        return None
    if mtu < 1280 and any(a.version == 6 for a in addresses):
        section.error("mtu", f"{mtu} is below 1280, the minimum with an IPv6 address")
    return WireGuardKeys(private_key, listen_port, addresses, mtu)


def check_peers(peers: Sequence[tuple[Section, bytes, Sequence[IPNetwork]]], own: bytes) -> None:
    """One key for two peers, or one network routed to two peers, is never what was meant."""
    own_public = public_key(own)
    key_owner: dict[bytes, Section] = {}
    net_owner: dict[IPNetwork, Section] = {}
    for section, key, networks in peers:
        if key == own_public:
            section.error("public-key", "is the public key of this file's own private key")
        first = key_owner.setdefault(key, section)
        if first is not section:
            where = f"[{first.header}] (line {first.line('public-key')})"
            section.error("public-key", f"same key as {where}")
        for network in networks:
            first = net_owner.setdefault(network, section)
            if first is not section:
                where = f"[{first.header}] (line {first.line('allowed-ips')})"
                section.error("allowed-ips", f"{network} is already routed to {where}")


def _buffer_size(value: str, low: int, what: str) -> int:
    number = values.size(value)
    if number < low:
        raise ValueError(f"{value} is less than {values.size_text(low)} ({what})")
    if number > _BUFFER_CAP:
        raise ValueError(f"{value} is more than {values.size_text(_BUFFER_CAP)}")
    return number


def tcp_buffers(
    section: Section, userspace: bool = True, default: TCPBuffers = TCP_DEFAULTS
) -> TCPBuffers:
    """tcp-receive-buffer-max, tcp-send-buffer-max, tcp-memory, tcp-max-connections,
    tcp-path-memory, tcp-timestamps and tcp-congestion of [node] / [relay], each ``default``'s
    where not set. With ``network = tun`` the kernel's TCP sizes its own buffers and picks its
    own congestion control: setting one is an error."""
    if not userspace:
        for key in TCP_KEYS:
            if key in section.values:
                section.error(key, "applies to network = userspace only (tun: the kernel's TCP)")
        return default
    errors = len(section.file.errors)
    receive = section.opt(
        "tcp-receive-buffer-max",
        lambda v: _buffer_size(v, _FIRST_WINDOW, "the window a connection starts with"),
        default.receive_buffer_max,
    )
    send = section.opt(
        "tcp-send-buffer-max",
        lambda v: _buffer_size(v, _FIRST_SEND_BUFFER, "the send buffer a connection starts with"),
        default.send_buffer_max,
    )
    memory = section.opt("tcp-memory", values.size, default.memory)
    if memory < receive and len(section.file.errors) == errors:
        section.error(
            "tcp-memory",
            f"{values.size_text(memory)} is less than tcp-receive-buffer-max"
            f" ({values.size_text(receive)}): no window could grow to it",
        )
    connections = section.opt(
        "tcp-max-connections", lambda v: values.integer(v, 64, 1_000_000), default.connections
    )
    path_memory = section.opt("tcp-path-memory", _path_memory, default.path_memory)
    timestamps = section.opt("tcp-timestamps", values.boolean, default.timestamps)
    congestion = section.opt("tcp-congestion", values.choice(*CONGESTION), default.congestion)
    return TCPBuffers(
        receive_buffer_max=receive,
        send_buffer_max=send,
        memory=memory,
        connections=connections,
        path_memory=path_memory,
        timestamps=timestamps,
        congestion=congestion,
    )


def _path_memory(value: str) -> float:
    """tcp-path-memory: seconds, at most a day, or ``off``."""
    if value.lower() == "off":
        return 0.0
    number = values.seconds(value)
    if number > 86400:
        raise ValueError(f"{value} is more than a day (86400 s): a path changes")
    return number
