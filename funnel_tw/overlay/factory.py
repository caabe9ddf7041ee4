"""Build the overlay a configuration asks for: userspace (our stack) or a kernel TUN device."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from ipaddress import IPv4Interface, IPv6Interface

from ..config.model import TCP_DEFAULTS, TCPBuffers
from ..wireguard.constants import DEFAULT, Constants
from .interface import IOverlayReactor, OverlayInterface, PeerSpec
from .userspace import UserspaceOverlayInterface


def build_overlay(
    reactor: IOverlayReactor,
    *,
    network: str,
    private_key: bytes,
    addresses: Sequence[IPv4Interface | IPv6Interface],
    peers: Sequence[PeerSpec],
    listen_port: int,
    mtu: int,
    constants: Constants = DEFAULT,
    restricted: Mapping[str, frozenset[int]] | None = None,
    caps: TCPBuffers = TCP_DEFAULTS,
) -> OverlayInterface:
    """``network = userspace`` (the default, no privileges) or ``tun`` (CAP_NET_ADMIN). The
    TCP buffer caps are the userspace stack's; with tun the kernel's TCP has its own."""
    if network == "tun":
        from .tun import TunOverlayInterface

        return TunOverlayInterface(
            reactor,
            private_key=private_key,
            addresses=addresses,
            peers=peers,
            listen_port=listen_port,
            mtu=mtu,
            constants=constants,
            restricted=restricted,
        )
    if network != "userspace":
        raise ValueError(f"unknown network {network!r}")
    return UserspaceOverlayInterface(
        reactor,
        private_key=private_key,
        addresses=addresses,
        peers=peers,
        listen_port=listen_port,
        mtu=mtu,
        constants=constants,
        restricted=restricted,
        caps=caps,
    )
