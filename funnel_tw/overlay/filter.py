"""The per-peer packet filter: what a restricted peer may reach on our addresses.

A ``funnel-ingress = yes`` peer (a relay) may open TCP connections to the peerAPI port and
nothing else: no other TCP port, no UDP, no ICMP. Everything else it sends is dropped here,
before the TCP/IP stack sees it, and counted. Other peers are not filtered.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..netstack.ip import PROTO_TCP
from ..wireguard.device import Peer


class PacketFilter:
    def __init__(self, restricted: Mapping[Peer, frozenset[int]], addresses: set[bytes]) -> None:
        self.restricted = dict(restricted)
        self.addresses = addresses
        self.dropped = 0

    def allows(self, packet: bytes, peer: Peer) -> bool:
        ports = self.restricted.get(peer)
        if ports is None:
            return True
        version = packet[0] >> 4
        if version == 4:
            ihl = (packet[0] & 0x0F) * 4
            ok = (
                packet[9] == PROTO_TCP
                and packet[16:20] in self.addresses
                and not (packet[6] & 0x3F or packet[7])  # no fragments
                and len(packet) >= ihl + 4
                and int.from_bytes(packet[ihl + 2 : ihl + 4], "big") in ports
            )
        elif version == 6:
            ok = (
                len(packet) >= 44
                and packet[6] == PROTO_TCP  # no extension headers
                and packet[24:40] in self.addresses
                and int.from_bytes(packet[42:44], "big") in ports
            )
        else:
            ok = False
        if not ok:
            self.dropped += 1
        return ok

    def stats(self) -> dict[str, int]:
        return {"drop_filtered": self.dropped}
