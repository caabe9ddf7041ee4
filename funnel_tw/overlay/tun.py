"""``network = tun``: the same WireGuard Device, read and written through a kernel TUN interface.

In this mode the Linux kernel owns TCP on the overlay addresses: :class:`TunOverlayInterface`
creates a TUN interface (``ftw0``, ``ftw1``, ...), puts the node's overlay addresses on it, routes
every peer's allowed IPs to it, and then moves packets between that interface and the WireGuard
tunnel. The overlay endpoints are plain Twisted TCP bound to the overlay addresses.

::

    kernel TCP/IP  <-- TUN fd -->  PacketFilter / Device  <-- UDP -->  peers
                                   (this module: TunDevice, TunOverlayInterface)

Closing the TUN file descriptor deletes the interface, and with it its addresses and routes, so
nothing outlives the process, however it ends. Creating the interface needs CAP_NET_ADMIN; a
missing privilege is reported as a :class:`TunError` with a readable message.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import random
import shutil
import struct
import subprocess
from collections.abc import Callable, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface, ip_address
from typing import Any

from twisted.internet import defer, error
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReadDescriptor,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..netstack.icmp import Echo, echo_request, parse_echo_reply
from ..netstack.ip import PROTO_ICMP, PROTO_ICMPV6, IPError, parse
from ..wireguard.constants import DEFAULT, Constants
from ..wireguard.device import Peer
from .endpoints import OverlayClientEndpoint, OverlayServerEndpoint
from .interface import OverlayInterface, PeerSpec, PingTimeout
from .tunnel import Tunnel

__all__ = ["TunDevice", "TunError", "TunOverlayInterface"]

log = Logger()

TUN_PATH = "/dev/net/tun"
DEFAULT_NAME = "ftw%d"  # the kernel replaces %d with the first free number
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, flags, padding to 40 bytes
_IFNAMSIZ = 16
MAX_BATCH = 256  # packets read from the TUN device per reactor pass
_READ_SIZE = 65535
_IP_TIMEOUT = 10.0


class TunError(Exception):
    """The TUN interface could not be created or configured; the message says why."""


# --------------------------------------------------------------------------- the kernel device


def _ip_command(args: Sequence[str]) -> None:
    """Run ``ip ARGS``; raise TunError with its output when it fails."""
    ip = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if ip is None:
        raise TunError("network = tun needs the iproute2 'ip' command, which was not found")
    try:
        proc = subprocess.run(
            [ip, *args], capture_output=True, text=True, timeout=_IP_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TunError(f"ip {' '.join(args)}: {e}") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise TunError(f"ip {' '.join(args)} failed: {detail}")


@implementer(IReadDescriptor)
class TunDevice:
    """A kernel TUN interface (IFF_TUN | IFF_NO_PI): raw IP packets in and out of one fd.

    The interface exists while the file descriptor is open; :meth:`close` removes it along with
    its addresses and routes. Reads are non-blocking and drained in batches of up to
    :data:`MAX_BATCH` packets per wake-up; writes never block (a full queue drops and counts).
    """

    def __init__(
        self,
        reactor: Any,
        on_packets: Callable[[list[bytes]], None],
        name: str = DEFAULT_NAME,
        path: str = TUN_PATH,
    ) -> None:
        raw_name = name.encode("ascii", "replace")
        if not raw_name or len(raw_name) >= _IFNAMSIZ or b"/" in raw_name or b" " in raw_name:
            raise TunError(f"bad TUN interface name {name!r} (at most 15 characters)")
        self.reactor = reactor
        self.on_packets = on_packets
        self.rx_packets = self.tx_packets = self.rx_bytes = self.tx_bytes = 0
        self.drop_full = self.drop_write = 0
        self.read_errors = 0
        self._reading = False
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise TunError(
                f"network = tun: cannot open {path}: {e.strerror} "
                "(tun mode needs root or CAP_NET_ADMIN and the tun kernel module; "
                "or use network = userspace)"
            ) from None
        try:
            answer = fcntl.ioctl(self.fd, TUNSETIFF, _IFREQ.pack(raw_name, IFF_TUN | IFF_NO_PI))
        except OSError as e:
            os.close(self.fd)
            self.fd = -1
            if e.errno == errno.EPERM:
                why = "tun mode needs root or CAP_NET_ADMIN; or use network = userspace"
            elif e.errno == errno.EBUSY:
                why = f"an interface named {name!r} already exists"
            else:
                why = "is the tun kernel module available?"
            raise TunError(
                f"network = tun: cannot create TUN interface {name!r}: {e.strerror} ({why})"
            ) from None
        self.name = answer[:_IFNAMSIZ].split(b"\0", 1)[0].decode("ascii", "replace")

    # --- configuration -------------------------------------------------------------------------

    def configure(
        self,
        mtu: int,
        addresses: Sequence[IPv4Interface | IPv6Interface],
        routes: Sequence[Any],
    ) -> None:
        """Set the MTU, add ``addresses`` (with their prefix), bring the link up, add ``routes``.

        A route that already exists (say the prefix route of one of our own addresses, or a
        route through another interface) is left alone with a warning; nothing is replaced.
        """
        name = self.name
        _ip_command(["link", "set", "dev", name, "mtu", str(mtu)])
        try:
            # no link-local address: the interface carries exactly the configured addresses, and
            # the kernel sends no MLD or router solicitations that no peer would route
            _ip_command(["link", "set", "dev", name, "addrgenmode", "none"])
        except TunError as e:
            log.debug("{name}: addrgenmode none: {error}", name=name, error=e)  # IPv6 off
        for address in addresses:
            if address.version == 4:
                _ip_command(["-4", "addr", "add", address.with_prefixlen, "dev", name])
            else:
                # TUN links are NOARP so the kernel skips DAD anyway; say so explicitly, since a
                # tentative address cannot be bound and listeners come right after start().
                _ip_command(["-6", "addr", "add", address.with_prefixlen, "dev", name, "nodad"])
        _ip_command(["link", "set", "dev", name, "up"])
        for network in routes:
            family = "-4" if network.version == 4 else "-6"
            try:
                _ip_command([family, "route", "add", str(network), "dev", name])
            except TunError as e:
                if "File exists" not in str(e):
                    raise
                log.warn(
                    "route {network} already exists; not replacing it (to {name})",
                    network=str(network),
                    name=name,
                )

    # --- reading -------------------------------------------------------------------------------

    def start_reading(self) -> None:
        if not self._reading and self.fd >= 0:
            self._reading = True
            self.reactor.addReader(self)

    def stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self.reactor.removeReader(self)

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return f"tun-{self.name}"

    def connectionLost(self, reason: Failure) -> None:
        self.stop_reading()

    def doRead(self) -> None:
        batch: list[bytes] = []
        read = os.read
        fd = self.fd
        for _ in range(MAX_BATCH):
            try:
                packet = read(fd, _READ_SIZE)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as e:
                # EBADFD/EIO: the interface was deleted under us. Stop, or poll spins.
                self.read_errors += 1
                log.error(
                    "reading TUN interface {name} failed ({error}); no longer reading it",
                    name=self.name,
                    error=e,
                )
                self.stop_reading()
                break
            if not packet:
                break
            batch.append(packet)
        if batch:
            self.rx_packets += len(batch)
            self.rx_bytes += sum(map(len, batch))
            self.on_packets(batch)

    # --- writing -------------------------------------------------------------------------------

    def write(self, packet: bytes) -> bool:
        """Hand one IP packet to the kernel; never blocks. False (and counted) if dropped."""
        try:
            os.write(self.fd, packet)
        except BlockingIOError:
            self.drop_full += 1
            return False
        except OSError:
            self.drop_write += 1  # EINVAL: the kernel refused a malformed packet
            return False
        self.tx_packets += 1
        self.tx_bytes += len(packet)
        return True

    def close(self) -> None:
        """Stop reading and close the fd: the kernel deletes the interface, addresses, routes."""
        self.stop_reading()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def stats(self) -> dict[str, int]:
        return {
            "tun_rx_packets": self.rx_packets,
            "tun_tx_packets": self.tx_packets,
            "tun_rx_bytes": self.rx_bytes,
            "tun_tx_bytes": self.tx_bytes,
            "drop_tun_full": self.drop_full,
            "drop_tun_write": self.drop_write,
            "tun_read_errors": self.read_errors,
        }


# --------------------------------------------------------------------------- endpoints


@implementer(IListeningPort)
class TunListeningPort:
    """One TCP listening socket per overlay address, started and stopped together."""

    def __init__(self, ports: Sequence[IListeningPort]) -> None:
        self.ports = list(ports)
        self.listening = True

    def startListening(self) -> None:
        if not self.listening:
            self.listening = True
            for port in self.ports:
                port.startListening()

    def stopListening(self) -> defer.Deferred[None]:
        self.listening = False
        stopping = [defer.maybeDeferred(port.stopListening) for port in self.ports]
        done = defer.gatherResults(stopping, consumeErrors=True)
        return done.addCallback(lambda _: None)

    def getHost(self) -> IAddress:
        host: IAddress = self.ports[0].getHost()
        return host


@implementer(IStreamServerEndpoint)
class TunServerEndpoint(OverlayServerEndpoint):
    """Kernel TCP on every overlay address of the node (v4 and v6), on the same port."""

    overlay: TunOverlayInterface

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        reactor = self.overlay.reactor
        port = self.port
        opened: list[IListeningPort] = []
        try:
            for address in self.overlay.addresses:
                listening: IListeningPort = reactor.listenTCP(
                    port, factory, interface=str(address.ip)
                )
                opened.append(listening)
                if port == 0:  # the first socket picked a free port; the others share it
                    port = int(listening.getHost().port)  # type: ignore[attr-defined]
        except Exception:
            failure = Failure()
            if not opened:
                return defer.fail(failure)
            # fail once the sockets already opened are closed, so the port is free again
            closing = TunListeningPort(opened).stopListening()
            return closing.addBoth(lambda _: failure)
        return defer.succeed(TunListeningPort(opened))


@implementer(IStreamClientEndpoint)
class TunClientEndpoint(OverlayClientEndpoint):
    """Kernel TCP to ``host:port``, from our overlay address of the same family."""

    overlay: TunOverlayInterface

    def connect(self, factory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        try:
            dst = ip_address(self.host)
            src = str(ip_address(self.overlay.source_for(dst)))
        except ValueError as e:
            return defer.fail(error.ConnectError(string=str(e)))
        reactor = self.overlay.reactor
        endpoint: TCP4ClientEndpoint | TCP6ClientEndpoint
        if dst.version == 4:
            endpoint = TCP4ClientEndpoint(
                reactor, str(dst), self.port, timeout=self.timeout, bindAddress=(src, 0)
            )
        else:
            endpoint = TCP6ClientEndpoint(  # type: ignore[no-untyped-call]
                reactor, str(dst), self.port, timeout=self.timeout, bindAddress=(src, 0)
            )
        return endpoint.connect(factory)


# --------------------------------------------------------------------------- the overlay


class TunOverlayInterface(OverlayInterface):
    """WireGuard on a UDP port with the kernel's TCP/IP stack on ``addresses`` (via TUN).

    The public API is that of :class:`OverlayInterface`; only the data path differs. Packets the
    kernel routes to the TUN interface go to :meth:`Device.send_packet`; packets the Device
    decrypts pass the same per-peer :class:`PacketFilter` as in userspace mode, must be addressed
    to one of our overlay addresses (the node is not a router), and are written to the TUN fd.
    Replies to our own :meth:`ping` are taken out before they reach the kernel.
    """

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
        restricted: Mapping[str, frozenset[int]] | None = None,
        receive_buffer: int = 1 << 20,
        interface_name: str = DEFAULT_NAME,
        tun_path: str = TUN_PATH,
    ) -> None:
        super().__init__(
            reactor,
            private_key=private_key,
            addresses=addresses,
            peers=peers,
            listen_port=listen_port,
            mtu=mtu,
            constants=constants,
            restricted=restricted,
            receive_buffer=receive_buffer,
        )
        self.mtu = mtu
        self.interface_name = interface_name
        self.tun_path = tun_path
        self.tun: TunDevice | None = None
        self._local = frozenset(a.ip.packed for a in self.addresses)
        self._ping_ident = itertools.count(random.randrange(1, 0xFFFF))
        self._ping_sources: dict[tuple[int, int], bytes] = {}
        self._ping_calls: dict[tuple[int, int], IDelayedCall] = {}
        self.drop_not_local = 0

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def interface(self) -> str | None:
        """The kernel's name for our TUN interface (``ftw0``...), once started."""
        return self.tun.name if self.tun is not None else None

    def routes(self) -> list[Any]:
        """Every peer's allowed IPs: what the kernel must send into the tunnel."""
        return [network for peer in self.device.peers for network in peer.allowed_ips]

    def start(self) -> None:
        """Create and configure the TUN interface, then open the WireGuard UDP port.

        Raises :class:`TunError` (with nothing left behind) when the interface cannot be made.
        """
        tun = TunDevice(self.reactor, self._from_kernel, self.interface_name, self.tun_path)
        try:
            tun.configure(self.mtu, self.addresses, self.routes())
            self.tunnel = Tunnel(
                self.reactor,
                self.device,
                listen_port=self.listen_port,
                packet_handler=self._packet,
                batch_handler=self._after_batch,
            )
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
        now = self.reactor.seconds()
        send = self.device.send_packet
        for packet in packets:
            send(packet, now)
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

    def _after_batch(self) -> None:
        """Nothing to batch: packets went to the kernel as they were decrypted."""

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
        return TunServerEndpoint(self, port)

    def client_endpoint(self, host: str, port: int, timeout: float = 30.0) -> TunClientEndpoint:
        return TunClientEndpoint(self, host, port, timeout)

    def add_listener(self, port: int, factory: IProtocolFactory) -> None:
        raise NotImplementedError("network = tun: listen with server_endpoint(port)")

    def connect_tcp(
        self, host: str, port: int, factory: IProtocolFactory, timeout: float = 30.0
    ) -> defer.Deferred[IProtocol]:
        return self.client_endpoint(host, port, timeout).connect(factory)

    # --- ICMP ----------------------------------------------------------------------------------

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
