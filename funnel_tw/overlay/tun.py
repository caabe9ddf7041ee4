"""``network = tun``: the same WireGuard Device, read and written through a kernel TUN interface.

In this mode the Linux kernel owns TCP on the overlay addresses: :class:`TunOverlayInterface`
creates a TUN interface (``ftw0``, ``ftw1``, ...), puts the node's overlay addresses on it, routes
every peer's allowed IPs to it, and then moves packets between that interface and the WireGuard
tunnel. The overlay endpoints are plain Twisted TCP bound to the overlay addresses
(:mod:`~funnel_tw.overlay.kernel_tcp`).

::

    kernel TCP/IP  <-- TUN fd -->  PacketFilter / Device  <-- UDP -->  peers
    (tun_device.py: TunDevice)     (this module: TunOverlayInterface)

It is a sibling of :class:`~funnel_tw.overlay.userspace.UserspaceOverlayInterface`: both provide
:class:`~funnel_tw.overlay.interface.OverlayInterface`, and share the Device and filter set-up
(:mod:`~funnel_tw.overlay.peers`) and the :class:`~funnel_tw.overlay.tunnel.Tunnel`.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..netstack.icmp import Echo, echo_request, parse_echo_reply
from ..netstack.ip import PROTO_ICMP, PROTO_ICMPV6, IPError, parse
from ..wireguard.constants import DEFAULT, Constants
from ..wireguard.device import Peer
from .interface import IOverlayReactor, PeerSpec, PingTimeout, source_address
from .kernel_tcp import TunClientEndpoint, TunServerEndpoint
from .peers import build_device, build_filter, reconfigure_peers
from .tun_device import DEFAULT_NAME, TUN_PATH, TunDevice
from .tunnel import Tunnel

log = Logger()


class TunOverlayInterface:
    """WireGuard on a UDP port with the kernel's TCP/IP stack on ``addresses`` (via TUN).

    It provides :class:`OverlayInterface`, as its userspace sibling does; only the data path
    differs. Packets the kernel routes to the TUN interface go to :meth:`Device.send_packet`;
    packets the Device decrypts pass the same per-peer :class:`PacketFilter` as in userspace
    mode, must be addressed to one of our overlay addresses (the node is not a router), and are
    written to the TUN fd. Replies to our own :meth:`ping` are taken out before they reach the
    kernel.
    """

    def __init__(
        self,
        reactor: IOverlayReactor,
        *,
        private_key: bytes,
        addresses: Sequence[IPv4Interface | IPv6Interface],
        peers: Sequence[PeerSpec],
        listen_port: int = 0,
        mtu: int = 1280,
        constants: Constants = DEFAULT,
        restricted: Mapping[str, frozenset[int]] | None = None,
        interface_name: str = DEFAULT_NAME,
        tun_path: str = TUN_PATH,
    ) -> None:
        self.reactor = reactor
        self.addresses = tuple(addresses)
        self.device = build_device(private_key, peers, mtu=mtu, constants=constants)
        self.listen_port = listen_port
        self.tunnel: Tunnel | None = None
        self._local = frozenset(a.ip.packed for a in self.addresses)
        self.filter = build_filter(self.device, restricted, set(self._local))
        self.mtu = mtu
        self.interface_name = interface_name
        self.tun_path = tun_path
        self.tun: TunDevice | None = None
        self._ping_ident = itertools.count(random.randrange(1, 0xFFFF))
        self._ping_waiters: dict[tuple[int, int], defer.Deferred[Echo]] = {}
        self._ping_sources: dict[tuple[int, int], bytes] = {}
        self._ping_calls: dict[tuple[int, int], IDelayedCall] = {}
        self.drop_not_local = 0

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def interface(self) -> str | None:
        """The kernel's name for our TUN interface (``ftw0``...), once started."""
        return self.tun.name if self.tun is not None else None

    @property
    def port(self) -> int:
        assert self.tunnel is not None
        return self.tunnel.port

    def routes(self) -> list[IPv4Network | IPv6Network]:
        """Every peer's allowed IPs: what the kernel must send into the tunnel."""
        return [network for peer in self.device.peers for network in peer.allowed_ips]

    def start(self) -> None:
        """Create and configure the TUN interface, then open the WireGuard UDP port.

        Raises :class:`~funnel_tw.overlay.tun_device.TunError` (with nothing left behind) when
        the interface cannot be made.
        """
        tun = TunDevice(self.reactor, self._from_kernel, self.interface_name, self.tun_path)
        try:
            tun.configure(self.mtu, self.addresses, self.routes())
            self.tunnel = Tunnel(
                self.reactor,
                self.device,
                listen_port=self.listen_port,
                packet_handler=self._packet,
            )  # no batch handler: packets went to the kernel as they were decrypted
        except BaseException:
            tun.close()
            raise
        self.tun = tun
        log.info(
            "TUN interface {name} up: {addresses}, mtu {mtu}, routes {routes}",
            name=tun.name,
            addresses=", ".join(a.with_prefixlen for a in self.addresses),
            mtu=self.mtu,
            routes=", ".join(str(n) for n in self.routes()) or "(none)",
        )
        self.tunnel.start()
        tun.start_reading()

    def stop(self) -> None:
        for key, call in list(self._ping_calls.items()):
            if call.active():
                call.cancel()
            self._ping_sources.pop(key, None)
            waiter = self._ping_waiters.pop(key, None)
            if waiter is not None:
                waiter.errback(PingTimeout(f"overlay stopped before a reply to seq {key[1]}"))
        self._ping_calls.clear()
        if self.tun is not None:
            self.tun.close()
            log.info("TUN interface {name} removed", name=self.tun.name)
            # keep self.tun for its counters; it is closed
        if self.tunnel is not None:
            self.tunnel.after_work()
            self.tunnel.stop()
            self.tunnel = None

    # --- packets -------------------------------------------------------------------------------

    def _from_kernel(self, packets: list[bytes]) -> None:
        """Packets the kernel routed to the TUN interface: into the tunnel, sent in bulk."""
        if self.tunnel is None:
            return
        self.device.send_packets(packets, self.reactor.seconds())
        self.tunnel.after_work()

    def _packet(self, packet: bytes, peer: Peer) -> None:
        if not self.filter.allows(packet, peer):
            return
        version = packet[0] >> 4
        if version == 4:
            dst, protocol = packet[16:20], packet[9]
        else:
            dst, protocol = packet[24:40], packet[6]
        if dst not in self._local:
            self.drop_not_local += 1
            return
        if self._ping_waiters and protocol in (PROTO_ICMP, PROTO_ICMPV6) and self._our_echo(packet):
            return
        if self.tun is not None:
            self.tun.write(packet)

    def _our_echo(self, packet: bytes) -> bool:
        """True if ``packet`` answers one of our pings (then it is consumed here)."""
        try:
            echo = parse_echo_reply(parse(packet))
        except IPError:
            return False
        if echo is None:
            return False
        key = (echo.ident, echo.sequence)
        if self._ping_sources.get(key) != echo.src:
            return False
        self._ping_sources.pop(key)
        waiter = self._ping_waiters.pop(key, None)
        if waiter is not None:
            waiter.callback(echo)
        return True

    # --- TCP for the layers above: the kernel's ------------------------------------------------

    def server_endpoint(self, port: int) -> TunServerEndpoint:
        return TunServerEndpoint(self.reactor, self.addresses, port)

    def client_endpoint(self, host: str, port: int, timeout: float = 30.0) -> TunClientEndpoint:
        return TunClientEndpoint(self.reactor, self.addresses, host, port, timeout)

    def reconfigure_peers(
        self,
        *,
        remove: Sequence[str],
        add: Sequence[PeerSpec],
        update: Sequence[tuple[PeerSpec, PeerSpec]],
        restricted: Mapping[str, frozenset[int]],
    ) -> None:
        """A reload's peer changes (overlay/peers.py), and the kernel
        routes follow the allowed IPs."""
        before = set(self.routes())
        reconfigure_peers(
            self.device,
            self.filter,
            self.tunnel,
            remove=remove,
            add=add,
            update=update,
            restricted=restricted,
            now=self.reactor.seconds(),
        )
        after = set(self.routes())
        if self.tun is not None:
            self.tun.update_routes(add=after - before, remove=before - after)

    def tcp_connections(self) -> None:
        """The kernel owns TCP here: ``ss`` lists its connections, we do not."""
        return None

    # --- ICMP ----------------------------------------------------------------------------------

    def source_for(self, dst: IPv4Address | IPv6Address) -> bytes:
        return source_address(self.addresses, dst)

    def ping(
        self, dst: IPv4Address | IPv6Address, seq: int, timeout: float = 2.0, size: int = 56
    ) -> defer.Deferred[float]:
        """Echo ``dst`` from our overlay address through the tunnel (not through the kernel);
        fires with the round-trip time or fails with PingTimeout."""
        src = self.source_for(dst)  # ValueError without an address of that family, as ever
        reactor = self.reactor
        started = reactor.seconds()
        ident = next(self._ping_ident) & 0xFFFF or 1
        seq &= 0xFFFF
        key = (ident, seq)
        waiter: defer.Deferred[Echo] = defer.Deferred()
        self._ping_waiters[key] = waiter
        self._ping_sources[key] = dst.packed
        result: defer.Deferred[float] = defer.Deferred()

        def replied(_: Echo) -> None:
            call = self._ping_calls.pop(key, None)
            if call is not None and call.active():
                call.cancel()
            result.callback(reactor.seconds() - started)

        def failed(failure: Failure) -> None:
            result.errback(failure)

        def expired() -> None:
            self._ping_calls.pop(key, None)
            self._ping_sources.pop(key, None)
            if self._ping_waiters.pop(key, None) is not None:
                waiter.errback(PingTimeout(f"no reply from {dst} seq {seq}"))

        self._ping_calls[key] = reactor.callLater(timeout, expired)
        waiter.addCallbacks(replied, failed)
        self.device.send_packet(echo_request(src, dst.packed, ident, seq, bytes(size)), started)
        if self.tunnel is not None:
            self.tunnel.after_work()
        return result

    def stats(self) -> dict[str, int]:
        counters = self.device.stats()
        counters.update(self.filter.stats())
        counters["drop_not_local"] = self.drop_not_local
        if self.tun is not None:
            counters.update(self.tun.stats())
        if self.tunnel is not None:
            counters["udp_send_errors"] = self.tunnel.udp.send_errors
        return counters
