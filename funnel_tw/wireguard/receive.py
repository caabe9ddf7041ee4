"""The receive path (wireguard-go's receive.go): decapsulation, roaming, the source check.

Transport data is handled inline, one loop over the batch: find the keypair by index, check
its age and counter, decrypt, check the replay window, promote a ``next`` keypair (its first
packet confirms the responder's session), follow the peer to its new endpoint (roaming), run
the receive timer hooks, then check that the inner packet's source address is one the peer is
allowed to use (cryptokey routing, cached per address). Handshake messages are only queued
here; handshake.py processes them after the batch.
"""

from __future__ import annotations

import struct

from .constants import HANDSHAKE_QUEUE_SIZE
from .handshake import Handshaking
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

__all__ = ["Receiving"]

_TRANSPORT_FIELDS = struct.Struct("<IQ")
_HANDSHAKE_SIZES = {
    HEADER_INITIATION: INITIATION_SIZE,
    HEADER_RESPONSE: RESPONSE_SIZE,
    HEADER_COOKIE_REPLY: COOKIE_REPLY_SIZE,
}


class Receiving(Handshaking):
    """Datagrams in, source-checked IP packets (and queued handshake messages) out."""

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
        address_owner = self._address_owner
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
            plain = keypair.receive.open(data)
            if plain is None:
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
            # timers: data received
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
            try:
                owner = address_owner[address]
            except KeyError:
                owner = self._lookup_owner(address)
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

    def _promote(self, peer: Peer, keypair: Keypair, now: float) -> None:
        """The first packet on a ``next`` keypair: the responder's session is confirmed."""
        dropped = peer.keypairs.promote(keypair)
        if dropped is not None:
            self._forget_keypairs([dropped])
        self._handshake_complete(peer, now, initiator=False)
        self._send_staged(peer, now)
