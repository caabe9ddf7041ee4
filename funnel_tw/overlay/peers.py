"""What both overlays set up alike: the WireGuard Device with its peers, and the packet filter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..wireguard.constants import DEFAULT, Constants
from ..wireguard.device import Device
from .filter import PacketFilter
from .interface import PeerSpec
from .tunnel import resolve_endpoint


def build_device(
    private_key: bytes,
    peers: Sequence[PeerSpec],
    *,
    mtu: int = 1280,
    constants: Constants = DEFAULT,
) -> Device:
    """A Device holding ``peers``; their endpoints (names or literals) are resolved now."""
    device = Device(private_key, mtu=mtu, constants=constants)
    for spec in peers:
        endpoint = resolve_endpoint(*spec.endpoint) if spec.endpoint else None
        device.add_peer(
            spec.public_key,
            name=spec.name,
            allowed_ips=spec.allowed_ips,
            endpoint=endpoint,
            persistent_keepalive=spec.persistent_keepalive,
            preshared_key=spec.preshared_key,
        )
    return device


def build_filter(
    device: Device,
    restricted: Mapping[str, frozenset[int]] | None,
    addresses: set[bytes],
) -> PacketFilter:
    """The filter for the peers named in ``restricted`` (name -> the only TCP ports they may
    reach on our ``addresses``)."""
    return PacketFilter(
        {p: restricted[p.name] for p in device.peers if restricted and p.name in restricted},
        addresses,
    )
