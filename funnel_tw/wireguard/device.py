"""The sans-IO WireGuard device: datagrams and IP packets in, datagrams and IP packets out.

Nothing here reads a clock or touches a socket. Every entry point takes ``now`` (seconds, the
same clock for every call; wall-clock time, because TAI64N handshake timestamps must keep
increasing across restarts). Results accumulate in three lists the caller drains:

- :attr:`Device.outgoing`: ``(datagram, endpoint)`` to send over UDP;
- :attr:`Device.incoming`: ``(ip_packet, peer)`` decrypted and source-checked;
- :attr:`Device.events`: handshakes completed, given up, keys zeroed (for logs and tests).

The caller also calls :meth:`Device.tick` at :meth:`Device.next_deadline`.

Handshake messages are queued and processed after each batch of datagrams
(:meth:`Device.receive_batch`), so a burst of them is seen as load: with 128 or more queued, the
device answers handshakes that lack a valid mac2 with a cookie reply and rate-limits each source.
"""

from __future__ import annotations

import random
import struct
from collections import deque
from ipaddress import IPv4Network, IPv6Network
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from . import crypto, messages, noise
from .allowedips import AllowedIPs
from .constants import DEFAULT, HANDSHAKE_QUEUE_SIZE, UNDER_LOAD_QUEUE_SIZE, Constants
from .cookie import CookieChecker
from .keypair import Keypair
from .messages import (
    COOKIE_REPLY_SIZE,
    HEADER_COOKIE_REPLY,
    HEADER_INITIATION,
    HEADER_RESPONSE,
    HEADER_TRANSPORT,
    INITIATION_SIZE,
    RESPONSE_SIZE,
    TRANSPORT_MIN_SIZE,
)
from .peer import Endpoint, Peer
from .ratelimit import RateLimiter

__all__ = ["Device", "Endpoint", "Event", "Peer"]

_COUNTER = struct.Struct("<Q")
_TRANSPORT_FIELDS = struct.Struct("<IQ")
_NONCE_PREFIX = b"\x00\x00\x00\x00"
_PADDING = bytes(16)
_SOURCE_CACHE_SIZE = 4096
_UNKNOWN: object = object()
_HANDSHAKE_SIZES = {
    HEADER_INITIATION: INITIATION_SIZE,
    HEADER_RESPONSE: RESPONSE_SIZE,
    HEADER_COOKIE_REPLY: COOKIE_REPLY_SIZE,
}


class Event(NamedTuple):
    kind: str  # handshake-complete | handshake-failed | keys-zeroed | handshake-initiated
    peer: Peer
    initiator: bool = False


class _StaticLookup(noise.StaticLookup):
    def __init__(self, device: Device) -> None:
        self.device = device
        self.peer: Peer | None = None

    def static_static(self, remote_static: bytes) -> bytes | None:
        self.peer = self.device.peers_by_key.get(remote_static)
        return None if self.peer is None else self.peer.static_static


class Device:
    """A WireGuard interface: our static key, our peers, the index table and the timers."""

    def __init__(
        self,
        private_key: bytes,
        *,
        mtu: int = 1420,
        constants: Constants = DEFAULT,
        rng: random.Random | None = None,
    ) -> None:
        self.private = X25519PrivateKey.from_private_bytes(private_key)
        self.public_key = crypto.public_key(self.private)
        self.mtu = mtu
        self.constants = constants
        self.rng = rng or random.SystemRandom()
        self.cookie_checker = CookieChecker(
            self.public_key, constants.cookie_refresh_time, self._random_bytes
        )
        self.rate_limiter = RateLimiter()
        self.peers: list[Peer] = []
        self.peers_by_key: dict[bytes, Peer] = {}
        self.routes: AllowedIPs[Peer] = AllowedIPs()
        self._source_owner: dict[bytes, Peer | None] = {}  # inner source address -> owner
        self._keypairs: dict[int, Keypair] = {}  # local index -> keypair
        self._handshakes: dict[int, Peer] = {}  # local index -> peer with a handshake under way
        self._handshake_queue: deque[tuple[bytes, Endpoint]] = deque()
        self._under_load_until = float("-inf")
        self.outgoing: list[tuple[bytes, Endpoint]] = []
        self.incoming: list[tuple[bytes, Peer]] = []
        self.events: list[Event] = []
        self.rx_datagrams = 0
        self.drops: dict[str, int] = {}
        self.handshakes_completed = 0
        self.cookie_replies_sent = 0

    # --- configuration ---------------------------------------------------------------------

    def _random_bytes(self, n: int) -> bytes:
        return self.rng.getrandbits(8 * n).to_bytes(n, "little")

    def add_peer(
        self,
        public_key: bytes,
        *,
        name: str = "",
        allowed_ips: tuple[IPv4Network | IPv6Network, ...] = (),
        endpoint: Endpoint | None = None,
        persistent_keepalive: int = 0,
        preshared_key: bytes | None = None,
    ) -> Peer:
        if public_key in self.peers_by_key:
            raise ValueError("duplicate peer public key")
        if public_key == self.public_key:
            raise ValueError("a peer cannot have the device's own public key")
        peer = Peer(
            name=name or crypto.hash_(public_key).hex()[:8],
            public_key=public_key,
            local_private=self.private,
            allowed_ips=allowed_ips,
            endpoint=endpoint,
            persistent_keepalive=persistent_keepalive,
            preshared_key=preshared_key,
            cookie_refresh_time=self.constants.cookie_refresh_time,
        )
        self.peers.append(peer)
        self.peers_by_key[public_key] = peer
        for network in allowed_ips:
            self.routes.insert(network, peer)
        self._source_owner.clear()
        return peer

    def up(self, now: float) -> None:
        """The socket is ready: peers with a persistent keepalive and an endpoint say hello."""
        for peer in self.peers:
            if peer.persistent_keepalive and peer.endpoint is not None:
                self._send_keepalive(peer, now)

    def greet(self, peer: Peer, now: float) -> None:
        """Start a session with ``peer`` now (a keepalive, so a handshake if there is none)."""
        self._send_keepalive(peer, now)

    # --- bookkeeping ------------------------------------------------------------------------

    def _drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def _new_index(self) -> int:
        while True:
            index = self.rng.getrandbits(32)
            if index and index not in self._keypairs and index not in self._handshakes:
                return index

    def _forget_keypairs(self, dropped: list[Keypair]) -> None:
        for keypair in dropped:
            self._keypairs.pop(keypair.local_index, None)

    def _jitter(self) -> float:
        return self.rng.uniform(0.0, self.constants.rekey_timeout_jitter)

    def stats(self) -> dict[str, int]:
        """Counters for logs, status and tests: ``drop_<reason>`` plus totals."""
        out = {f"drop_{k}": v for k, v in self.drops.items()}
        out["rx_datagrams"] = self.rx_datagrams
        out["handshakes"] = self.handshakes_completed
        out["cookie_replies"] = self.cookie_replies_sent
        out["rx_packets"] = sum(p.rx_packets for p in self.peers)
        out["tx_packets"] = sum(p.tx_packets for p in self.peers)
        out["rx_bytes"] = sum(p.rx_bytes for p in self.peers)
        out["tx_bytes"] = sum(p.tx_bytes for p in self.peers)
        out["keypairs"] = len(self._keypairs)
        return out

    # --- receiving --------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, source: Endpoint, now: float) -> None:
        """A batch of one; see :meth:`receive_batch`."""
        self.receive_batch(((data, source),), now)

    def receive_batch(
        self, batch: tuple[tuple[bytes, Endpoint], ...] | list[tuple[bytes, Endpoint]], now: float
    ) -> None:
        """Process datagrams that arrived together. Never raises on hostile input."""
        c = self.constants
        reject_after_time = c.reject_after_time
        reject_after_messages = c.reject_after_messages
        last_minute_age = c.last_minute_rekey_age
        keepalive_timeout = c.keepalive_timeout
        keypairs = self._keypairs
        incoming = self.incoming
        source_owner = self._source_owner
        unpack = _TRANSPORT_FIELDS.unpack_from
        received = 0
        for data, source in batch:
            received += 1
            n = len(data)
            head = data[:4]
            if head != HEADER_TRANSPORT:
                if _HANDSHAKE_SIZES.get(head) == n:
                    if len(self._handshake_queue) >= HANDSHAKE_QUEUE_SIZE:
                        self._drop("handshake_queue_full")
                    else:
                        self._handshake_queue.append((data, source))
                else:
                    self._drop("malformed")
                continue
            if n < TRANSPORT_MIN_SIZE:
                self._drop("malformed")
                continue
            receiver, counter = unpack(data, 4)
            keypair = keypairs.get(receiver)
            if keypair is None:
                self._drop("unknown_index")
                continue
            if counter >= reject_after_messages or now - keypair.created >= reject_after_time:
                self._drop("expired_keypair")
                continue
            try:
                plain = keypair.receive.decrypt(_NONCE_PREFIX + data[8:16], data[16:], None)
            except crypto.InvalidTag:
                self._drop("decrypt")
                continue
            if not keypair.replay.validate(counter, reject_after_messages):
                self._drop("replay")
                continue
            peer: Peer = keypair.peer
            if keypair is peer.keypairs.next:
                self._promote(peer, keypair, now)
            peer.endpoint = source
            peer.rx_bytes += n
            current = peer.keypairs.current
            if (
                current is not None
                and current.is_initiator
                and now - current.created > last_minute_age
                and not peer.sent_last_minute_handshake
            ):
                peer.sent_last_minute_handshake = True
                self._send_initiation(peer, now, retry=False)
            # timers: any authenticated packet traversed, any authenticated packet received
            if peer.persistent_keepalive:
                peer.t_persistent_keepalive = now + peer.persistent_keepalive
            peer.t_new_handshake = None
            if not plain:
                continue  # a keepalive
            if peer.t_send_keepalive is None:
                peer.t_send_keepalive = now + keepalive_timeout
            else:
                peer.need_another_keepalive = True
            version = plain[0] >> 4
            if version == 4 and len(plain) >= 20:
                total = (plain[2] << 8) | plain[3]
                address = plain[12:16]
            elif version == 6 and len(plain) >= 40:
                total = 40 + ((plain[4] << 8) | plain[5])
                address = plain[8:24]
            else:
                self._drop("bad_inner_packet")
                continue
            owner = source_owner.get(address, _UNKNOWN)
            if owner is _UNKNOWN:
                owner = self._lookup_source(address)
            if owner is not peer:
                self._drop("allowed_ips")
                continue
            if total > len(plain) or total < 20:
                self._drop("bad_inner_packet")
                continue
            if total != len(plain):
                plain = plain[:total]
            peer.rx_packets += 1
            incoming.append((plain, peer))
        self.rx_datagrams += received
        if self._handshake_queue:
            self._process_handshakes(now)

    def _lookup_source(self, address: bytes) -> Peer | None:
        """Slow path of the inner source check; results are cached until the routes change."""
        if len(self._source_owner) >= _SOURCE_CACHE_SIZE:
            self._source_owner.clear()
        lookup = self.routes.lookup_v4 if len(address) == 4 else self.routes.lookup_v6
        owner = self._source_owner[address] = lookup(address)
        return owner

    def _promote(self, peer: Peer, keypair: Keypair, now: float) -> None:
        dropped = peer.keypairs.promote(keypair)
        if dropped is not None:
            self._forget_keypairs([dropped])
        self._handshake_complete(peer, now, initiator=False)
        self._send_staged(peer, now)

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
        lookup = _StaticLookup(self)
        opened = noise.initiation_open(
            local_static=self.private,
            local_public=self.public_key,
            ephemeral=msg.ephemeral,
            encrypted_static=msg.static,
            encrypted_payload=msg.timestamp,
            lookup=lookup,
        )
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

    # --- sending ----------------------------------------------------------------------------

    def send_packet(self, packet: bytes, now: float) -> bool:
        """Route an IP packet to the peer owning its destination; False if none does."""
        peer = self.routes.lookup_packet_destination(packet)
        if peer is None:
            self._drop("no_route")
            return False
        self.send_to_peer(peer, packet, now)
        return True

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
        n = len(packet)
        mtu = self.mtu
        if n:
            last = n % mtu if n > mtu else n
            padded = (last + 15) & ~15
            if padded > mtu:
                padded = mtu
            if padded != last:
                packet += _PADDING[: padded - last]
        counter_bytes = _COUNTER.pack(counter)
        datagram = (
            HEADER_TRANSPORT
            + keypair.remote_index.to_bytes(4, "little")
            + counter_bytes
            + keypair.send.encrypt(_NONCE_PREFIX + counter_bytes, packet, None)
        )
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
        if n:
            peer.tx_packets += 1
            if peer.t_new_handshake is None:
                peer.t_new_handshake = now + self.constants.new_handshake_after + self._jitter()
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

    # --- timers -----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (p.next_deadline() for p in self.peers) if d is not None]
        return min(deadlines) if deadlines else None

    def tick(self, now: float) -> None:
        """Run every timer that is due at ``now``."""
        c = self.constants
        for peer in self.peers:
            t = peer.t_retransmit_handshake
            if t is not None and t <= now:
                peer.t_retransmit_handshake = None
                if peer.handshake_attempts > c.max_timer_handshakes:
                    peer.t_send_keepalive = None
                    if peer.staged:
                        self.drops["staged_gave_up"] = self.drops.get("staged_gave_up", 0) + len(
                            peer.staged
                        )
                        peer.staged.clear()
                    if peer.t_zero_key_material is None:
                        peer.t_zero_key_material = now + c.zero_key_material_after
                    self.events.append(Event("handshake-failed", peer, True))
                else:
                    peer.handshake_attempts += 1
                    self._send_initiation(peer, now, retry=True)
            t = peer.t_send_keepalive
            if t is not None and t <= now:
                peer.t_send_keepalive = None
                self._send_keepalive(peer, now)
                if peer.need_another_keepalive:
                    peer.need_another_keepalive = False
                    peer.t_send_keepalive = now + c.keepalive_timeout
            t = peer.t_new_handshake
            if t is not None and t <= now:
                peer.t_new_handshake = None
                self._send_initiation(peer, now, retry=False)
            t = peer.t_zero_key_material
            if t is not None and t <= now:
                peer.t_zero_key_material = None
                self._forget_keypairs(peer.keypairs.clear())
                if peer.handshake.local_index:
                    self._handshakes.pop(peer.handshake.local_index, None)
                peer.handshake.clear()
                self.events.append(Event("keys-zeroed", peer))
            t = peer.t_persistent_keepalive
            if t is not None and t <= now:
                peer.t_persistent_keepalive = None
                if peer.persistent_keepalive:
                    self._send_keepalive(peer, now)
