"""What node.ini and relay.ini share: the WireGuard interface keys of [node] / [relay], and the
checks across the peers of that interface ([peer NAME] / [node NAME])."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from funnel_tw.keys import public_key

from . import values
from .ini import Section
from .model import IPInterface, IPNetwork

__all__ = ["WireGuardKeys", "check_peers", "wireguard_keys"]


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
