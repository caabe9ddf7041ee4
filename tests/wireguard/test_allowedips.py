"""Cryptokey routing (funnel_tw.wireguard.allowedips)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.netstack.ip import build_ipv4, build_ipv6
from funnel_tw.wireguard.allowedips import AllowedIPs


def v4(text: str) -> bytes:
    return IPv4Address(text).packed


def v6(text: str) -> bytes:
    return IPv6Address(text).packed


def table(*routes: tuple[str, str]) -> AllowedIPs[str]:
    t: AllowedIPs[str] = AllowedIPs()
    for network, peer in routes:
        t.insert(ip_network(network), peer)
    return t


class LookupTests(SynchronousTestCase):
    def test_longest_prefix_wins_v4(self) -> None:
        t = table(
            ("0.0.0.0/0", "default"),
            ("10.0.0.0/8", "a"),
            ("10.1.0.0/16", "b"),
            ("10.1.2.0/24", "c"),
            ("10.1.2.3/32", "d"),
        )
        self.assertEqual(t.lookup_v4(v4("10.1.2.3")), "d")
        self.assertEqual(t.lookup_v4(v4("10.1.2.4")), "c")
        self.assertEqual(t.lookup_v4(v4("10.1.3.4")), "b")
        self.assertEqual(t.lookup_v4(v4("10.2.0.0")), "a")
        self.assertEqual(t.lookup_v4(v4("11.0.0.0")), "default")

    def test_insertion_order_does_not_matter(self) -> None:
        t = table(("10.1.2.0/24", "c"), ("10.0.0.0/8", "a"), ("10.1.0.0/16", "b"))
        self.assertEqual(t.lookup_v4(v4("10.1.2.9")), "c")
        self.assertEqual(t.lookup_v4(v4("10.1.9.9")), "b")

    def test_no_match(self) -> None:
        t = table(("10.0.0.0/8", "a"), ("fd00::/8", "b"))
        self.assertIsNone(t.lookup_v4(v4("192.168.0.1")))
        self.assertIsNone(t.lookup_v6(v6("fe80::1")))
        self.assertIsNone(AllowedIPs[str]().lookup_v4(v4("1.2.3.4")))

    def test_longest_prefix_wins_v6(self) -> None:
        t = table(
            ("::/0", "default"),
            ("fd7a:115c:a1e0::/48", "a"),
            ("fd7a:115c:a1e0:ab12::/64", "b"),
            ("fd7a:115c:a1e0:ab12::1/128", "c"),
        )
        self.assertEqual(t.lookup_v6(v6("fd7a:115c:a1e0:ab12::1")), "c")
        self.assertEqual(t.lookup_v6(v6("fd7a:115c:a1e0:ab12::2")), "b")
        self.assertEqual(t.lookup_v6(v6("fd7a:115c:a1e0:1::2")), "a")
        self.assertEqual(t.lookup_v6(v6("2001:db8::1")), "default")

    def test_families_are_separate(self) -> None:
        t = table(("0.0.0.0/0", "v4"))
        self.assertIsNone(t.lookup_v6(v6("::")))
        t = table(("::/0", "v6"))
        self.assertIsNone(t.lookup_v4(v4("0.0.0.0")))
        # ::ffff:10.0.0.1 is an IPv6 address, not the IPv4 one.
        t = table(("10.0.0.1/32", "v4"))
        self.assertIsNone(t.lookup_v6(v6("::ffff:10.0.0.1")))

    def test_reassignment_moves_the_network(self) -> None:
        t = table(("10.0.0.0/24", "a"), ("10.0.1.0/24", "a"))
        t.insert(IPv4Network("10.0.0.0/24"), "b")
        self.assertEqual(t.lookup_v4(v4("10.0.0.7")), "b")
        self.assertEqual(t.lookup_v4(v4("10.0.1.7")), "a")
        self.assertEqual(list(t.entries("a")), [IPv4Network("10.0.1.0/24")])
        self.assertEqual(list(t.entries("b")), [IPv4Network("10.0.0.0/24")])

    def test_remove_peer(self) -> None:
        t = table(
            ("10.0.0.0/8", "a"),
            ("10.1.0.0/16", "b"),
            ("10.1.2.0/24", "a"),
            ("fd00::/64", "a"),
            ("fd00::/16", "b"),
        )
        t.remove_peer("a")
        self.assertEqual(list(t.entries("a")), [])
        self.assertEqual(t.lookup_v4(v4("10.1.2.3")), "b")  # falls back to the shorter prefix
        self.assertIsNone(t.lookup_v4(v4("10.2.0.0")))
        self.assertEqual(t.lookup_v6(v6("fd00::1")), "b")
        self.assertEqual(sorted(map(str, t.entries("b"))), sorted(["10.1.0.0/16", "fd00::/16"]))

    def test_remove_peer_compares_identity(self) -> None:
        class Peer:
            def __eq__(self, other: object) -> bool:
                return True

            __hash__ = object.__hash__

        p, q = Peer(), Peer()
        t: AllowedIPs[Peer] = AllowedIPs()
        t.insert(IPv4Network("10.0.0.0/8"), p)
        t.insert(IPv4Network("11.0.0.0/8"), q)
        t.remove_peer(p)
        self.assertIsNone(t.lookup_v4(v4("10.0.0.1")))
        self.assertIs(t.lookup_v4(v4("11.0.0.1")), q)

    def test_host_bits_in_network(self) -> None:
        t: AllowedIPs[str] = AllowedIPs()
        t.insert(IPv4Network("10.9.8.7/16", strict=False), "a")
        self.assertEqual(t.lookup_v4(v4("10.9.200.1")), "a")
        self.assertEqual(list(t.entries("a")), [IPv4Network("10.9.0.0/16")])


class PacketLookupTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.t = table(("10.0.0.0/24", "a"), ("10.0.1.0/24", "b"), ("fd00::/64", "c"))
        self.t.insert(IPv6Network("fd00:0:0:1::/64"), "d")

    def test_ipv4(self) -> None:
        packet = build_ipv4(v4("10.0.0.5"), v4("10.0.1.5"), 17, b"hello")
        self.assertEqual(self.t.lookup_packet_source(packet), "a")
        self.assertEqual(self.t.lookup_packet_destination(packet), "b")

    def test_ipv6(self) -> None:
        packet = build_ipv6(v6("fd00:0:0:1::5"), v6("fd00::9"), 17, b"hello")
        self.assertEqual(self.t.lookup_packet_source(packet), "d")
        self.assertEqual(self.t.lookup_packet_destination(packet), "c")

    def test_not_ip(self) -> None:
        packet = b"\x50" + bytes(59)
        self.assertIsNone(self.t.lookup_packet_source(packet))
        self.assertIsNone(self.t.lookup_packet_destination(packet))

    def test_truncated_destination(self) -> None:
        packet = build_ipv4(v4("10.0.0.5"), v4("10.0.1.5"), 17, b"")
        self.assertIsNone(self.t.lookup_packet_destination(packet[:19]))
        packet6 = build_ipv6(v6("fd00::5"), v6("fd00::9"), 17, b"")
        self.assertIsNone(self.t.lookup_packet_destination(packet6[:39]))

    def test_truncated_source(self) -> None:
        # A packet too short to hold its source address has no owner, exactly as
        # lookup_packet_destination treats a short packet (and as wireguard-go checks the
        # header length before any lookup).
        everything = table(("0.0.0.0/0", "any4"), ("::/0", "any6"))
        self.assertIsNone(everything.lookup_packet_source(b"\x45" + bytes(13)))
        self.assertIsNone(everything.lookup_packet_source(b"\x60" + bytes(20)))

    def test_empty_packet(self) -> None:
        self.assertIsNone(self.t.lookup_packet_source(b""))
        self.assertIsNone(self.t.lookup_packet_destination(b""))


class LookupPropertyTests(SynchronousTestCase):
    @given(
        version=st.sampled_from([4, 6]),
        routes=st.lists(
            st.tuples(
                st.integers(min_value=0, max_value=128),
                st.integers(min_value=0),
                st.sampled_from("abcde"),
            ),
            max_size=40,
        ),
        probes=st.lists(st.integers(min_value=0), min_size=1, max_size=20),
        removed=st.one_of(st.none(), st.sampled_from("abcde")),
    )
    def test_matches_brute_force(
        self,
        version: int,
        routes: list[tuple[int, int, str]],
        probes: list[int],
        removed: str | None,
    ) -> None:
        bits = 32 if version == 4 else 128
        full = (1 << bits) - 1
        t: AllowedIPs[str] = AllowedIPs()
        reference: dict[tuple[int, int], str] = {}  # (length, network) -> peer, last wins
        for length, raw, peer in routes:
            length %= bits + 1
            # Few high bits vary so that the networks nest and collide.
            address = ((raw & 0xF) << (bits - 4)) | ((raw >> 4) & 0xFF)
            mask = full ^ ((1 << (bits - length)) - 1)
            cls = IPv4Network if version == 4 else IPv6Network
            t.insert(cls((address & mask, length)), peer)
            reference[(length, address & mask)] = peer
        if removed is not None:
            t.remove_peer(removed)
            reference = {k: v for k, v in reference.items() if v != removed}
        # Probe near the inserted networks and at random.
        candidates = [((p & 0xF) << (bits - 4)) | ((p >> 4) & 0xFF) for p in probes]
        candidates += [n for (_, n) in reference] + [p % (1 << bits) for p in probes]
        for address in candidates:
            best: tuple[int, str] | None = None
            for (length, base), peer in reference.items():
                mask = full ^ ((1 << (bits - length)) - 1)
                if address & mask == base and (best is None or length > best[0]):
                    best = (length, peer)
            packed = address.to_bytes(bits // 8, "big")
            got = t.lookup_v4(packed) if version == 4 else t.lookup_v6(packed)
            self.assertEqual(got, None if best is None else best[1], hex(address))
