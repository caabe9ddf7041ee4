"""The sans-IO Device (funnel_tw.wireguard.device): two devices in memory, fixed time."""

from __future__ import annotations

import random
import struct
from ipaddress import ip_network

from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.wireguard.constants import (
    DEFAULT,
    REJECT_AFTER_MESSAGES,
    REKEY_AFTER_MESSAGES,
    Constants,
)
from funnel_tw.wireguard.cookie import CookieGenerator
from funnel_tw.wireguard.device import Device, Endpoint
from funnel_tw.wireguard.keypair import Keypair

from .harness import (
    A_EP,
    A_IP,
    A_IP6,
    B_EP,
    B_IP,
    B_IP6,
    C_EP,
    COOKIE_REPLY,
    INITIATION,
    KEY_A,
    KEY_B,
    KEY_C,
    RESPONSE,
    T0,
    TRANSPORT,
    Net,
    Pair,
    counter,
    ip4,
    ip6,
    junk_initiation,
    kind,
    kinds,
    receiver,
)

C = DEFAULT
JITTER = C.rekey_timeout_jitter


def event_kinds(device: Device) -> list[tuple[str, bool]]:
    return [(e.kind, e.initiator) for e in device.events]


class ConfigurationTests(SynchronousTestCase):
    def test_duplicate_and_own_key_refused(self) -> None:
        device = Device(KEY_A, rng=random.Random(0))
        other = Device(KEY_B).public_key
        device.add_peer(other)
        self.assertRaises(ValueError, device.add_peer, other)
        self.assertRaises(ValueError, device.add_peer, device.public_key)

    def test_no_route(self) -> None:
        p = Pair()
        self.assertFalse(p.a.send_packet(ip4(A_IP, "10.9.9.9"), T0))
        self.assertEqual(p.a.stats()["drop_no_route"], 1)
        self.assertEqual(p.a.outgoing, [])

    def test_low_order_peer_key_never_handshakes(self) -> None:
        device = Device(KEY_A, rng=random.Random(0))
        peer = device.add_peer(bytes(32), allowed_ips=(ip_network("10.0.0.0/8"),), endpoint=B_EP)
        self.assertIsNone(peer.static_static)
        device.send_packet(ip4(A_IP, "10.1.1.1"), T0)
        self.assertEqual(device.outgoing, [])
        self.assertEqual(device.stats()["drop_invalid_peer_key"], 1)


class JitterTests(SynchronousTestCase):
    def test_timer_jitter_makes_no_system_call(self) -> None:
        """Sending draws timer jitter once per reactor turn under load: never from
        SystemRandom (a getrandom(2) each), which keys and indexes still come from."""
        device = Device(KEY_A)
        self.assertIsInstance(device.rng, random.SystemRandom)

        def refuse(*args: object) -> float:
            raise AssertionError("SystemRandom drawn for jitter")

        self.patch(random.SystemRandom, "random", refuse)
        self.patch(random.SystemRandom, "getrandbits", refuse)
        draws = {device._jitter() for _ in range(100)}
        self.assertGreater(len(draws), 90)
        self.assertTrue(all(0.0 <= d <= device.constants.rekey_timeout_jitter for d in draws))


class HandshakeTests(SynchronousTestCase):
    def test_both_roles(self) -> None:
        p = Pair()
        packet = p.a_to_b()
        self.assertTrue(p.a.send_packet(packet, T0))
        # A has no session: the packet is staged and an initiation goes to B's endpoint.
        out = Net.take(p.a)
        self.assertEqual([(len(d), kind(d), ep) for d, ep in out], [(148, INITIATION, B_EP)])
        self.assertEqual(list(p.pa.staged), [packet])
        self.assertEqual(event_kinds(p.a), [("handshake-initiated", True)])
        self.assertEqual(p.a.stats()["tx_packets"], 0)

        p.b.receive_datagram(out[0][0], A_EP, T0 + 0.01)
        out = Net.take(p.b)
        # B learnt A's endpoint from the initiation and answered there.
        self.assertEqual([(len(d), kind(d), ep) for d, ep in out], [(92, RESPONSE, A_EP)])
        self.assertEqual(p.pb.endpoint, A_EP)

        p.a.receive_datagram(out[0][0], B_EP, T0 + 0.02)
        self.assertEqual(event_kinds(p.a)[-1], ("handshake-complete", True))
        self.assertIsNotNone(p.pa.keypairs.current)
        self.assertTrue(p.pa.keypairs.current.is_initiator)  # type: ignore[union-attr]
        self.assertEqual(list(p.pa.staged), [])
        out = Net.take(p.a)
        self.assertEqual(kinds(out), [TRANSPORT])
        self.assertEqual(counter(out[0][0]), 0)

        p.b.receive_datagram(out[0][0], A_EP, T0 + 0.03)
        self.assertEqual(p.b.incoming, [(packet, p.pb)])
        self.assertEqual(event_kinds(p.b), [("handshake-complete", False)])
        self.assertEqual(p.a.stats()["handshakes"], 1)
        self.assertEqual(p.b.stats()["handshakes"], 1)
        self.assertEqual(p.a.stats()["keypairs"], 1)
        self.assertEqual(p.b.stats()["keypairs"], 1)

    def test_response_receiver_is_the_initiation_sender(self) -> None:
        p = Pair()
        p.a.send_packet(p.a_to_b(), T0)
        initiation = Net.take(p.a)[0][0]
        p.b.receive_datagram(initiation, A_EP, T0)
        response = Net.take(p.b)[0][0]
        sender, receiver_index = struct.unpack_from("<II", response, 4)
        self.assertEqual(receiver_index, struct.unpack_from("<I", initiation, 4)[0])
        self.assertEqual(p.pa.handshake.local_index, receiver_index)
        self.assertEqual(p.pb.handshake.local_index, 0)  # cleared once the keys are derived
        self.assertEqual(p.pb.keypairs.next.local_index, sender)  # type: ignore[union-attr]

    def test_responder_keeps_next_until_first_transport(self) -> None:
        p = Pair()
        p.a.send_packet(p.a_to_b(), T0)
        p.send(p.a)  # initiation -> B
        self.assertIsNone(p.pb.keypairs.current)
        self.assertIsNotNone(p.pb.keypairs.next)
        self.assertFalse(p.pb.keypairs.next.is_initiator)  # type: ignore[union-attr]
        self.assertEqual(event_kinds(p.b), [])  # not complete yet
        next_keypair = p.pb.keypairs.next
        p.send(p.b)  # response -> A; A sends its staged packet
        self.assertEqual(event_kinds(p.b), [])
        p.send(p.a)  # first transport packet -> B: promotion
        self.assertIs(p.pb.keypairs.current, next_keypair)
        self.assertIsNone(p.pb.keypairs.next)
        self.assertEqual(event_kinds(p.b), [("handshake-complete", False)])
        self.assertEqual(p.pb.last_handshake, T0)

    def test_initiator_sends_keepalive_after_response(self) -> None:
        p = Pair(a_keepalive=25)
        p.a.up(T0)  # nothing to send but a keepalive: that needs a session
        out = Net.take(p.a)
        self.assertEqual(kinds(out), [INITIATION])
        p.b.receive_batch([(out[0][0], A_EP)], T0)
        p.send(p.b)
        out = Net.take(p.a)
        self.assertEqual([(len(d), kind(d)) for d, _ in out], [(32, TRANSPORT)])
        # The keepalive confirms the session to B.
        p.b.receive_batch([(out[0][0], A_EP)], T0)
        self.assertEqual(event_kinds(p.b), [("handshake-complete", False)])
        self.assertEqual(p.b.incoming, [])

    def test_responder_data_waits_for_confirmation_and_goes_on_promotion(self) -> None:
        p = Pair()
        p.a.send_packet(p.a_to_b(), T0)
        p.send(p.a)  # initiation
        reply = p.b_to_a()
        self.assertTrue(p.b.send_packet(reply, T0 + 0.001))
        self.assertEqual(list(p.pb.staged), [reply])
        p.b.outgoing = [(d, ep) for d, ep in p.b.outgoing if kind(d) == RESPONSE]
        p.send(p.b)  # response
        p.send(p.a)  # A's staged data: B promotes and sends its staged reply
        out = p.send(p.b)
        self.assertIn(TRANSPORT, kinds(out))
        self.assertEqual([pkt for pkt, _ in p.a.incoming], [reply])

    def test_responder_does_not_initiate_right_after_responding(self) -> None:
        """wireguard-go's SendHandshakeResponse sets lastSentHandshake: a responder that
        has data before the initiator confirms the session stages it and waits, rather than
        racing its own initiation against the handshake it just answered."""
        p = Pair()
        p.a.send_packet(p.a_to_b(), T0)
        p.send(p.a)  # initiation -> B, response queued
        p.b.send_packet(p.b_to_a(), T0 + 0.001)
        self.assertEqual(kinds(p.b.outgoing), [RESPONSE])

    def test_data_both_ways(self) -> None:
        p = Pair()
        p.establish()
        for i in range(5):
            p.a.send_packet(p.a_to_b(b"a%d" % i), T0 + 1)
            p.b.send_packet(p.b_to_a(b"b%d" % i), T0 + 1)
        p.flush(T0 + 1)
        self.assertEqual([pkt for pkt, _ in p.b.incoming], [p.a_to_b(b"a%d" % i) for i in range(5)])
        self.assertEqual([pkt for pkt, _ in p.a.incoming], [p.b_to_a(b"b%d" % i) for i in range(5)])
        self.assertTrue(all(peer is p.pa for _, peer in p.a.incoming))
        self.assertEqual(p.a.stats()["rx_packets"], 5)
        self.assertEqual(p.a.stats()["tx_packets"], 6)

    def test_ipv6_inner_packets(self) -> None:
        p = Pair()
        p.establish()
        packet = ip6(A_IP6, B_IP6, b"six")
        self.assertTrue(p.a.send_packet(packet, T0 + 1))
        p.flush(T0 + 1)
        self.assertEqual(p.b.incoming, [(packet, p.pb)])

    def test_counters_increase_per_direction(self) -> None:
        p = Pair()
        p.establish()
        for _ in range(3):
            p.a.send_packet(p.a_to_b(), T0 + 1)
        self.assertEqual([counter(d) for d, _ in p.a.outgoing], [1, 2, 3])

    def test_lost_response_is_retransmitted(self) -> None:
        p = Pair()
        p.a.send_packet(p.a_to_b(), T0)
        p.send(p.a)
        first_next = p.pb.keypairs.next
        Net.take(p.b)  # the response is lost
        deadline = p.a.next_deadline()
        assert deadline is not None
        p.a.tick(deadline)
        p.flush(deadline)
        self.assertEqual([pkt for pkt, _ in p.b.incoming], [p.a_to_b()])
        # The keypair of the lost response was replaced and forgotten.
        self.assertIsNot(p.pb.keypairs.current, first_next)
        assert first_next is not None
        self.assertEqual(p.b.stats()["keypairs"], 1)
        self.assertNotIn(first_next.local_index, [k.local_index for k in p.pb.keypairs.all()])

    def test_simultaneous_initiations_converge(self) -> None:
        p = Pair(b_knows_a_endpoint=True)
        p.a.send_packet(p.a_to_b(b"x"), T0)
        p.b.send_packet(p.b_to_a(b"y"), T0)
        p.flush(T0)
        p.advance(T0 + 30)
        self.assertEqual([pkt for pkt, _ in p.b.incoming], [p.a_to_b(b"x")])
        self.assertEqual([pkt for pkt, _ in p.a.incoming], [p.b_to_a(b"y")])


class ReceiveFilterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.p = Pair()
        self.p.establish()

    def _one_transport(self, packet: bytes, now: float = T0 + 1) -> bytes:
        self.p.a.send_to_peer(self.p.pa, packet, now)
        out = Net.take(self.p.a)
        self.assertEqual(kinds(out), [TRANSPORT])
        return out[0][0]

    def test_replayed_transport_dropped(self) -> None:
        datagram = self._one_transport(self.p.a_to_b())
        self.p.b.receive_datagram(datagram, A_EP, T0 + 1)
        self.p.b.receive_datagram(datagram, A_EP, T0 + 2)
        self.assertEqual(len(self.p.b.incoming), 1)
        self.assertEqual(self.p.b.stats()["drop_replay"], 1)

    def test_tampered_transport_dropped(self) -> None:
        datagram = self._one_transport(self.p.a_to_b())
        flipped_body = datagram[:-1] + bytes([datagram[-1] ^ 1])
        flipped_counter = datagram[:8] + bytes([datagram[8] ^ 1]) + datagram[9:]
        self.p.b.receive_batch([(flipped_body, A_EP), (flipped_counter, A_EP)], T0 + 1)
        self.assertEqual(self.p.b.incoming, [])
        self.assertEqual(self.p.b.stats()["drop_decrypt"], 2)
        # A forgery does not advance the replay window: the genuine packet still gets in.
        self.p.b.receive_datagram(datagram, A_EP, T0 + 1)
        self.assertEqual(len(self.p.b.incoming), 1)

    def test_forged_high_counter_does_not_move_the_window(self) -> None:
        datagram = self._one_transport(self.p.a_to_b())
        forged = datagram[:8] + struct.pack("<Q", 1 << 40) + datagram[16:]
        self.p.b.receive_datagram(forged, A_EP, T0 + 1)
        self.p.b.receive_datagram(datagram, A_EP, T0 + 1)
        self.assertEqual(len(self.p.b.incoming), 1)

    def test_inner_source_outside_allowed_ips(self) -> None:
        spoofed = ip4("10.0.0.99", B_IP)
        self.p.b.receive_datagram(self._one_transport(spoofed), A_EP, T0 + 1)
        spoofed6 = ip6("fd00::99", B_IP6)
        self.p.b.receive_datagram(self._one_transport(spoofed6), A_EP, T0 + 1)
        self.assertEqual(self.p.b.incoming, [])
        self.assertEqual(self.p.b.stats()["drop_allowed_ips"], 2)
        # It still was an authenticated packet from A.
        self.assertEqual(self.p.pb.endpoint, A_EP)

    def test_inner_source_of_another_peer(self) -> None:
        c = Device(KEY_C, rng=random.Random(3))
        self.p.b.add_peer(c.public_key, allowed_ips=(ip_network("10.0.0.3/32"),))
        self.p.b.receive_datagram(self._one_transport(ip4("10.0.0.3", B_IP)), A_EP, T0 + 1)
        self.assertEqual(self.p.b.incoming, [])
        self.assertEqual(self.p.b.stats()["drop_allowed_ips"], 1)
        # Adding a peer invalidates the owner cache: a fresh route for A is honoured.
        self.p.b.routes.insert(ip_network("10.0.0.4/32"), self.p.pb)
        self.p.b.add_peer(Device(bytes(range(100, 132))).public_key)
        self.p.b.receive_datagram(self._one_transport(ip4("10.0.0.4", B_IP)), A_EP, T0 + 1)
        self.assertEqual(len(self.p.b.incoming), 1)

    def test_padding_is_stripped_by_total_length(self) -> None:
        packet = ip4(A_IP, B_IP, b"x")  # 21 bytes, padded to 32 on the wire
        datagram = self._one_transport(packet)
        self.assertEqual(len(datagram), 16 + 32 + 16)
        self.p.b.receive_datagram(datagram, A_EP, T0 + 1)
        self.assertEqual(self.p.b.incoming, [(packet, self.p.pb)])

    def test_bad_inner_packets(self) -> None:
        not_ip = b"\x50" + bytes(30)
        v4_too_long = bytearray(ip4(A_IP, B_IP, b"abcd"))
        v4_too_long[2:4] = (200).to_bytes(2, "big")
        v4_too_short = bytearray(ip4(A_IP, B_IP, b"abcd"))
        v4_too_short[2:4] = (19).to_bytes(2, "big")
        v6_too_long = bytearray(ip6(A_IP6, B_IP6, b"abcd"))
        v6_too_long[4:6] = (100).to_bytes(2, "big")
        packets = [not_ip, bytes(v4_too_long), bytes(v4_too_short), bytes(v6_too_long)]
        for packet in packets:
            self.p.b.receive_datagram(self._one_transport(packet), A_EP, T0 + 1)
        self.assertEqual(self.p.b.incoming, [])
        self.assertEqual(self.p.b.stats()["drop_bad_inner_packet"], len(packets))

    def test_keepalive_not_delivered(self) -> None:
        self.p.b.receive_datagram(self._one_transport(b""), A_EP, T0 + 1)
        self.assertEqual(self.p.b.incoming, [])
        self.assertEqual(sum(v for k, v in self.p.b.stats().items() if k.startswith("drop_")), 0)

    def test_unknown_index_dropped(self) -> None:
        datagram = self._one_transport(self.p.a_to_b())
        other = datagram[:4] + struct.pack("<I", receiver(datagram) ^ 0xFFFF) + datagram[8:]
        self.p.b.receive_datagram(other, A_EP, T0 + 1)
        self.assertEqual(self.p.b.stats()["drop_unknown_index"], 1)


class BatchRunTests(SynchronousTestCase):
    """A batch is opened in runs of one keypair (receive.py); what a run does once must be
    what datagram by datagram did: each one's drops counted, packets in order, the endpoint
    the last authenticated source, the keepalive timer's two states."""

    def setUp(self) -> None:
        self.p = Pair()
        self.p.establish()

    def _transports(self, packets: list[bytes], now: float = T0 + 1) -> list[bytes]:
        for packet in packets:
            self.p.a.send_to_peer(self.p.pa, packet, now)
        out = Net.take(self.p.a)
        self.assertEqual(kinds(out), [TRANSPORT] * len(packets))
        return [d for d, _ in out]

    def test_one_batch_of_every_kind_equals_one_datagram_at_a_time(self) -> None:
        first, second, third, fourth, keepalive = self._transports(
            [
                self.p.a_to_b(b"1"),
                self.p.a_to_b(b"2"),
                ip4("10.0.0.99", B_IP),
                self.p.a_to_b(b"4"),
                b"",
            ]
        )
        new_a, other = ("203.0.113.5", 999), ("203.0.113.6", 999)
        batch = [
            (first, A_EP),
            (first, other),  # a replay: no move to `other`
            (second[:-1] + bytes([second[-1] ^ 1]), other),  # forged
            (junk_initiation(self.p.b.public_key, random.Random(5), T0), other),
            (second, A_EP),
            (third, A_EP),  # a source A may not use
            (b"\x04" + bytes(20), other),  # malformed: too short
            (fourth, new_a),
            (keepalive, A_EP),  # authenticated last: the endpoint is its source
        ]
        peer = self.p.pb
        rx_bytes, rx_packets = peer.rx_bytes, peer.rx_packets
        self.p.b.receive_batch(batch, T0 + 1)
        b = self.p.b
        self.assertEqual(
            b.incoming,
            [(self.p.a_to_b(n), peer) for n in (b"1", b"2", b"4")],
        )
        stats = b.stats()
        drops = {k: v for k, v in stats.items() if k.startswith("drop_") and v}
        names = ("replay", "decrypt", "allowed_ips", "malformed", "handshake")  # handshake: junk
        self.assertEqual(drops, {f"drop_{name}": 1 for name in names})
        self.assertEqual(peer.rx_packets - rx_packets, 3)
        authenticated = (first, second, third, fourth, keepalive)
        self.assertEqual(peer.rx_bytes - rx_bytes, sum(len(d) for d in authenticated))
        self.assertEqual(peer.endpoint, A_EP)  # the keepalive's, after fourth's new_a
        self.assertTrue(peer.need_another_keepalive)
        self.assertIsNone(peer.t_new_handshake)

    def test_pairs_of_any_sequence_type_never_stall_the_loop(self) -> None:
        # the C run reads (message, source) tuples; a list pair still unpacks in Python: it is
        # counted and skipped, never looped on
        (datagram,) = self._transports([self.p.a_to_b()])
        self.p.b.receive_batch([[datagram, A_EP], (datagram, A_EP)], T0 + 1)  # type: ignore[list-item]
        self.assertEqual(len(self.p.b.incoming), 1)

    def test_the_keepalive_timer_as_datagram_by_datagram(self) -> None:
        # one data packet arms the keepalive; a second one (timer armed) asks for another
        timeout = self.p.b.constants.keepalive_timeout
        for count, again in ((1, False), (2, True)):
            datagrams = self._transports([self.p.a_to_b(bytes([n])) for n in range(count)])
            self.p.pb.t_send_keepalive = None
            self.p.pb.need_another_keepalive = False
            self.p.b.receive_batch([(d, A_EP) for d in datagrams], T0 + 1)
            self.assertEqual(self.p.pb.t_send_keepalive, T0 + 1 + timeout)
            self.assertEqual(self.p.pb.need_another_keepalive, again, count)

    def test_a_run_from_two_sources_checks_each(self) -> None:
        # one run whose inner sources differ: the allowed one passes, the other is dropped
        spoofed, fine, spoofed6 = self._transports(
            [ip4("10.0.0.99", B_IP), self.p.a_to_b(), ip6("fd00::99", B_IP6)]
        )
        self.p.b.receive_batch([(spoofed, A_EP), (fine, A_EP), (spoofed6, A_EP)], T0 + 1)
        self.assertEqual(self.p.b.incoming, [(self.p.a_to_b(), self.p.pb)])
        self.assertEqual(self.p.b.stats()["drop_allowed_ips"], 2)

    def test_a_run_of_a_forbidden_source_is_all_dropped(self) -> None:
        datagrams = self._transports([ip4("10.0.0.99", B_IP, bytes([n])) for n in range(5)])
        self.p.b.receive_batch([(d, A_EP) for d in datagrams], T0 + 1)
        self.assertEqual(self.p.b.incoming, [])
        self.assertEqual(self.p.b.stats()["drop_allowed_ips"], 5)
        self.assertEqual(self.p.pb.rx_packets, 1)  # establish()'s only


class SendTests(SynchronousTestCase):
    def test_longest_prefix_routing(self) -> None:
        a = Device(KEY_A, rng=random.Random(1))
        b = Device(KEY_B)
        c = Device(KEY_C)
        pb = a.add_peer(b.public_key, allowed_ips=(ip_network("10.0.0.0/8"),), endpoint=B_EP)
        pc = a.add_peer(
            c.public_key,
            allowed_ips=(ip_network("10.1.0.0/16"), ip_network("fd00::/16")),
            endpoint=C_EP,
        )
        pb6 = ip_network("fd00:1::/32")
        a.routes.insert(pb6, pb)
        self.assertTrue(a.send_packet(ip4(A_IP, "10.1.2.3"), T0))
        self.assertTrue(a.send_packet(ip4(A_IP, "10.2.3.4"), T0))
        self.assertTrue(a.send_packet(ip6("fd00:1::1", "fd00:1::5"), T0))
        self.assertTrue(a.send_packet(ip6("fd00:1::1", "fd00:2::5"), T0))
        self.assertFalse(a.send_packet(ip4(A_IP, "192.168.1.1"), T0))
        self.assertEqual([ep for _, ep in a.outgoing], [C_EP, B_EP])  # one initiation each
        self.assertEqual(list(pc.staged), [ip4(A_IP, "10.1.2.3"), ip6("fd00:1::1", "fd00:2::5")])
        self.assertEqual(list(pb.staged), [ip4(A_IP, "10.2.3.4"), ip6("fd00:1::1", "fd00:1::5")])

    def test_padding(self) -> None:
        p = Pair(mtu=1420)
        p.establish()
        cases = {
            20: 32,
            21: 32,
            32: 32,
            33: 48,
            1400: 1408,
            1408: 1408,
            1409: 1420,  # capped at the MTU, not a multiple of 16
            1419: 1420,
            1420: 1420,
            1500: 1500,  # past the MTU: the remainder (80) is already a multiple of 16
            1521: 1532,  # 1521 % 1420 = 101, padded to 112
        }
        for size, padded in cases.items():
            packet = ip4(A_IP, B_IP, b"p" * (size - 20))
            self.assertEqual(len(packet), size)
            p.a.send_packet(packet, T0 + 1)
            ((datagram, _),) = Net.take(p.a)
            self.assertEqual(len(datagram) - 16 - 16, padded, f"packet of {size}")
            p.b.receive_datagram(datagram, A_EP, T0 + 1)
            self.assertEqual(p.b.incoming.pop(), (packet, p.pb))

    def test_keepalive_is_32_bytes(self) -> None:
        p = Pair()
        p.establish()
        p.advance(T0 + C.keepalive_timeout)
        # B received data and had nothing to say: a keepalive went out; it was 32 bytes.
        self.assertEqual(p.b.stats()["tx_bytes"] - 92, 32)

    def test_send_without_endpoint(self) -> None:
        p = Pair()
        p.b.send_packet(p.b_to_a(), T0)
        self.assertEqual(p.b.outgoing, [])
        self.assertEqual(p.b.stats()["drop_no_endpoint"], 1)

    def test_staging_is_bounded(self) -> None:
        p = Pair()
        for i in range(130):
            p.a.send_packet(p.a_to_b(b"%d" % i), T0)
        self.assertEqual(len(p.pa.staged), 128)
        self.assertEqual(p.a.stats()["drop_staged_overflow"], 2)
        self.assertEqual(p.pa.staged[0], p.a_to_b(b"2"))  # the oldest went
        p.flush(T0)
        self.assertEqual(len(p.b.incoming), 128)


class RoamingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.p = Pair()
        self.p.establish()

    def test_endpoint_follows_authenticated_packets(self) -> None:
        new_a = ("203.0.113.5", 999)
        self.p.a.send_packet(self.p.a_to_b(), T0 + 1)
        ((datagram, _),) = Net.take(self.p.a)
        self.p.b.receive_datagram(datagram, new_a, T0 + 1)
        self.assertEqual(self.p.pb.endpoint, new_a)
        self.p.b.send_packet(self.p.b_to_a(), T0 + 1)
        self.assertEqual([ep for _, ep in self.p.b.outgoing], [new_a])

    def test_unauthenticated_packets_do_not_move_it(self) -> None:
        attacker: Endpoint = ("198.51.100.66", 6666)
        self.p.a.send_packet(self.p.a_to_b(), T0 + 1)
        ((datagram, _),) = Net.take(self.p.a)
        self.p.b.receive_datagram(datagram, A_EP, T0 + 1)
        tampered = datagram[:-1] + bytes([datagram[-1] ^ 1])
        garbage_initiation = junk_initiation(self.p.b.public_key, random.Random(5), T0)
        self.p.b.receive_batch(
            [
                (tampered, attacker),
                (datagram, attacker),  # a replay: authentic but not fresh
                (garbage_initiation, attacker),
                (b"\x04" + bytes(40), attacker),
            ],
            T0 + 2,
        )
        self.assertEqual(self.p.pb.endpoint, A_EP)
        self.assertEqual(self.p.b.outgoing, [])

    def test_initiation_from_a_new_address(self) -> None:
        new_a = ("203.0.113.5", 999)
        self.p.a.send_packet(self.p.a_to_b(), T0 + 200)  # expired keypair: new handshake
        out = Net.take(self.p.a)
        self.assertEqual(kinds(out), [INITIATION])
        self.p.b.receive_datagram(out[0][0], new_a, T0 + 200)
        self.assertEqual(self.p.pb.endpoint, new_a)
        self.assertEqual([ep for _, ep in self.p.b.outgoing], [new_a])


class AuthenticationTests(SynchronousTestCase):
    def _never_completes(self, p: Pair) -> None:
        p.a.send_packet(p.a_to_b(), T0)
        p.flush(T0)
        p.advance(T0 + 200)
        for device in (p.a, p.b):
            self.assertNotIn("handshake-complete", [e.kind for e in device.events])
            self.assertEqual(device.stats()["handshakes"], 0)
        self.assertEqual(p.b.incoming, [])

    def test_wrong_peer_key(self) -> None:
        p = Pair()
        wrong = Device(KEY_C).public_key
        p.a = Device(KEY_A, rng=random.Random(1))
        p.devices[A_EP] = p.a
        p.address[id(p.a)] = A_EP
        p.pa = p.a.add_peer(wrong, allowed_ips=(ip_network("10.0.0.2/32"),), endpoint=B_EP)
        self._never_completes(p)
        self.assertGreater(p.b.stats()["drop_mac1"], 0)

    def test_responder_does_not_know_the_initiator(self) -> None:
        p = Pair()
        p.b = Device(KEY_B, rng=random.Random(2))
        p.devices[B_EP] = p.b
        p.address[id(p.b)] = B_EP
        p.b.add_peer(Device(KEY_C).public_key, allowed_ips=(ip_network("10.0.0.1/32"),))
        self._never_completes(p)
        # counted as its own kind of drop, and the claimed key reported for the operator
        self.assertGreater(p.b.stats()["drop_unknown_peer"], 0)
        self.assertIn(p.a.public_key, {key for key, _ in p.b.unknown_initiations})
        self.assertEqual(p.b.outgoing, [])

    def test_wrong_preshared_key(self) -> None:
        p = Pair(a_psk=b"\x01" * 32, b_psk=b"\x02" * 32)
        self._never_completes(p)
        self.assertGreater(p.a.stats()["drop_handshake"], 0)
        self.assertIsNone(p.pb.keypairs.current)

    def test_matching_preshared_key(self) -> None:
        p = Pair(a_psk=b"\x07" * 32, b_psk=b"\x07" * 32)
        p.establish()
        self.assertEqual(p.a.stats()["handshakes"], 1)

    def test_replayed_initiation_rejected(self) -> None:
        p = Pair()
        p.a.send_packet(p.a_to_b(), T0)
        ((initiation, _),) = Net.take(p.a)
        p.b.receive_datagram(initiation, A_EP, T0)
        p.b.receive_datagram(initiation, A_EP, T0 + 1)
        self.assertEqual(kinds(p.b.outgoing), [RESPONSE])
        self.assertEqual(p.b.stats()["drop_initiation_replay"], 1)

    def test_initiation_flood(self) -> None:
        p = Pair()
        p.a.send_packet(p.a_to_b(), T0)
        ((first, _),) = Net.take(p.a)
        deadline = p.a.next_deadline()
        assert deadline is not None
        p.a.tick(deadline)  # a retransmission: a newer TAI64N
        ((second, _),) = Net.take(p.a)
        self.assertEqual(kind(second), INITIATION)
        r = T0 + 10
        p.b.receive_datagram(first, A_EP, r)
        self.assertEqual(kinds(Net.take(p.b)), [RESPONSE])
        p.b.receive_datagram(second, A_EP, r + 0.015)  # within 20 ms of the last one
        self.assertEqual(p.b.outgoing, [])
        self.assertEqual(p.b.stats()["drop_initiation_flood"], 1)
        p.b.receive_datagram(second, A_EP, r + 0.025)  # later, the same message is fine
        self.assertEqual(kinds(Net.take(p.b)), [RESPONSE])


class TimerTests(SynchronousTestCase):
    """Every timer at its edge, with fixed time."""

    def test_rekey_after_time_on_send_initiator_only(self) -> None:
        p = Pair()
        p.establish()
        p.a.send_packet(p.a_to_b(), T0 + C.rekey_after_time)
        self.assertEqual(kinds(Net.take(p.a)), [TRANSPORT])
        p.a.send_packet(p.a_to_b(), T0 + C.rekey_after_time + 0.5)
        self.assertEqual(kinds(Net.take(p.a)), [TRANSPORT, INITIATION])
        # The responder's keys are as old, but it does not rekey on time when sending.
        p.b.send_packet(p.b_to_a(), T0 + C.rekey_after_time + 1)
        self.assertEqual(kinds(Net.take(p.b)), [TRANSPORT])

    def test_rekey_completes_and_old_keys_still_decrypt(self) -> None:
        p = Pair()
        p.establish()
        t = T0 + C.rekey_after_time + 1
        p.a.send_packet(p.a_to_b(b"one"), t)
        out = Net.take(p.a)
        old_transport = [(d, A_EP) for d, _ in out if kind(d) == TRANSPORT]
        p.a.outgoing = [o for o in out if kind(o[0]) == INITIATION]
        old_keypair = p.pa.keypairs.current
        p.flush(t)
        self.assertIsNot(p.pa.keypairs.current, old_keypair)
        self.assertIs(p.pa.keypairs.previous, old_keypair)
        # A packet sent on the previous keypair, delayed past the rekey, still arrives.
        p.b.receive_batch(old_transport, t)
        self.assertEqual([pkt for pkt, _ in p.b.incoming], [p.a_to_b(b"one")])

    def test_reject_after_time(self) -> None:
        p = Pair(b_knows_a_endpoint=True)
        p.establish()
        limit = T0 + C.reject_after_time
        # The responder does not rekey on time, so up to the limit it just sends ...
        p.b.send_packet(p.b_to_a(b"late"), limit - 0.1)
        self.assertEqual(kinds(Net.take(p.b)), [TRANSPORT])
        # ... and at the limit the keys are dead: the packet is staged, a handshake starts.
        p.b.send_packet(p.b_to_a(b"staged"), limit)
        self.assertEqual(kinds(p.b.outgoing), [INITIATION])
        self.assertEqual(list(p.pb.staged), [p.b_to_a(b"staged")])
        p.flush(limit)
        self.assertEqual([pkt for pkt, _ in p.a.incoming], [p.b_to_a(b"staged")])
        self.assertEqual(list(p.pb.staged), [])

    def test_receive_on_expired_keys_dropped(self) -> None:
        p = Pair()
        p.establish()
        p.a.send_packet(p.a_to_b(), T0 + 1)
        ((datagram, _),) = Net.take(p.a)
        p.b.receive_datagram(datagram, A_EP, T0 + C.reject_after_time + 0.5)
        self.assertEqual(p.b.incoming, [])
        self.assertEqual(p.b.stats()["drop_expired_keypair"], 1)

    def test_no_rekey_before_rekey_after_messages(self) -> None:
        p = Pair()
        p.establish()
        keypair = p.pb.keypairs.current
        assert keypair is not None
        keypair.send_counter = REKEY_AFTER_MESSAGES - 1
        p.b.send_packet(p.b_to_a(), T0 + 10)
        out = Net.take(p.b)
        self.assertEqual(kinds(out), [TRANSPORT])
        self.assertEqual(counter(out[0][0]), REKEY_AFTER_MESSAGES - 1)

    def test_rekey_once_rekey_after_messages_sent(self) -> None:
        """wireguard-go keepKeyFreshSending: rekey when sendNonce (the next nonce, after the
        packet took its own) > RekeyAfterMessages, i.e. right after the packet with counter
        RekeyAfterMessages, whatever the role."""
        p = Pair()
        p.establish()
        keypair = p.pb.keypairs.current
        assert keypair is not None
        keypair.send_counter = REKEY_AFTER_MESSAGES
        p.b.send_packet(p.b_to_a(), T0 + 10)
        out = Net.take(p.b)
        self.assertEqual(kinds(out), [TRANSPORT, INITIATION])
        self.assertEqual(counter(out[0][0]), REKEY_AFTER_MESSAGES)

    def test_rekey_after_messages_responder(self) -> None:
        p = Pair()
        p.establish()
        keypair = p.pb.keypairs.current
        assert keypair is not None
        keypair.send_counter = REKEY_AFTER_MESSAGES + 1
        p.b.send_packet(p.b_to_a(), T0 + 10)
        self.assertEqual(kinds(Net.take(p.b)), [TRANSPORT, INITIATION])
        # The receiver accepts the huge counter (the replay window jumps).
        p.a.receive_datagram(
            self._seal(p.pb.keypairs.current, REKEY_AFTER_MESSAGES + 5, p.b_to_a()), B_EP, T0 + 10
        )
        self.assertEqual(len(p.a.incoming), 1)

    @staticmethod
    def _seal(keypair: Keypair | None, n: int, packet: bytes) -> bytes:
        """A transport datagram sealed by hand on ``keypair`` with counter ``n``."""
        assert keypair is not None
        return keypair.send.seal(struct.pack("<II", TRANSPORT, keypair.remote_index), n, packet, 0)

    def test_reject_after_messages(self) -> None:
        p = Pair()
        p.establish()
        keypair = p.pa.keypairs.current
        assert keypair is not None
        keypair.send_counter = REJECT_AFTER_MESSAGES - 1
        p.a.send_packet(p.a_to_b(b"last"), T0 + 1)
        out = Net.take(p.a)
        self.assertEqual(kinds(out)[0], TRANSPORT)
        self.assertEqual(counter(out[0][0]), REJECT_AFTER_MESSAGES - 1)
        p.b.receive_datagram(out[0][0], A_EP, T0 + 1)
        self.assertEqual([pkt for pkt, _ in p.b.incoming], [p.a_to_b(b"last")])
        # The counter is exhausted: the next packet waits for a new session.
        p.a.send_packet(p.a_to_b(b"next"), T0 + 10)
        self.assertEqual(kinds(p.a.outgoing), [INITIATION])
        self.assertEqual(list(p.pa.staged), [p.a_to_b(b"next")])
        self.assertEqual(keypair.send_counter, REJECT_AFTER_MESSAGES)
        # A counter at the limit is refused on receipt, even with a valid tag.
        p.b.receive_datagram(self._seal(keypair, REJECT_AFTER_MESSAGES, b""), A_EP, T0 + 10)
        self.assertEqual(
            p.b.stats().get("drop_expired_keypair", 0) + p.b.stats().get("drop_replay", 0), 1
        )
        p.flush(T0 + 10)
        self.assertEqual([pkt for pkt, _ in p.b.incoming][-1], p.a_to_b(b"next"))

    def test_retransmit_then_give_up(self) -> None:
        p = Pair()
        packet = p.a_to_b()
        p.a.send_packet(packet, T0)
        sent = [T0]
        Net.take(p.a)
        gaps: list[float] = []
        failed_at: float | None = None
        for _ in range(40):
            deadline = p.a.next_deadline()
            assert deadline is not None
            if p.pa.t_retransmit_handshake is None:
                break
            self.assertEqual(deadline, p.pa.t_retransmit_handshake)
            p.a.tick(deadline - 0.001)
            self.assertEqual(p.a.outgoing, [])
            p.a.tick(deadline)
            out = Net.take(p.a)
            if out:
                self.assertEqual(kinds(out), [INITIATION])
                gaps.append(deadline - sent[-1])
                sent.append(deadline)
            else:
                failed_at = deadline
        # wireguard-go: retry while attempts <= MaxTimerHandshakes (18), so 1 + 19 messages.
        self.assertEqual(len(sent), C.max_timer_handshakes + 2)
        for gap in gaps:
            self.assertGreaterEqual(gap, C.rekey_timeout)
            self.assertLessEqual(gap, C.rekey_timeout + JITTER)
        self.assertGreater(len({round(g, 6) for g in gaps}), 1, "the jitter should vary")
        assert failed_at is not None
        self.assertEqual([e.kind for e in p.a.events].count("handshake-failed"), 1)
        self.assertEqual(list(p.pa.staged), [])
        self.assertEqual(p.a.stats()["drop_staged_gave_up"], 1)
        # Residue of the attempt is zeroed later.
        self.assertEqual(p.pa.t_zero_key_material, failed_at + C.zero_key_material_after)
        p.a.tick(failed_at + C.zero_key_material_after)
        self.assertEqual(p.a.events[-1].kind, "keys-zeroed")
        self.assertIsNone(p.a.next_deadline())
        # New traffic starts afresh, with a full set of attempts.
        p.a.send_packet(packet, failed_at + 1000)
        self.assertEqual(kinds(p.a.outgoing), [INITIATION])
        self.assertEqual(p.pa.handshake_attempts, 0)

    def test_retransmission_completes_late(self) -> None:
        p = Pair()
        p.a.send_packet(p.a_to_b(), T0)
        Net.take(p.a)
        p.a.tick(p.a.next_deadline() or 0)
        Net.take(p.a)  # lost too
        p.a.tick(p.a.next_deadline() or 0)  # third initiation
        self.assertEqual(kinds(p.a.outgoing), [INITIATION])
        self.assertEqual(p.pa.handshake_attempts, 2)
        t = p.now = p.pa.last_sent_handshake
        p.flush(t)
        self.assertEqual(len(p.b.incoming), 1)
        self.assertEqual(p.pa.handshake_attempts, 0)
        self.assertIsNone(p.pa.t_retransmit_handshake)

    def test_keepalive_after_receiving_data(self) -> None:
        p = Pair()
        p.establish()  # B received data at T0
        self.assertEqual(p.pb.t_send_keepalive, T0 + C.keepalive_timeout)
        p.b.tick(T0 + C.keepalive_timeout - 0.001)
        self.assertEqual(p.b.outgoing, [])
        p.b.tick(T0 + C.keepalive_timeout)
        out = Net.take(p.b)
        self.assertEqual([(len(d), kind(d)) for d, _ in out], [(32, TRANSPORT)])
        self.assertIsNone(p.pb.t_send_keepalive)

    def test_no_keepalive_if_we_sent(self) -> None:
        p = Pair()
        p.establish()
        p.b.send_packet(p.b_to_a(), T0 + 1)
        Net.take(p.b)
        self.assertIsNone(p.pb.t_send_keepalive)
        p.b.tick(T0 + C.keepalive_timeout + 0.5)
        self.assertEqual(p.b.outgoing, [])

    def test_no_keepalive_for_a_keepalive(self) -> None:
        p = Pair(a_keepalive=25)
        p.a.up(T0)
        p.flush(T0)
        self.assertIsNone(p.pb.t_send_keepalive)

    def test_another_keepalive_when_more_data_arrived(self) -> None:
        p = Pair()
        p.establish()
        p.a.send_packet(p.a_to_b(), T0 + 5)
        p.send(p.a, T0 + 5)  # data while the keepalive timer runs
        self.assertTrue(p.pb.need_another_keepalive)
        p.b.tick(T0 + C.keepalive_timeout)
        self.assertEqual(kinds(Net.take(p.b)), [TRANSPORT])
        self.assertEqual(p.pb.t_send_keepalive, T0 + 2 * C.keepalive_timeout)
        p.b.tick(T0 + 2 * C.keepalive_timeout)
        self.assertEqual(kinds(Net.take(p.b)), [TRANSPORT])
        self.assertIsNone(p.pb.t_send_keepalive)

    def test_new_handshake_after_unanswered_data(self) -> None:
        p = Pair()
        p.establish()  # A sent data at T0, B's keepalive will not be delivered
        deadline = p.pa.t_new_handshake
        assert deadline is not None
        self.assertGreaterEqual(deadline, T0 + C.keepalive_timeout + C.rekey_timeout)
        self.assertLessEqual(deadline, T0 + C.keepalive_timeout + C.rekey_timeout + JITTER)
        self.assertEqual(p.a.next_deadline(), deadline)
        p.a.tick(deadline - 0.001)
        self.assertEqual(p.a.outgoing, [])
        p.a.tick(deadline)
        self.assertEqual(kinds(p.a.outgoing), [INITIATION])
        self.assertEqual(p.a.events[-1].kind, "handshake-initiated")

    def test_no_new_handshake_when_answered(self) -> None:
        p = Pair()
        p.establish()
        p.advance(T0 + C.keepalive_timeout + C.rekey_timeout + 1)  # B's keepalive arrives
        self.assertIsNone(p.pa.t_new_handshake)
        self.assertEqual([e.kind for e in p.a.events], [])

    def test_new_handshake_timer_armed_once(self) -> None:
        p = Pair()
        p.establish()
        first = p.pa.t_new_handshake
        p.a.send_packet(p.a_to_b(), T0 + 3)
        self.assertEqual(p.pa.t_new_handshake, first)

    def test_response_counts_as_received(self) -> None:
        """A handshake response is an authenticated packet received (wireguard-go calls
        timersAnyAuthenticatedPacketReceived for it): it cancels the new-handshake timer
        armed by data sent just before."""
        p = Pair()
        p.establish()
        p.advance(T0 + 20)  # B's keepalive answered A's first packet
        self.assertIsNone(p.pa.t_new_handshake)
        t = T0 + C.rekey_after_time + 1
        p.a.send_packet(p.a_to_b(), t)  # data + rekey initiation
        self.assertIsNotNone(p.pa.t_new_handshake)
        p.a.outgoing = [o for o in p.a.outgoing if kind(o[0]) == INITIATION]  # data lost
        p.send(p.a, t)
        p.send(p.b, t)  # response: A completes and sends a keepalive
        self.assertEqual(p.a.events[-1].kind, "handshake-complete")
        Net.take(p.a)
        p.a.tick(t + C.new_handshake_after + JITTER + 0.01)
        self.assertEqual(p.a.outgoing, [])  # no needless handshake

    def test_initiation_counts_as_received(self) -> None:
        """Likewise for a consumed initiation on the responder side."""
        p = Pair()
        p.establish()
        p.advance(T0 + 20)
        t = T0 + C.rekey_after_time + 1
        p.b.send_packet(p.b_to_a(), t)  # B's data is lost: B waits for an answer
        Net.take(p.b)
        self.assertIsNotNone(p.pb.t_new_handshake)
        p.a.send_packet(p.a_to_b(), t + 0.5)  # A rekeys
        p.a.outgoing = [o for o in p.a.outgoing if kind(o[0]) == INITIATION]
        p.send(p.a, t + 0.5)
        self.assertEqual(kinds(Net.take(p.b)), [RESPONSE])
        p.b.tick(t + C.new_handshake_after + JITTER + 0.01)
        self.assertEqual(p.b.outgoing, [])  # no needless handshake

    def test_persistent_keepalive(self) -> None:
        p = Pair(a_keepalive=25)
        p.a.up(T0)
        p.flush(T0)
        self.assertEqual(p.pa.t_persistent_keepalive, T0 + 25)
        self.assertEqual(p.a.next_deadline(), T0 + 25)
        p.a.tick(T0 + 24.9)
        self.assertEqual(p.a.outgoing, [])
        p.a.tick(T0 + 25)
        out = Net.take(p.a)
        self.assertEqual([(len(d), kind(d)) for d, _ in out], [(32, TRANSPORT)])
        self.assertEqual(p.pa.t_persistent_keepalive, T0 + 50)
        # Any authenticated traffic pushes it back.
        p.a.send_packet(p.a_to_b(), T0 + 40)
        self.assertEqual(p.pa.t_persistent_keepalive, T0 + 65)
        p.b.send_packet(p.b_to_a(), T0 + 45)
        p.send(p.b, T0 + 45)
        self.assertEqual(p.pa.t_persistent_keepalive, T0 + 70)

    def test_no_persistent_keepalive_without_setting(self) -> None:
        p = Pair()
        p.establish()
        self.assertIsNone(p.pa.t_persistent_keepalive)
        p.a.up(T0)
        self.assertEqual(p.a.outgoing, [])

    def test_zero_keys(self) -> None:
        p = Pair()
        p.establish()
        p.a.send_packet(p.a_to_b(), T0 + 1)
        ((stale, _),) = Net.take(p.a)
        zero_at = T0 + C.zero_key_material_after
        self.assertEqual(zero_at, T0 + 3 * C.reject_after_time)
        self.assertEqual(p.pa.t_zero_key_material, zero_at)
        p.advance(zero_at - 0.001)
        self.assertGreater(p.a.stats()["keypairs"], 0)
        self.assertNotIn("keys-zeroed", [e.kind for e in p.a.events])
        p.advance(zero_at)
        self.assertIn(("keys-zeroed", False), event_kinds(p.a))
        self.assertIn(("keys-zeroed", False), event_kinds(p.b))
        for device, peer in ((p.a, p.pa), (p.b, p.pb)):
            self.assertEqual(device.stats()["keypairs"], 0)
            self.assertEqual(peer.keypairs.all(), [])
        p.b.receive_datagram(stale, A_EP, zero_at + 1)
        self.assertEqual(p.b.stats()["drop_unknown_index"], 1)
        # The next packet starts a new handshake.
        p.a.send_packet(p.a_to_b(), zero_at + 2)
        self.assertEqual(kinds(p.a.outgoing), [INITIATION])

    def test_last_minute_handshake(self) -> None:
        p = Pair()
        p.establish()
        age = C.reject_after_time - C.keepalive_timeout - C.rekey_timeout
        self.assertEqual(C.last_minute_rekey_age, age)
        # B (the responder) sends; A holds initiator keys and receives.
        p.b.send_packet(p.b_to_a(), T0 + age - 0.1)
        p.send(p.b, T0 + age - 0.1)
        self.assertEqual(p.a.outgoing, [])
        p.b.send_packet(p.b_to_a(), T0 + age + 0.1)
        p.send(p.b, T0 + age + 0.1)
        self.assertEqual(kinds(p.a.outgoing), [INITIATION])
        Net.take(p.a)
        # Only once per session.
        p.b.send_packet(p.b_to_a(), T0 + age + 7)
        p.send(p.b, T0 + age + 7)
        self.assertEqual(p.a.outgoing, [])
        self.assertEqual(len(p.a.incoming), 3)

    def test_no_last_minute_handshake_for_responder_keys(self) -> None:
        p = Pair()
        p.establish()
        t = T0 + C.last_minute_rekey_age + 1
        p.a.send_to_peer(p.pa, p.a_to_b(), t)
        transports = [o for o in Net.take(p.a) if kind(o[0]) == TRANSPORT]
        p.b.receive_batch([(d, A_EP) for d, _ in transports], t)
        self.assertEqual(len(p.b.incoming), 1)
        self.assertNotIn(INITIATION, kinds(p.b.outgoing))


class UnderLoadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.p = Pair()
        self.rng = random.Random(7)

    def _junk(self, n: int, now: float, first: int = 0) -> list[tuple[bytes, Endpoint]]:
        return [
            (
                junk_initiation(self.p.b.public_key, self.rng, now),
                (f"198.18.{(first + i) // 250}.{(first + i) % 250}", 4000 + i),
            )
            for i in range(n)
        ]

    def test_cookie_reply_then_mac2_accepted(self) -> None:
        p = self.p
        p.a.send_packet(p.a_to_b(), T0)
        ((initiation, _),) = Net.take(p.a)
        self.assertEqual(initiation[-16:], bytes(16))  # no cookie: mac2 is zeros
        p.b.receive_batch([*self._junk(127, T0), (initiation, A_EP)], T0)
        out = Net.take(p.b)
        # Under load, every initiation without a valid mac2 gets a cookie reply, no response.
        self.assertEqual(len(out), 128)
        self.assertEqual(set(kinds(out)), {COOKIE_REPLY})
        self.assertTrue(all(len(d) == 64 for d, _ in out))
        self.assertEqual(p.b.stats()["cookie_replies"], 128)
        self.assertIsNone(p.pb.keypairs.next)
        reply = [d for d, ep in out if ep == A_EP]
        self.assertEqual(len(reply), 1)
        self.assertEqual(receiver(reply[0]), struct.unpack_from("<I", initiation, 4)[0])

        before = p.a.stats()
        p.a.receive_datagram(reply[0], B_EP, T0 + 0.01)
        self.assertEqual(p.a.stats(), {**before, "rx_datagrams": before["rx_datagrams"] + 1})
        self.assertEqual(p.a.outgoing, [])  # the cookie does not trigger a resend by itself

        retry_at = p.a.next_deadline()
        assert retry_at is not None
        p.a.tick(retry_at)
        ((retry, _),) = Net.take(p.a)
        self.assertNotEqual(retry[-16:], bytes(16))  # now with mac2
        self.assertTrue(p.b.cookie_checker.check_mac2(retry, A_EP, retry_at))
        p.b.receive_batch([*self._junk(127, retry_at, 200), (retry, A_EP)], retry_at)
        out = Net.take(p.b)
        self.assertEqual(sorted(kinds(out)), [RESPONSE] + [COOKIE_REPLY] * 127)
        p.b.outgoing = [o for o in out if kind(o[0]) == RESPONSE]
        p.flush(retry_at)
        self.assertEqual([pkt for pkt, _ in p.b.incoming], [p.a_to_b()])

    def test_mac2_from_another_address_gets_a_cookie_reply(self) -> None:
        p = self.p
        p.a.send_packet(p.a_to_b(), T0)
        ((initiation, _),) = Net.take(p.a)
        p.b.receive_batch([*self._junk(127, T0), (initiation, A_EP)], T0)
        reply = next(d for d, ep in Net.take(p.b) if ep == A_EP)
        p.a.receive_datagram(reply, B_EP, T0)
        p.a.tick(p.a.next_deadline() or 0)
        ((retry, _),) = Net.take(p.a)
        roamed = ("203.0.113.9", 5555)
        p.b.receive_batch([*self._junk(127, T0 + 5, 200), (retry, roamed)], T0 + 5.5)
        self.assertEqual(set(kinds(p.b.outgoing)), {COOKIE_REPLY})

    def test_not_under_load(self) -> None:
        p = self.p
        p.a.send_packet(p.a_to_b(), T0)
        ((initiation, _),) = Net.take(p.a)
        p.b.receive_batch([*self._junk(126, T0), (initiation, A_EP)], T0)  # 127 queued
        out = Net.take(p.b)
        self.assertEqual(kinds(out), [RESPONSE])
        self.assertEqual(p.b.stats()["cookie_replies"], 0)
        self.assertEqual(p.b.stats()["drop_handshake"], 126)

    def test_load_lingers_for_a_second(self) -> None:
        p = self.p
        p.b.receive_batch(self._junk(128, T0), T0)
        Net.take(p.b)
        p.a.send_packet(p.a_to_b(), T0)
        ((initiation, _),) = Net.take(p.a)
        p.b.receive_datagram(initiation, A_EP, T0 + C.under_load_after - 0.1)
        self.assertEqual(kinds(Net.take(p.b)), [COOKIE_REPLY])
        p.b.receive_datagram(initiation, A_EP, T0 + C.under_load_after + 0.1)
        self.assertEqual(kinds(Net.take(p.b)), [RESPONSE])

    def test_rate_limited_per_source(self) -> None:
        p = self.p
        x: Endpoint = ("203.0.113.1", 1000)
        y: Endpoint = ("203.0.113.2", 1000)
        gen_x = CookieGenerator(p.b.public_key)
        gen_y = CookieGenerator(p.b.public_key)
        first = [
            (junk_initiation(p.b.public_key, self.rng, T0, gen_x), x),
            (junk_initiation(p.b.public_key, self.rng, T0, gen_y), y),
        ]
        p.b.receive_batch([*self._junk(126, T0), *first], T0)
        replies = {ep: d for d, ep in Net.take(p.b) if ep in (x, y)}
        self.assertTrue(gen_x.consume_reply(replies[x], T0))
        self.assertTrue(gen_y.consume_reply(replies[y], T0))

        now = T0 + 0.5
        batch = self._junk(112, now)
        for _ in range(8):
            batch.append((junk_initiation(p.b.public_key, self.rng, now, gen_x), x))
            batch.append((junk_initiation(p.b.public_key, self.rng, now, gen_y), y))
        p.b.receive_batch(batch, now)
        stats = p.b.stats()
        self.assertEqual(stats["drop_rate_limited"], 2 * 3)  # 8 each, burst of 5
        self.assertEqual(stats["drop_handshake"], 2 * 5)  # passed the limiter, then failed
        self.assertEqual(stats["cookie_replies"], 128 + 112)

    def test_handshake_queue_is_bounded(self) -> None:
        p = self.p
        p.b.receive_batch(self._junk(1100, T0), T0)
        self.assertEqual(p.b.stats()["drop_handshake_queue_full"], 1100 - 1024)
        self.assertEqual(p.b.stats()["cookie_replies"], 1024)


class ConstantsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        self.assertEqual(C.max_timer_handshakes, 18)
        self.assertEqual(C.zero_key_material_after, 540)
        self.assertEqual(C.new_handshake_after, 15)
        self.assertEqual(C.last_minute_rekey_age, 165)
        self.assertEqual(REKEY_AFTER_MESSAGES, 1 << 60)
        self.assertEqual(REJECT_AFTER_MESSAGES, (1 << 64) - (1 << 13) - 1)

    def test_shortened_keeps_limits_in_order(self) -> None:
        for tenths in range(5, 1201):
            r = tenths / 10
            c = Constants.shortened(r)
            msg = f"shortened({r})"
            self.assertEqual(c.rekey_after_time, r)
            self.assertEqual(c.max_timer_handshakes, DEFAULT.max_timer_handshakes, msg)
            self.assertLess(c.rekey_timeout + c.rekey_timeout_jitter, c.keepalive_timeout, msg)
            self.assertLess(c.keepalive_timeout, c.new_handshake_after, msg)
            self.assertLess(c.new_handshake_after, c.rekey_after_time, msg)
            self.assertLess(c.rekey_after_time, c.last_minute_rekey_age, msg)
            self.assertLess(c.last_minute_rekey_age, c.reject_after_time, msg)
            self.assertLess(c.reject_after_time, c.zero_key_material_after, msg)
            self.assertLess(c.rekey_attempt_time, c.reject_after_time, msg)
            self.assertLessEqual(c.cookie_refresh_time, c.reject_after_time, msg)
            self.assertAlmostEqual(c.reject_after_time / r, 1.5, msg=msg)
            self.assertEqual(c.handshake_initiation_rate, DEFAULT.handshake_initiation_rate)
            self.assertEqual(c.rekey_after_messages, REKEY_AFTER_MESSAGES)
            self.assertEqual(c.reject_after_messages, REJECT_AFTER_MESSAGES)

    def test_shortened_session_keeps_flowing(self) -> None:
        c = Constants.shortened(6.0)
        p = Pair(constants=c)
        sent = 0
        now = T0
        while now < T0 + 60:
            p.advance(now)
            p.a.send_packet(p.a_to_b(b"%d" % sent), now)
            p.b.send_packet(p.b_to_a(b"%d" % sent), now)
            sent += 1
            p.flush(now)
            now += 0.25
        self.assertEqual(len(p.b.incoming), sent)
        self.assertEqual(len(p.a.incoming), sent)
        self.assertGreaterEqual(p.a.stats()["handshakes"], 60 / c.rekey_after_time - 1)
        self.assertNotIn("handshake-failed", [e.kind for e in p.a.events + p.b.events])


class KeyMaterialTests(SynchronousTestCase):
    def test_directional_keys(self) -> None:
        p = Pair()
        p.establish()
        a_kp, b_kp = p.pa.keypairs.current, p.pb.keypairs.current
        assert a_kp is not None and b_kp is not None
        self.assertEqual(a_kp.remote_index, b_kp.local_index)
        self.assertEqual(b_kp.remote_index, a_kp.local_index)
        # A's sending key opens at B and not at A (no reflection).
        sealed = a_kp.send.seal(a_kp.header, 0, b"x", 1280)
        self.assertEqual(b_kp.receive.open(sealed), b"x" + bytes(15))
        self.assertIsNone(a_kp.receive.open(sealed))

    def test_reflected_datagram_dropped(self) -> None:
        p = Pair()
        p.establish()
        p.a.send_packet(p.a_to_b(), T0 + 1)
        ((datagram, _),) = Net.take(p.a)
        a_kp = p.pa.keypairs.current
        assert a_kp is not None
        reflected = datagram[:4] + struct.pack("<I", a_kp.local_index) + datagram[8:]
        p.a.receive_datagram(reflected, B_EP, T0 + 1)
        self.assertEqual(p.a.incoming, [])
        self.assertEqual(p.a.stats()["drop_decrypt"], 1)
