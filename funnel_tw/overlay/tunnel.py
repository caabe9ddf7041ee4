"""Twisted glue around the sans-IO WireGuard Device: the UDP socket, the clock and timers.

``Tunnel`` feeds datagram batches from :class:`UDPSocket` into the Device, sends what it
produces, hands decrypted IP packets to ``packet_handler``, logs its events and keeps one
reactor call scheduled for the Device's next timer deadline.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorFDSet, IReactorTime
from twisted.logger import Logger

from ..keys import encode_key
from ..turn import Soon, end_of_turn
from ..wireguard.device import Device, Peer
from .stream import is_stream_address
from .udp import Address, Batch, UDPSocket

PacketHandler = Callable[[bytes, Peer], None]


class ITunnelReactor(IReactorTime, IReactorFDSet):
    """What a tunnel needs of its reactor: a clock and timers, and the UDP socket's reads."""


log = Logger()


UNKNOWN_LOG_INTERVAL = 60.0  # seconds between two warnings about the same unknown key
UNKNOWN_LOG_KEYS = 256  # unknown keys remembered for that


class StreamSink(Protocol):
    """A TCP fallback link seen from the tunnel: where datagrams for its address go."""

    def send(self, datagrams: list[bytes]) -> None: ...


def display_endpoint(endpoint: Address | None) -> str:
    if endpoint is None:
        return "(none)"
    host, port = endpoint
    if is_stream_address(endpoint):
        return host.partition("#")[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def resolve_endpoint(host: str, port: int) -> tuple[str, int]:
    """Resolve a configured endpoint (a name or a literal) to an address, at start-up."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    address = info[0][4]
    return (str(address[0]), int(address[1]))


class Tunnel:
    """A running WireGuard interface on a UDP port."""

    def __init__(
        self,
        reactor: ITunnelReactor,
        device: Device,
        *,
        listen_port: int = 0,
        listen_host: str = "",
        packet_handler: PacketHandler | None = None,
        batch_handler: Callable[[], None] | None = None,
    ) -> None:
        self.reactor = reactor
        self.device = device
        self.packet_handler: PacketHandler = packet_handler or (lambda packet, peer: None)
        # called after each run of decrypted packets, so the layer above can answer in bulk
        self.batch_handler = batch_handler
        self.event_handlers: list[Callable[[str, Peer, bool], None]] = []
        self._timer: IDelayedCall | None = None
        self._timer_at = float("inf")
        self._flush_call: Soon | None = None
        self._unknown_logged: dict[bytes, float] = {}  # claimed key -> when last logged
        # TCP fallback links by their pseudo endpoint; ``_diverting`` once there was one, so a
        # tunnel that never had one pays nothing per batch
        self.streams: dict[Address, StreamSink] = {}
        self._diverting = False
        self.stream_drops = 0
        self.udp = UDPSocket(reactor, self._on_batch, listen_port, listen_host)
        for peer in device.peers:
            if peer.endpoint is not None:
                peer.endpoint = self.udp.native_address(*peer.endpoint)

    @property
    def port(self) -> int:
        return self.udp.port

    def start(self) -> None:
        log.info(
            "WireGuard listening on UDP port {port}, {peers} peers",
            port=self.port,
            peers=len(self.device.peers),
        )
        self.device.up(self.reactor.seconds())
        self._after_work()

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._timer = self._flush_call = None
        self.udp.close()

    # --- data path -------------------------------------------------------------------------

    def _on_batch(self, batch: Batch) -> None:
        self.device.receive_batch(batch, self.reactor.seconds())
        self._after_work()

    # --- TCP fallback links ----------------------------------------------------------------

    def attach_stream(self, address: Address, sink: StreamSink) -> None:
        """Datagrams for ``address`` (a peer's endpoint while it uses the link) go to ``sink``."""
        self.streams[address] = sink
        self._diverting = True

    def detach_stream(self, address: Address) -> None:
        self.streams.pop(address, None)

    def receive_stream(self, datagrams: list[bytes], address: Address) -> None:
        """Datagrams that came through a link: to WireGuard as if from ``address``."""
        self._on_batch([(d, address) for d in datagrams])

    def _divert(self, outgoing: Batch) -> Batch:
        """Hand the datagrams for links to them; the rest go out over UDP."""
        udp: Batch = []
        by_link: dict[Address, list[bytes]] = {}
        for datagram, address in outgoing:
            if is_stream_address(address):
                by_link.setdefault(address, []).append(datagram)
            else:
                udp.append((datagram, address))
        for address, datagrams in by_link.items():
            sink = self.streams.get(address)
            if sink is None:  # the link closed; the peer's next packet names a new endpoint
                self.stream_drops += len(datagrams)
            else:
                sink.send(datagrams)
        return udp

    def send_packet(self, packet: bytes) -> bool:
        """Send an IP packet to the peer that owns its destination (False: no such peer).

        Datagrams go out at the end of the current reactor pass, so a burst of sends becomes
        one batched write.
        """
        routed = self.device.send_packet(packet, self.reactor.seconds())
        if self._flush_call is None:
            self._flush_call = end_of_turn(self.reactor).soon(self._flush)
        return routed

    def _flush(self) -> None:
        self._flush_call = None
        self._after_work()

    def after_work(self) -> None:
        """Send what the device produced; for callers that fed it directly."""
        self._after_work()

    def _after_work(self) -> None:
        device = self.device
        while device.outgoing or device.incoming or device.events:
            if device.outgoing:
                outgoing, device.outgoing = device.outgoing, []
                if self._diverting:
                    outgoing = self._divert(outgoing)
                self.udp.send(outgoing)
            if device.incoming:
                incoming, device.incoming = device.incoming, []
                handler = self.packet_handler
                for packet, peer in incoming:
                    handler(packet, peer)
                if self.batch_handler is not None:
                    self.batch_handler()
            if device.events:
                events, device.events = device.events, []
                for event in events:
                    self._log_event(event.kind, event.peer, event.initiator)
        if device.unknown_initiations:
            unknown, device.unknown_initiations = device.unknown_initiations, []
            self._log_unknown(unknown)
        self._schedule()

    def _log_unknown(self, unknown: list[tuple[bytes, Address]]) -> None:
        """Say which key knocked, once a minute per key: the usual cause is a key missing from
        this side's configuration. The key is only claimed (anyone who knows our public key can
        claim any), so this is a hint for the operator and nothing else."""
        now = self.reactor.seconds()
        logged = self._unknown_logged
        for key, source in unknown:
            if now - logged.get(key, float("-inf")) < UNKNOWN_LOG_INTERVAL:
                continue
            if len(logged) >= UNKNOWN_LOG_KEYS:
                logged.pop(next(iter(logged)))
            logged[key] = now
            log.warn(
                "handshake from {source} with public key {key}, which is not a peer here: "
                "ignored (add it to the configuration if it is yours)",
                source=display_endpoint(source),
                key=encode_key(key),
            )

    def _log_event(self, kind: str, peer: Peer, initiator: bool) -> None:
        if kind == "handshake-complete":
            log.info(
                "handshake with {peer} complete ({role}), endpoint {endpoint}",
                peer=peer.name,
                role="initiator" if initiator else "responder",
                endpoint=display_endpoint(peer.endpoint),
            )
        elif kind == "handshake-failed":
            log.warn(
                "handshake with {peer} at {endpoint} did not complete; giving up for now{hint}",
                peer=peer.name,
                endpoint=display_endpoint(peer.endpoint),
                hint=""
                if peer.last_handshake is not None
                else f" (never answered: check that {peer.name} has this side's public key "
                f"{encode_key(self.device.public_key)} and that UDP reaches it)",
            )
        elif kind == "keys-zeroed":
            log.info("session keys for {peer} expired and were erased", peer=peer.name)
        else:
            log.debug("{kind} {peer}", kind=kind, peer=peer.name)
        for handler in self.event_handlers:
            handler(kind, peer, initiator)

    # --- timers -----------------------------------------------------------------------------

    def _schedule(self) -> None:
        deadline = self.device.next_deadline()
        if deadline is None or deadline >= self._timer_at:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer_at = deadline
        delay = max(0.0, deadline - self.reactor.seconds())
        self._timer = self.reactor.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        self.device.tick(self.reactor.seconds())
        self._after_work()
