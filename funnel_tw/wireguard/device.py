"""The sans-IO WireGuard device: datagrams and IP packets in, datagrams and IP packets out.

Nothing here reads a clock or touches a socket. Every entry point takes ``now`` (seconds, the
same clock for every call; wall-clock time, because TAI64N handshake timestamps must keep
increasing across restarts). Results accumulate in three lists the caller drains:

- :attr:`Device.outgoing`: ``(datagram, endpoint)`` to send over UDP;
- :attr:`Device.incoming`: ``(ip_packet, peer)`` decrypted and source-checked;
- :attr:`Device.events`: handshakes completed, given up, keys zeroed (for logs and tests).

The caller also calls :meth:`Device.tick` at :meth:`Device.next_deadline`.

The device is split as wireguard-go's ``device/`` is, into parts that are classes stacked on
one another: state.py (tables, queues, counters), send.py on it, handshake.py and timers.py on
send, receive.py on handshake; :class:`Device` composes receive and timers and adds
configuration. Classes rather than functions over a state record, because the per-packet entry
points (``send_packet``, ``receive_batch``) must stay methods with nothing behind them: an
inherited method costs what a method written here costs, while a function would need a
forwarding method, one more call per packet. Stacked in import order rather than sibling
mixins, because each part then sees the methods of the parts below it with their real types,
with no stubs and no Protocol restating the whole device, and the imports stay one-way.
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network

from . import crypto
from .peer import Endpoint, Peer
from .receive import Receiving
from .state import Event
from .timers import Timers

__all__ = ["Device", "Endpoint", "Event", "Peer"]


class Device(Receiving, Timers):
    """A WireGuard interface: our static key, our peers, the index table and the timers."""

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
        self._address_owner.clear()
        return peer

    def remove_peer(self, peer: Peer) -> None:
        """Forget ``peer`` entirely (a reload removed it): its keypairs and handshake leave the
        index table, its staged packets and timers go, its allowed IPs stop routing. Its
        transport packets then drop as ``unknown_index`` and its initiations as an unknown key."""
        if self.peers_by_key.get(peer.public_key) is not peer:
            raise ValueError(f"{peer.name} is not a peer of this device")
        self.peers.remove(peer)
        del self.peers_by_key[peer.public_key]
        self.routes.remove_peer(peer)
        self._address_owner.clear()
        self._reset_session(peer)
        for index in [i for i, owner in self._handshakes.items() if owner is peer]:
            del self._handshakes[index]
        self.incoming = [(packet, p) for packet, p in self.incoming if p is not peer]
        peer.allowed_ips = ()
        peer.endpoint = None

    def update_peer(
        self,
        peer: Peer,
        *,
        allowed_ips: tuple[IPv4Network | IPv6Network, ...],
        endpoint: Endpoint | None,
        persistent_keepalive: int,
        preshared_key: bytes | None,
    ) -> None:
        """Apply a changed configuration to a peer whose key stays (a reload): the session
        survives unless the preshared key changed (the next handshake then uses the new one).
        ``endpoint`` None keeps the one learned from the peer's packets."""
        if tuple(allowed_ips) != peer.allowed_ips:
            self.routes.remove_peer(peer)
            for network in allowed_ips:
                self.routes.insert(network, peer)
            peer.allowed_ips = tuple(allowed_ips)
            self._address_owner.clear()
        if endpoint is not None:
            peer.endpoint = endpoint
        peer.persistent_keepalive = persistent_keepalive
        if not persistent_keepalive:
            peer.t_persistent_keepalive = None
        psk = preshared_key or bytes(32)
        if psk != peer.preshared_key:
            peer.preshared_key = psk
            self._reset_session(peer)

    def _reset_session(self, peer: Peer) -> None:
        """Drop ``peer``'s keypairs, handshake, staged packets and timers."""
        self._forget_keypairs(peer.keypairs.clear())
        if peer.handshake.local_index:
            self._handshakes.pop(peer.handshake.local_index, None)
        peer.handshake.clear()
        peer.staged.clear()
        peer.handshake_attempts = 0
        peer.t_retransmit_handshake = peer.t_send_keepalive = peer.t_new_handshake = None
        peer.t_zero_key_material = peer.t_persistent_keepalive = None

    def up(self, now: float) -> None:
        """The socket is ready: peers with a persistent keepalive and an endpoint say hello."""
        for peer in self.peers:
            if peer.persistent_keepalive and peer.endpoint is not None:
                self._send_keepalive(peer, now)

    def greet(self, peer: Peer, now: float) -> None:
        """Start a session with ``peer`` now (a keepalive, so a handshake if there is none)."""
        self._send_keepalive(peer, now)

    def handshake_now(self, peer: Peer, now: float) -> None:
        """Start a handshake through the peer's endpoint now, whatever the rate limit says: the
        path just changed (a TCP fallback link opened), so the last attempt tells nothing."""
        peer.last_sent_handshake = float("-inf")
        self._send_initiation(peer, now, retry=False)

    def probe(self, peer: Peer, endpoint: Endpoint, now: float) -> bool:
        """Send a handshake initiation to ``endpoint``, leaving the peer's endpoint as it is:
        whether another path works (the TCP fallback asks if UDP does again). If the answer
        comes back that way, roaming moves the peer there. False: rate-limited, try later."""
        saved, peer.endpoint = peer.endpoint, endpoint
        before = peer.last_sent_handshake
        try:
            self._send_initiation(peer, now, retry=False)
        finally:
            peer.endpoint = saved
        return peer.last_sent_handshake != before

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
