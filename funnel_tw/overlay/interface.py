"""An overlay interface: a WireGuard tunnel plus what answers on the overlay addresses.

Both daemons build one from their configuration: the node from ``[node]`` and its ``[peer]``
sections, the relay from ``[relay]`` and its ``[node]`` sections.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger

from ..wireguard.constants import DEFAULT, Constants
from ..wireguard.device import Device
from .icmp import EchoService
from .tunnel import Tunnel, resolve_endpoint

log = Logger()


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


class PingTimeout(Exception):
    """No echo reply within the timeout."""


class OverlayInterface:
    """WireGuard on a UDP port with ICMP echo on ``addresses``."""

    def __init__(
        self,
        reactor: Any,
        *,
        private_key: bytes,
        addresses: Sequence[IPv4Interface | IPv6Interface],
        peers: Sequence[PeerSpec],
        listen_port: int = 0,
        mtu: int = 1280,
        constants: Constants = DEFAULT,
    ) -> None:
        self.reactor = reactor
        self.addresses = tuple(addresses)
        self.device = Device(private_key, mtu=mtu, constants=constants)
        for spec in peers:
            endpoint = resolve_endpoint(*spec.endpoint) if spec.endpoint else None
            self.device.add_peer(
                spec.public_key,
                name=spec.name,
                allowed_ips=spec.allowed_ips,
                endpoint=endpoint,
                persistent_keepalive=spec.persistent_keepalive,
                preshared_key=spec.preshared_key,
            )
        self.listen_port = listen_port
        self.tunnel: Tunnel | None = None
        self.echo = EchoService([a.ip.packed for a in self.addresses], self._send)
        self._ping_ident = itertools.count(1)

    def _send(self, packet: bytes) -> bool:
        return self.tunnel is not None and self.tunnel.send_packet(packet)

    def start(self) -> None:
        self.tunnel = Tunnel(
            self.reactor,
            self.device,
            listen_port=self.listen_port,
            packet_handler=self.echo.packet_received,
        )
        self.tunnel.start()

    def stop(self) -> None:
        if self.tunnel is not None:
            self.tunnel.stop()
            self.tunnel = None

    @property
    def port(self) -> int:
        assert self.tunnel is not None
        return self.tunnel.port

    def source_for(self, dst: IPv4Address | IPv6Address) -> bytes:
        for interface in self.addresses:
            if interface.version == dst.version:
                return interface.ip.packed
        raise ValueError(f"no overlay address of IPv{dst.version}")

    def ping(
        self, dst: IPv4Address | IPv6Address, seq: int, timeout: float = 2.0, size: int = 56
    ) -> defer.Deferred[float]:
        """Echo ``dst``; fires with the round-trip time or fails with PingTimeout."""
        started = self.reactor.seconds()
        ident = next(self._ping_ident) & 0xFFFF
        result: defer.Deferred[float] = defer.Deferred()

        def replied(_: object) -> None:
            if not result.called:
                call.cancel()
                result.callback(self.reactor.seconds() - started)

        def expired() -> None:
            self.echo.waiters.pop((ident, seq), None)
            result.errback(PingTimeout(f"no reply from {dst} seq {seq}"))

        call = self.reactor.callLater(timeout, expired)
        self.echo.ping(self.source_for(dst), dst.packed, ident, seq, bytes(size), replied)
        return result

    def stats(self) -> dict[str, int]:
        counters = self.device.stats()
        for reason, count in self.echo.drops.items():
            counters[f"drop_overlay_{reason}"] = count
        counters["echo_answered"] = self.echo.answered
        if self.tunnel is not None:
            counters["udp_send_errors"] = self.tunnel.udp.send_errors
        return counters
