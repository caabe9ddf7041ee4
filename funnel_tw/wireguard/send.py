"""The send path (wireguard-go's send.go): encapsulation, staged packets, keepalives, initiations.

A packet waits in its peer's staging queue while there is no usable keypair; sending one asks
for a handshake. Sending the initiation lives here, as in wireguard-go, because every send path
ends in it; processing the answers to it is handshake.py's. The timer hooks that each send
touches (traversal, any authenticated packet sent, data sent) are written inline, as
wireguard-go's ``timersAnyAuthenticatedPacket*`` calls, to keep :meth:`Sending._seal` one call
per packet.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from . import messages, noise
from .allowedips import packet_destination
from .keypair import Keypair
from .peer import Peer
from .state import DeviceState, Event

__all__ = ["Sending"]


class Sending(DeviceState):
    """IP packets in, transport datagrams (and the initiations they need) out."""

    def send_packet(self, packet: bytes, now: float) -> bool:
        """Route an IP packet to the peer owning its destination; False if none does."""
        address = packet_destination(packet)
        if address is None:
            self._drop("no_route")
            return False
        peer = self._owner(address)
        if peer is None:
            self._drop("no_route")
            return False
        self.send_to_peer(peer, packet, now)
        return True

    def send_packets(self, packets: list[bytes], now: float) -> None:
        """:meth:`send_packet` for each packet, in order. Each run of packets for one peer is
        sealed in one loop, with the timer hooks once per run, as wireguard-go's sequential
        sender runs them once per batch."""
        owners = self._address_owner
        run: list[bytes] = []
        run_peer: Peer | None = None
        for packet in packets:
            address = packet_destination(packet)
            if address is None:
                self._drop("no_route")
                continue
            try:  # _owner, inlined: a call per packet of a download
                peer = owners[address]
            except KeyError:
                peer = self._lookup_owner(address)
            if peer is None:
                self._drop("no_route")
                continue
            if peer is not run_peer:
                if run_peer is not None:
                    self._send_run(run_peer, run, now)
                    run = []
                run_peer = peer
            run.append(packet)
        if run_peer is not None:
            self._send_run(run_peer, run, now)

    def _send_run(self, peer: Peer, packets: list[bytes], now: float) -> None:
        """Seal ``packets`` (IP packets, none empty) for ``peer`` in one loop when its current
        keypair may seal them all and none of them is due to start a new handshake; else one
        at a time, as send_to_peer does (so staging, drops and a rekey come in the same order
        either way)."""
        keypair = peer.keypairs.current
        endpoint = peer.endpoint
        c = self.constants
        if (
            keypair is None
            or peer.staged
            or endpoint is None
            or keypair.send_counter + len(packets) > c.rekey_after_messages
            or now - keypair.created >= c.reject_after_time
            or (keypair.is_initiator and now - keypair.created > c.rekey_after_time)
        ):
            for packet in packets:
                self.send_to_peer(peer, packet, now)
            return
        counter = keypair.send_counter
        sent = keypair.send.seal_run(
            keypair.header, counter, packets, self.mtu, endpoint, self.outgoing
        )
        keypair.send_counter = counter + len(packets)
        peer.tx_bytes += sent
        peer.tx_packets += len(packets)
        # timers, once for the run: traversal, any authenticated packet sent, data sent
        if peer.persistent_keepalive:
            peer.t_persistent_keepalive = now + peer.persistent_keepalive
        peer.t_send_keepalive = None
        if peer.t_new_handshake is None:
            peer.t_new_handshake = now + c.new_handshake_after + self._jitter()

    def send_to_peer(self, peer: Peer, packet: bytes, now: float) -> None:
        keypair = peer.keypairs.current
        if (
            keypair is None
            or peer.staged
            or keypair.send_counter >= self.constants.reject_after_messages
            or now - keypair.created >= self.constants.reject_after_time
        ):
            if len(peer.staged) == peer.staged.maxlen:
                self._drop("staged_overflow")
            peer.staged.append(packet)
            self._send_staged(peer, now)
            return
        self._seal(peer, keypair, packet, now)

    def _send_staged(self, peer: Peer, now: float) -> None:
        keypair = peer.keypairs.current
        if (
            keypair is None
            or keypair.send_counter >= self.constants.reject_after_messages
            or now - keypair.created >= self.constants.reject_after_time
        ):
            self._send_initiation(peer, now, retry=False)
            return
        while peer.staged:
            self._seal(peer, keypair, peer.staged.popleft(), now)

    def _send_keepalive(self, peer: Peer, now: float) -> None:
        if not peer.staged:
            peer.staged.append(b"")
        self._send_staged(peer, now)

    def _seal(self, peer: Peer, keypair: Keypair, packet: bytes, now: float) -> None:
        counter = keypair.send_counter
        keypair.send_counter = counter + 1
        datagram = keypair.send.seal(keypair.header, counter, packet, self.mtu)
        endpoint = peer.endpoint
        if endpoint is None:
            self._drop("no_endpoint")
        else:
            self.outgoing.append((datagram, endpoint))
        peer.tx_bytes += len(datagram)
        # timers: traversal, any authenticated packet sent, data sent
        if peer.persistent_keepalive:
            peer.t_persistent_keepalive = now + peer.persistent_keepalive
        peer.t_send_keepalive = None
        if packet:
            peer.tx_packets += 1
            if peer.t_new_handshake is None:
                peer.t_new_handshake = now + self.constants.new_handshake_after + self._jitter()
        # keep the key fresh
        if counter >= self.constants.rekey_after_messages or (
            keypair.is_initiator and now - keypair.created > self.constants.rekey_after_time
        ):
            self._send_initiation(peer, now, retry=False)

    def _send_raw(self, peer: Peer, datagram: bytes) -> None:
        """A handshake message: counts as an authenticated packet sent."""
        peer.t_send_keepalive = None
        if peer.endpoint is None:
            self._drop("no_endpoint")
            return
        peer.tx_bytes += len(datagram)
        self.outgoing.append((datagram, peer.endpoint))

    def _packet_traversed(self, peer: Peer, now: float) -> None:
        if peer.persistent_keepalive:
            peer.t_persistent_keepalive = now + peer.persistent_keepalive

    def _send_initiation(self, peer: Peer, now: float, retry: bool) -> None:
        if not retry:
            peer.handshake_attempts = 0
        if now - peer.last_sent_handshake < self.constants.rekey_timeout:
            return
        peer.last_sent_handshake = now
        if peer.static_static is None:
            self._drop("invalid_peer_key")
            return
        hs = peer.handshake
        if hs.local_index:
            self._handshakes.pop(hs.local_index, None)
        hs.ephemeral = X25519PrivateKey.generate()
        sealed = noise.initiation_seal(
            ephemeral=hs.ephemeral,
            local_static=self.private,
            remote_static=peer.public_key,
            static_static=peer.static_static,
            payload=noise.tai64n(now),
        )
        hs.chain_key = sealed.chain_key
        hs.hash = sealed.hash
        hs.local_index = self._new_index()
        hs.state = noise.State.INITIATION_CREATED
        self._handshakes[hs.local_index] = peer
        message = messages.pack_initiation(
            messages.Initiation(
                hs.local_index, sealed.ephemeral, sealed.encrypted_static, sealed.encrypted_payload
            )
        )
        self._packet_traversed(peer, now)
        self._send_raw(peer, peer.cookies.add_macs(message, now))
        peer.t_retransmit_handshake = now + self.constants.rekey_timeout + self._jitter()
        self.events.append(Event("handshake-initiated", peer, True))
