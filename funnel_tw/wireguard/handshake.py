"""Handshake messages in (wireguard-go's receive.go handshake routine and noise-protocol.go).

Initiations, responses and cookie replies wait in a queue and are processed after each batch
of datagrams, so a burst of them is seen as load: with 128 or more queued, a handshake that
lacks a valid mac2 is answered with a cookie reply, and each source address is rate-limited.
A completed exchange becomes a keypair here (``_begin_session``, wireguard-go's
BeginSymmetricSession); the Noise arithmetic itself is noise.py's.
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from . import messages, noise
from .constants import UNDER_LOAD_QUEUE_SIZE
from .keypair import Keypair
from .peer import Endpoint, Peer
from .send import Sending
from .state import MAX_UNKNOWN_REPORTED, Event

__all__ = ["Handshaking"]


class _StaticLookup(noise.StaticLookup):
    """Finds the peer an initiation claims to come from, by its decrypted static key."""

    def __init__(self, peers_by_key: dict[bytes, Peer]) -> None:
        self.peers_by_key = peers_by_key
        self.peer: Peer | None = None
        self.remote_static: bytes | None = None

    def static_static(self, remote_static: bytes) -> bytes | None:
        self.remote_static = remote_static
        self.peer = self.peers_by_key.get(remote_static)
        return None if self.peer is None else self.peer.static_static


class Handshaking(Sending):
    """The handshake queue: load decisions, then initiations, responses and cookie replies."""

    def _process_handshakes(self, now: float) -> None:
        queue = self._handshake_queue
        if len(queue) >= UNDER_LOAD_QUEUE_SIZE:
            self._under_load_until = now + self.constants.under_load_after
        under_load = now < self._under_load_until
        while queue:
            data, source = queue.popleft()
            try:
                self._handle_handshake_message(data, source, now, under_load)
            except noise.HandshakeError:
                self._drop("handshake")

    def _handle_handshake_message(
        self, data: bytes, source: Endpoint, now: float, under_load: bool
    ) -> None:
        kind = data[0]
        if kind == messages.MSG_COOKIE_REPLY:
            reply = messages.unpack_cookie_reply(data)
            owner = self._handshakes.get(reply.receiver)
            if owner is None:
                keypair = self._keypairs.get(reply.receiver)
                owner = keypair.peer if keypair is not None else None
            if owner is None or not owner.cookies.consume_reply(data, now):
                self._drop("cookie_reply")
            return
        if not self.cookie_checker.check_mac1(data):
            self._drop("mac1")
            return
        if under_load:
            if not self.cookie_checker.check_mac2(data, source, now):
                sender = struct.unpack_from("<I", data, 4)[0]
                answer = self.cookie_checker.create_reply(data, sender, source, now)
                self.outgoing.append((answer, source))
                self.cookie_replies_sent += 1
                return
            if not self.rate_limiter.allow(source[0], now):
                self._drop("rate_limited")
                return
        if kind == messages.MSG_INITIATION:
            self._consume_initiation(data, source, now)
        else:
            self._consume_response(data, source, now)

    def _consume_initiation(self, data: bytes, source: Endpoint, now: float) -> None:
        msg = messages.unpack_initiation(data)
        lookup = _StaticLookup(self.peers_by_key)
        try:
            opened = noise.initiation_open(
                local_static=self.private,
                local_public=self.public_key,
                ephemeral=msg.ephemeral,
                encrypted_static=msg.static,
                encrypted_payload=msg.timestamp,
                lookup=lookup,
            )
        except noise.HandshakeError:
            if lookup.remote_static is not None and lookup.peer is None:
                # a sender that knows our public key but is not one of our peers: usually a
                # node or relay whose key is missing from this side's configuration
                self._drop("unknown_peer")
                if len(self.unknown_initiations) < MAX_UNKNOWN_REPORTED:
                    self.unknown_initiations.append((lookup.remote_static, source))
                return
            raise
        peer = lookup.peer
        assert peer is not None
        hs = peer.handshake
        if opened.payload <= hs.last_timestamp:
            self._drop("initiation_replay")
            return
        if now - hs.last_initiation_consumption <= self.constants.handshake_initiation_rate:
            self._drop("initiation_flood")
            return
        hs.last_timestamp = opened.payload
        hs.last_initiation_consumption = now
        # as wireguard-go: answering counts as our handshake, so we do not start a racing one,
        # and the initiation counts as an authenticated packet received
        peer.last_sent_handshake = now
        peer.t_new_handshake = None
        if hs.local_index:
            self._handshakes.pop(hs.local_index, None)
        ephemeral = X25519PrivateKey.generate()
        e_pub, sealed, ck, h = noise.response_seal(
            chain_key=opened.chain_key,
            hash_=opened.hash,
            ephemeral=ephemeral,
            remote_ephemeral=opened.remote_ephemeral,
            remote_static=peer.public_key,
            preshared_key=peer.preshared_key,
        )
        hs.state = noise.State.RESPONSE_CREATED
        hs.remote_index = msg.sender
        hs.local_index = self._new_index()
        hs.chain_key = ck
        hs.hash = h
        peer.endpoint = source
        response = messages.pack_response(
            messages.Response(hs.local_index, msg.sender, e_pub, sealed)
        )
        datagram = peer.cookies.add_macs(response, now)
        self._begin_session(peer, now, initiator=False)
        self._packet_traversed(peer, now)
        self._send_raw(peer, datagram)

    def _consume_response(self, data: bytes, source: Endpoint, now: float) -> None:
        msg = messages.unpack_response(data)
        peer = self._handshakes.get(msg.receiver)
        if peer is None:
            self._drop("unknown_index")
            return
        hs = peer.handshake
        if hs.state is not noise.State.INITIATION_CREATED or hs.ephemeral is None:
            self._drop("handshake_state")
            return
        _, ck, h = noise.response_open(
            chain_key=hs.chain_key,
            hash_=hs.hash,
            ephemeral=hs.ephemeral,
            local_static=self.private,
            remote_ephemeral=msg.ephemeral,
            preshared_key=peer.preshared_key,
            sealed_payload=msg.empty,
        )
        hs.chain_key = ck
        hs.hash = h
        hs.remote_index = msg.sender
        hs.state = noise.State.RESPONSE_CONSUMED
        peer.endpoint = source
        peer.t_new_handshake = None  # an authenticated packet received
        self._begin_session(peer, now, initiator=True)
        self._handshake_complete(peer, now, initiator=True)
        self._send_keepalive(peer, now)

    def _begin_session(self, peer: Peer, now: float, initiator: bool) -> None:
        hs = peer.handshake
        first, second = noise.split(hs.chain_key)
        send, receive = (first, second) if initiator else (second, first)
        keypair = Keypair(
            send_key=send,
            receive_key=receive,
            is_initiator=initiator,
            local_index=hs.local_index,
            remote_index=hs.remote_index,
            created=now,
            peer=peer,
        )
        self._handshakes.pop(hs.local_index, None)
        self._keypairs[hs.local_index] = keypair
        hs.clear()
        self._forget_keypairs(peer.keypairs.install(keypair))
        peer.sent_last_minute_handshake = False
        peer.t_zero_key_material = now + self.constants.zero_key_material_after

    def _handshake_complete(self, peer: Peer, now: float, initiator: bool) -> None:
        peer.t_retransmit_handshake = None
        peer.handshake_attempts = 0
        peer.last_handshake = now
        self.handshakes_completed += 1
        self.events.append(Event("handshake-complete", peer, initiator))
