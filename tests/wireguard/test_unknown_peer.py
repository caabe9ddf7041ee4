"""Initiations from a key that is not one of our peers: dropped, counted, and reported (bounded)
so that the daemon can say which key to add, instead of ignoring the sender silently."""

from __future__ import annotations

import random
from ipaddress import ip_network

from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.wireguard.device import Device
from funnel_tw.wireguard.state import MAX_UNKNOWN_REPORTED
from tests.wireguard.harness import A_EP, B_EP, B_IP, KEY_A, KEY_B, KEY_C, T0, Net, ip4


class UnknownPeerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = Net()
        # A knows B; B does not know A (A's key is missing from B's configuration)
        self.a = self.net.add(Device(KEY_A, rng=random.Random(1)), A_EP)
        self.b = self.net.add(Device(KEY_B, rng=random.Random(2)), B_EP)
        self.a.add_peer(
            self.b.public_key, name="b", allowed_ips=(ip_network(f"{B_IP}/32"),), endpoint=B_EP
        )

    def test_reported_with_the_claimed_key_and_source(self) -> None:
        self.a.send_packet(ip4("10.0.0.1", B_IP, b"x"), T0)
        self.net.send(self.a, T0)
        self.assertEqual(self.b.unknown_initiations, [(self.a.public_key, A_EP)])
        self.assertEqual(self.b.stats()["drop_unknown_peer"], 1)
        self.assertEqual(self.b.outgoing, [])  # nothing answered
        self.assertEqual(self.b.handshakes_completed, 0)

    def test_bounded_between_reads(self) -> None:
        for i in range(MAX_UNKNOWN_REPORTED * 3):
            self.a.tick(T0 + 6 * i)  # retries every 5 s (+ jitter)
            if i == 0:
                self.a.send_packet(ip4("10.0.0.1", B_IP, b"x"), T0)
            self.net.send(self.a, T0 + 6 * i)
        self.assertEqual(len(self.b.unknown_initiations), MAX_UNKNOWN_REPORTED)
        self.assertGreater(self.b.stats()["drop_unknown_peer"], MAX_UNKNOWN_REPORTED)

    def test_a_known_peer_is_not_reported(self) -> None:
        self.b.add_peer(self.a.public_key, name="a", allowed_ips=(ip_network("10.0.0.1/32"),))
        self.a.send_packet(ip4("10.0.0.1", B_IP, b"x"), T0)
        self.net.flush(T0)
        self.assertEqual(self.b.unknown_initiations, [])
        self.assertEqual(self.b.handshakes_completed, 1)

    def test_garbage_that_fails_earlier_is_not_reported(self) -> None:
        # an initiation for another responder's key: its mac1 is wrong, dropped before noise
        other = Device(KEY_C, rng=random.Random(3))
        self.a.add_peer(other.public_key, name="c", allowed_ips=(ip_network("10.9.0.0/16"),))
        self.a.send_packet(ip4("10.0.0.1", "10.9.0.1", b"x"), T0)
        for datagram, _ in Net.take(self.a):
            self.b.receive_datagram(datagram, A_EP, T0)
        self.assertEqual(self.b.unknown_initiations, [])
