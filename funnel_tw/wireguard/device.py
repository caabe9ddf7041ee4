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
