"""The overlay interface: a WireGuard tunnel plus a TCP/IP stack on the overlay addresses.

Both daemons build one from their configuration: the node from ``[node]`` and its ``[peer]``
sections, the relay from ``[relay]`` and its ``[node]`` sections. Two siblings implement
:class:`OverlayInterface`: :class:`~funnel_tw.overlay.userspace.UserspaceOverlayInterface` (our
own TCP/IP stack, no privileges) and :class:`~funnel_tw.overlay.tun.TunOverlayInterface` (a
kernel TUN interface, the kernel's TCP); :func:`~funnel_tw.overlay.factory.build_overlay` picks
one. Overlay TCP is reached through Twisted endpoints (``server_endpoint``,
``client_endpoint``), so the layers above never see packets nor know which one carries them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from typing import Protocol

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTCP, IStreamClientEndpoint, IStreamServerEndpoint

from ..wireguard.device import Device
from .tunnel import ITunnelReactor, Tunnel

#: (local address, local port, remote address, remote port) of one TCP connection
ConnectionKey = tuple[bytes, int, bytes, int]


class IOverlayReactor(ITunnelReactor, IReactorTCP):
    """The reactor an overlay runs on: timers, file descriptors and (``network = tun``) the
    kernel's TCP."""


class PeerSpec(Protocol):
    """What a configured peer provides (config.PeerConfig and config.RelayNode both do)."""

    @property
    def name(self) -> str: ...
    @property
    def public_key(self) -> bytes: ...
    @property
    def allowed_ips(self) -> tuple[IPv4Network | IPv6Network, ...]: ...
    @property
    def endpoint(self) -> tuple[str, int] | None: ...
    @property
    def persistent_keepalive(self) -> int: ...
    @property
    def preshared_key(self) -> bytes | None: ...


@attrs.frozen
class StaticPeer:
    """A PeerSpec given directly rather than read from a configuration file."""

    name: str
    public_key: bytes
    allowed_ips: tuple[IPv4Network | IPv6Network, ...]
    endpoint: tuple[str, int] | None
    persistent_keepalive: int = 0
    preshared_key: bytes | None = None


class PingTimeout(Exception):
    """No echo reply within the timeout."""


def source_address(
    addresses: Sequence[IPv4Interface | IPv6Interface], dst: IPv4Address | IPv6Address
) -> bytes:
    """Our first overlay address of ``dst``'s family (packed): the source towards ``dst``."""
    for interface in addresses:
        if interface.version == dst.version:
            return interface.ip.packed
    raise ValueError(f"no overlay address of IPv{dst.version}")


class OverlayInterface(Protocol):
    """What the node, the relay, the status document and the demo use of an overlay."""

    @property
    def device(self) -> Device:
        """The WireGuard Device: its peers, routes and counters."""
        ...

    @property
    def tunnel(self) -> Tunnel | None:
        """The running tunnel (its UDP port, event handlers); None unless started."""
        ...

    @property
    def port(self) -> int:
        """The WireGuard UDP port, once started."""
        ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def server_endpoint(self, port: int) -> IStreamServerEndpoint:
        """Listen on ``port`` of our overlay addresses."""
        ...

    def client_endpoint(self, host: str, port: int, timeout: float = 30.0) -> IStreamClientEndpoint:
        """Dial ``host:port`` over the overlay, from our address of the same family."""
        ...

    def ping(
        self, dst: IPv4Address | IPv6Address, seq: int, timeout: float = 2.0, size: int = 56
    ) -> defer.Deferred[float]:
        """Echo ``dst``; fires with the round-trip time or fails with PingTimeout."""
        ...

    def stats(self) -> dict[str, int]:
        """Every counter of the overlay (WireGuard, filter, TCP/IP or TUN), by name."""
        ...

    def tcp_connections(self) -> list[ConnectionKey] | None:
        """Our TCP connections; None where the kernel owns TCP (``network = tun``)."""
        ...

    def reconfigure_peers(
        self,
        *,
        remove: Sequence[str],
        add: Sequence[PeerSpec],
        update: Sequence[tuple[PeerSpec, PeerSpec]],
        restricted: Mapping[str, frozenset[int]],
    ) -> None:
        """A reload's peer changes, applied to the running device (overlay/peers.py)."""
        ...
