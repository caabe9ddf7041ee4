"""A kernel TUN interface (``ftw0``...): raw IP packets in and out of one file descriptor.

Closing the file descriptor deletes the interface, and with it its addresses and routes, so
nothing outlives the process, however it ends. Creating the interface needs CAP_NET_ADMIN; a
missing privilege is reported as a :class:`TunError` with a readable message.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterable, Sequence
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network

from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["DEFAULT_NAME", "TUN_PATH", "TunDevice", "TunError"]

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
        reactor: IReactorFDSet,
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
        routes: Sequence[IPv4Network | IPv6Network],
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

    def update_routes(
        self,
        *,
        add: Iterable[IPv4Network | IPv6Network],
        remove: Iterable[IPv4Network | IPv6Network],
    ) -> None:
        """A reload changed the peers' allowed IPs: delete and add routes through us."""
        for network in remove:
            family = "-4" if network.version == 4 else "-6"
            try:
                _ip_command([family, "route", "del", str(network), "dev", self.name])
            except TunError as e:
                log.warn("route {network}: {error}", network=str(network), error=e)
        for network in add:
            family = "-4" if network.version == 4 else "-6"
            try:
                _ip_command([family, "route", "add", str(network), "dev", self.name])
            except TunError as e:
                log.warn("route {network}: {error}", network=str(network), error=e)

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
