"""The WireGuard UDP socket: batched reads (GRO) and batched writes (GSO) from Python.

Twisted's UDP port reads one datagram per ``recvfrom`` and re-validates the address on every
``write``; a tunnel moving 100k datagrams a second can afford neither. This reader drains the
socket in batches and lets the kernel coalesce same-sized datagrams (UDP_GRO), and the writer
hands runs of datagrams for the same endpoint to the kernel in one ``sendmsg`` (UDP_SEGMENT).
Both fall back to plain calls where the kernel lacks them.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable, Sequence

from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

UDP_SEGMENT = 103
UDP_GRO = 104
MAX_BATCH = 256  # datagrams (or GRO super-datagrams) per reactor pass
MAX_GSO_SEGMENTS = 64
_GSO_LIMIT = 65000  # bytes per sendmsg
_BUFFER = 4 << 20
_INT = struct.Struct("@i")
_U16 = struct.Struct("@H")

Address = tuple[str, int]
Batch = list[tuple[bytes, Address]]

log = Logger()


def _open_socket(host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket; dual-stack (IPv4 as ::ffff:a.b.c.d) when binding to all."""
    family = socket.AF_INET6 if ":" in host or host == "" else socket.AF_INET
    if host == "":
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", port))
        except OSError:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("0.0.0.0", port))
    else:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((host, port))
    sock.setblocking(False)
    for option, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):  # *BUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, _BUFFER)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, option, _BUFFER)
    return sock


@implementer(IReadDescriptor)
class UDPSocket:
    """One bound UDP socket fed into ``on_batch(list of (datagram, address))``."""

    def __init__(
        self,
        reactor: IReactorFDSet,
        on_batch: Callable[[Batch], None],
        port: int = 0,
        host: str = "",
    ) -> None:
        self.reactor = reactor
        self.on_batch = on_batch
        self.socket = _open_socket(host, port)
        self.family = self.socket.family
        self.gro = self._enable_gro()
        self.gso = True
        self.send_errors = 0
        self.datagrams_sent = 0
        self.sendmsg_calls = 0
        reactor.addReader(self)

    def _enable_gro(self) -> bool:
        try:
            self.socket.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
        except OSError:
            return False
        return True

    @property
    def port(self) -> int:
        return int(self.socket.getsockname()[1])

    def native_address(self, host: str, port: int) -> Address:
        """The form in which this socket reports ``host`` as a source (v4-mapped if dual-stack)."""
        if self.family == socket.AF_INET6 and ":" not in host:
            return (f"::ffff:{host}", port)
        return (host, port)

    # --- IReadDescriptor ------------------------------------------------------------------

    def fileno(self) -> int:
        return self.socket.fileno()

    def logPrefix(self) -> str:
        return "wireguard-udp"

    def connectionLost(self, reason: Failure) -> None:
        self.close()

    def doRead(self) -> None:
        batch: Batch = []
        sock = self.socket
        gro = self.gro
        space = socket.CMSG_SPACE(_INT.size)
        for _ in range(MAX_BATCH):
            try:
                if gro:
                    data, ancdata, _, address = sock.recvmsg(65535, space)
                else:
                    data, address = sock.recvfrom(65535)
                    ancdata = []
            except BlockingIOError:
                break
            except ConnectionRefusedError:
                continue  # an ICMP error for something we sent earlier
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EINTR):
                    break
                log.warn("UDP read error {error}", error=e)
                break
            source = (address[0], address[1])
            segment = 0
            for level, kind, value in ancdata:
                if level == socket.SOL_UDP and kind == UDP_GRO:
                    segment = _INT.unpack(value[: _INT.size])[0]
            if segment and len(data) > segment:
                for offset in range(0, len(data), segment):
                    batch.append((data[offset : offset + segment], source))
            else:
                batch.append((data, source))
        if batch:
            self.on_batch(batch)

    # --- writing ----------------------------------------------------------------------------

    def send(self, datagrams: Sequence[tuple[bytes, Address]]) -> None:
        """Send datagrams in order; a full socket buffer drops (and counts), as UDP may."""
        sock = self.socket
        i = 0
        n = len(datagrams)
        while i < n:
            data, address = datagrams[i]
            size = len(data)
            j = i + 1
            if self.gso:
                total = size
                while (
                    j < n
                    and j - i < MAX_GSO_SEGMENTS
                    and datagrams[j][1] == address
                    and total + len(datagrams[j][0]) <= _GSO_LIMIT
                ):
                    following = len(datagrams[j][0])
                    if following > size:
                        break
                    total += following
                    j += 1
                    if following < size:
                        break  # only the last segment may be shorter
            try:
                if j - i > 1:
                    sock.sendmsg(
                        [b"".join(d for d, _ in datagrams[i:j])],
                        [(socket.SOL_UDP, UDP_SEGMENT, _U16.pack(size))],
                        0,
                        address,
                    )
                else:
                    sock.sendto(data, address)
                self.sendmsg_calls += 1
                self.datagrams_sent += j - i
            except OSError as e:
                if j - i > 1 and e.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT):
                    self.gso = False
                    continue  # retry this run one datagram at a time
                self.send_errors += j - i
            i = j

    def close(self) -> None:
        if self.socket.fileno() != -1:
            self.reactor.removeReader(self)
            self.socket.close()
