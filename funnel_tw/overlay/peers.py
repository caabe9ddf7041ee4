"""What both overlays set up alike: the WireGuard Device with its peers, and the packet filter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..wireguard.constants import DEFAULT, Constants
from ..wireguard.device import Device
from .filter import PacketFilter
from .interface import PeerSpec
from .tunnel import Tunnel, resolve_endpoint


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


def reconfigure_peers(
    device: Device,
    packet_filter: PacketFilter,
    tunnel: Tunnel | None,
    *,
    remove: Sequence[str],
    add: Sequence[PeerSpec],
    update: Sequence[tuple[PeerSpec, PeerSpec]],
    restricted: Mapping[str, frozenset[int]],
    now: float,
) -> None:
    """A reload's peer changes on a running device: ``remove`` by name, ``add`` new ones,
    ``update`` (old, new) peers whose key stays (a changed key is a remove and an add; the
    endpoint is set only if the configured one changed, else the learned one stays). The filter then
    restricts exactly the peers named in ``restricted``. New endpoints are resolved first, so a
    name that does not resolve raises OSError before anything changes."""
    endpoints = {
        spec.name: resolve_endpoint(*spec.endpoint) if spec.endpoint else None
        for spec in (*add, *(new for old, new in update if new.endpoint != old.endpoint))
    }
    if tunnel is not None:
        endpoints = {
            name: tunnel.udp.native_address(*ep) if ep is not None else None
            for name, ep in endpoints.items()
        }
    by_name = {p.name: p for p in device.peers}
    for name in remove:
        device.remove_peer(by_name[name])
    for _, spec in update:
        device.update_peer(
            by_name[spec.name],
            allowed_ips=spec.allowed_ips,
            endpoint=endpoints.get(spec.name),
            persistent_keepalive=spec.persistent_keepalive,
            preshared_key=spec.preshared_key,
        )
    for spec in add:
        peer = device.add_peer(
            spec.public_key,
            name=spec.name,
            allowed_ips=spec.allowed_ips,
            endpoint=endpoints[spec.name],
            persistent_keepalive=spec.persistent_keepalive,
            preshared_key=spec.preshared_key,
        )
        if peer.persistent_keepalive and peer.endpoint is not None and tunnel is not None:
            device.greet(peer, now)  # as Device.up does for the peers present at start
    packet_filter.restricted = {p: restricted[p.name] for p in device.peers if p.name in restricted}
    if tunnel is not None:
        tunnel.after_work()
