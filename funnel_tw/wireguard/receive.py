"""The receive path (wireguard-go's receive.go): decapsulation, roaming, the source check.

Transport data is handled inline, in runs: consecutive datagrams for one keypair (under load,
nearly the whole batch) go to its key's ``open_run``, which opens them, checks each counter
against the replay window and each inner packet's framing in one call (C when built: the
per-datagram Python this saves was a third of the relay's time in a download,
docs/performance.md lever 21). Per run, not per datagram: the keypair's age, the promotion of a
``next`` keypair (its first packet confirms the responder's session: a run of one), roaming
to the last authenticated source, the receive timer hooks, and the check that the inner
packets' source address is one the peer may use (cryptokey routing, cached per address; per
packet only when a run's sources differ). Handshake messages are only queued here;
handshake.py processes them after the batch.
"""

from __future__ import annotations

import struct

from .allowedips import packet_source
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
        keypairs = self._keypairs
        unpack = _TRANSPORT_FIELDS.unpack_from
        i = 0
        n = len(batch)
        while i < n:
            data, source = batch[i]
            head = data[:4]
            if head != HEADER_TRANSPORT:
                if _HANDSHAKE_SIZES.get(head) == len(data):
                    if len(self._handshake_queue) >= HANDSHAKE_QUEUE_SIZE:
                        self._drop("handshake_queue_full")
                    else:
                        self._handshake_queue.append((data, source))
                else:
                    self._drop("malformed")
                i += 1
                continue
            if len(data) < TRANSPORT_MIN_SIZE:
                self._drop("malformed")
                i += 1
                continue
            receiver, counter = unpack(data, 4)
            keypair = keypairs.get(receiver)
            if keypair is None:
                self._drop("unknown_index")
                i += 1
                continue
            if counter >= reject_after_messages or now - keypair.created >= reject_after_time:
                self._drop("expired_keypair")
                i += 1
                continue
            promoting = keypair is keypair.peer.keypairs.next
            end = self._run(keypair, receiver, batch, i, i + 1 if promoting else n, promoting, now)
            if end == i:  # not a (bytes, source) pair the run could read: never loop on it
                self._drop("malformed")
                end += 1
            i = end
        self.rx_datagrams += n
        if self._handshake_queue:
            self._process_handshakes(now)

    def _run(
        self,
        keypair: Keypair,
        receiver: int,
        batch: tuple[tuple[bytes, Endpoint], ...] | list[tuple[bytes, Endpoint]],
        start: int,
        stop: int,
        promoting: bool,
        now: float,
    ) -> int:
        """One keypair's run of datagrams from ``start``; returns where it ended."""
        c = self.constants
        (
            end,
            packets,
            authenticated,
            data,
            size,
            source,
            address,
            uniform,
            failed,
            replayed,
            bad,
        ) = keypair.receive.open_run(
            batch, start, stop, receiver, keypair.replay, c.reject_after_messages
        )
        if failed:
            self._drop("decrypt", failed)
        if replayed:
            self._drop("replay", replayed)
        if bad:
            self._drop("bad_inner_packet", bad)
        if not authenticated:
            return end
        peer: Peer = keypair.peer
        if promoting:
            self._promote(peer, keypair, now)
        peer.endpoint = source
        peer.rx_bytes += size
        current = peer.keypairs.current
        if (
            current is not None
            and current.is_initiator
            and now - current.created > c.last_minute_rekey_age
            and not peer.sent_last_minute_handshake
        ):
            peer.sent_last_minute_handshake = True
            self._send_initiation(peer, now, retry=False)
        # timers: any authenticated packet traversed, any authenticated packet received
        if peer.persistent_keepalive:
            peer.t_persistent_keepalive = now + peer.persistent_keepalive
        peer.t_new_handshake = None
        if data:  # timers: data received (the first may arm the keepalive, the rest ask again)
            if peer.t_send_keepalive is None:
                peer.t_send_keepalive = now + c.keepalive_timeout
                if data > 1:
                    peer.need_another_keepalive = True
            else:
                peer.need_another_keepalive = True
        if not packets:
            return end
        if uniform and address is not None:
            if self._owner(address) is peer:
                peer.rx_packets += len(packets)
                self.incoming.extend([(packet, peer) for packet in packets])
            else:
                self._drop("allowed_ips", len(packets))
            return end
        for packet in packets:  # sources differ: each one checked (open_run framed them)
            inner = packet_source(packet)
            if inner is not None and self._owner(inner) is peer:
                peer.rx_packets += 1
                self.incoming.append((packet, peer))
            else:
                self._drop("allowed_ips")
        return end

    def _promote(self, peer: Peer, keypair: Keypair, now: float) -> None:
        """The first packet on a ``next`` keypair: the responder's session is confirmed."""
        dropped = peer.keypairs.promote(keypair)
        if dropped is not None:
            self._forget_keypairs([dropped])
        self._handshake_complete(peer, now, initiator=False)
        self._send_staged(peer, now)
