"""Cryptokey routing: longest-prefix match from an address to the peer that owns it.

One dict per prefix length and family; a lookup tries the lengths in use from the longest
down, so its cost grows with the number of distinct prefix lengths, not with the number of
peers or routes.
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Network, IPv6Network
from typing import Generic, TypeVar

P = TypeVar("P")

IPNetwork = IPv4Network | IPv6Network


class _Family(Generic[P]):
    __slots__ = ("bits", "lengths", "tables")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.tables: dict[int, dict[int, P]] = {}
        self.lengths: list[
            tuple[int, int, dict[int, P]]
        ] = []  # (length, mask, table), longest first

    def reindex(self) -> None:
        full = (1 << self.bits) - 1
        self.lengths = [
            (n, full ^ ((1 << (self.bits - n)) - 1), self.tables[n])
            for n in sorted(self.tables, reverse=True)
            if self.tables[n]
        ]

    def lookup(self, address: int) -> P | None:
        for _, mask, table in self.lengths:
            peer = table.get(address & mask)
            if peer is not None:
                return peer
        return None


class AllowedIPs(Generic[P]):
    """A routing table of networks to peers; inserting a network another peer holds moves it."""

    def __init__(self) -> None:
        self._v4: _Family[P] = _Family(32)
        self._v6: _Family[P] = _Family(128)

    def _family(self, network: IPNetwork) -> _Family[P]:
        return self._v4 if network.version == 4 else self._v6

    def insert(self, network: IPNetwork, peer: P) -> None:
        family = self._family(network)
        family.tables.setdefault(network.prefixlen, {})[int(network.network_address)] = peer
        family.reindex()

    def remove_peer(self, peer: P) -> None:
        for family in (self._v4, self._v6):
            for table in family.tables.values():
                for key in [k for k, v in table.items() if v is peer]:
                    del table[key]
            family.reindex()

    def entries(self, peer: P) -> Iterator[IPNetwork]:
        for family, cls in ((self._v4, IPv4Network), (self._v6, IPv6Network)):
            for length, table in family.tables.items():
                for address, owner in table.items():
                    if owner is peer:
                        yield cls((address, length))

    def lookup_v4(self, address: bytes) -> P | None:
        return self._v4.lookup(int.from_bytes(address, "big"))

    def lookup_v6(self, address: bytes) -> P | None:
        return self._v6.lookup(int.from_bytes(address, "big"))

    def lookup_packet_source(self, packet: bytes) -> P | None:
        """The peer owning the source address of an IPv4 or IPv6 packet."""
        return self._lookup(packet_source(packet))

    def lookup_packet_destination(self, packet: bytes) -> P | None:
        return self._lookup(packet_destination(packet))

    def _lookup(self, address: bytes | None) -> P | None:
        if address is None:
            return None
        return self.lookup_v4(address) if len(address) == 4 else self.lookup_v6(address)


def packet_source(packet: bytes) -> bytes | None:
    """The source address of an IPv4 or IPv6 packet; None if it is too short for one."""
    version = packet[0] >> 4 if packet else 0
    if version == 4 and len(packet) >= 20:
        return packet[12:16]
    if version == 6 and len(packet) >= 40:
        return packet[8:24]
    return None


def packet_destination(packet: bytes) -> bytes | None:
    """The destination address of an IPv4 or IPv6 packet; None if it is too short for one."""
    version = packet[0] >> 4 if packet else 0
    if version == 4 and len(packet) >= 20:
        return packet[16:20]
    if version == 6 and len(packet) >= 40:
        return packet[24:40]
    return None
