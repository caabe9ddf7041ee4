"""Device.remove_peer / update_peer: what a live reload does to the sans-IO core."""

from __future__ import annotations

from ipaddress import ip_network

from twisted.trial.unittest import SynchronousTestCase

from .harness import A_EP, B_IP, INITIATION, T0, Pair, ip4, kinds


class RemovePeerTests(SynchronousTestCase):
    def test_removed_peer_leaves_nothing_behind(self) -> None:
        p = Pair()
        p.establish()
        # a rekey under way (its index in the table) and a staged packet too
        p.b._send_initiation(p.pb, T0 + 10, retry=False)
        p.pb.staged.append(b"staged")
        self.assertEqual(list(p.b._handshakes.values()), [p.pb])
        self.assertGreater(p.b.stats()["keypairs"], 0)
        indices = [k.local_index for k in p.pb.keypairs.all()]
        p.b.remove_peer(p.pb)
        self.assertEqual(p.b.peers, [])
        self.assertEqual(p.b.peers_by_key, {})
        self.assertEqual(p.b.stats()["keypairs"], 0)
        self.assertEqual(p.b._handshakes, {})
        for index in indices:
            self.assertNotIn(index, p.b._keypairs)
        self.assertEqual(list(p.pb.staged), [])
        self.assertIsNone(p.pb.next_deadline())
        self.assertIsNone(p.b.routes.lookup_v4(bytes([10, 0, 0, 1])))
        self.assertEqual(list(p.b.routes.entries(p.pb)), [])
        self.assertIsNone(p.b.next_deadline())

    def test_removed_peer_cannot_send_nor_handshake(self) -> None:
        p = Pair()
        p.establish()
        p.b.remove_peer(p.pb)
        # transport on the old session: unknown index, nothing delivered
        p.a.send_packet(p.a_to_b(b"after removal"), T0 + 2)
        p.send(p.a, T0 + 2)
        self.assertEqual(p.b.incoming, [])
        self.assertEqual(p.b.stats()["drop_unknown_index"], 1)
        # a new handshake: an initiation from a key B no longer knows, never answered
        p.a.remove_peer(p.pa)
        p.pa = p.a.add_peer(
            p.b.public_key,
            name="b",
            allowed_ips=(ip_network(f"{B_IP}/32"),),
            endpoint=("192.0.2.2", 51820),
        )
        p.a.send_packet(p.a_to_b(), T0 + 3)
        out = p.send(p.a, T0 + 3)
        self.assertEqual(kinds(out), [INITIATION])
        self.assertEqual(p.b.outgoing, [])
        self.assertEqual([key for key, _ in p.b.unknown_initiations], [p.a.public_key])
        self.assertEqual(p.b.handshakes_completed, 1)  # the one before removal only

    def test_packets_to_removed_routes_have_no_route(self) -> None:
        p = Pair()
        p.establish()
        p.a.remove_peer(p.pa)
        self.assertFalse(p.a.send_packet(p.a_to_b(), T0 + 1))
        self.assertEqual(p.a.stats()["drop_no_route"], 1)

    def test_removing_a_stranger_is_refused(self) -> None:
        p, q = Pair(), Pair()
        self.assertRaises(ValueError, p.a.remove_peer, q.pa)

    def test_readded_peer_handshakes_again(self) -> None:
        p = Pair()
        p.establish()
        p.b.remove_peer(p.pb)
        p.pb = p.b.add_peer(p.a.public_key, name="a", allowed_ips=(ip_network("10.0.0.1/32"),))
        p.a.remove_peer(p.pa)
        p.pa = p.a.add_peer(
            p.b.public_key,
            name="b",
            allowed_ips=(ip_network(f"{B_IP}/32"),),
            endpoint=("192.0.2.2", 51820),
        )
        p.establish(T0 + 10)


class UpdatePeerTests(SynchronousTestCase):
    def test_sending_follows_a_route_change_after_its_destination_was_cached(self) -> None:
        p = Pair()
        p.establish()
        self.assertTrue(p.a.send_packet(p.a_to_b(b"cached"), T0 + 1))  # B_IP -> B, cached
        p.a.update_peer(
            p.pa,
            allowed_ips=(ip_network("10.0.0.99/32"),),
            endpoint=None,
            persistent_keepalive=0,
            preshared_key=None,
        )
        self.assertFalse(p.a.send_packet(p.a_to_b(b"no longer B's"), T0 + 2))
        self.assertEqual(p.a.stats()["drop_no_route"], 1)
        self.assertTrue(p.a.send_packet(ip4("10.0.0.1", "10.0.0.99", b"B's now"), T0 + 3))

    def test_allowed_ips_change_moves_routes_and_source_check(self) -> None:
        p = Pair()
        p.establish()
        p.b.update_peer(
            p.pb,
            allowed_ips=(ip_network("10.0.0.9/32"),),
            endpoint=None,
            persistent_keepalive=0,
            preshared_key=None,
        )
        self.assertEqual(p.pb.endpoint, A_EP)  # learned endpoint kept
        # the session survives, but 10.0.0.1 is no longer A's: dropped by the source check
        p.a.send_packet(p.a_to_b(b"old source"), T0 + 1)
        p.send(p.a, T0 + 1)
        self.assertEqual(p.b.incoming, [])
        self.assertEqual(p.b.stats()["drop_allowed_ips"], 1)
        p.a.send_packet(ip4("10.0.0.9", B_IP, b"new source"), T0 + 2)
        p.send(p.a, T0 + 2)
        self.assertEqual([pkt for pkt, _ in p.b.incoming], [ip4("10.0.0.9", B_IP, b"new source")])
        self.assertEqual(p.b.stats()["handshakes"], 1)  # no new handshake was needed

    def test_preshared_key_change_drops_the_session(self) -> None:
        p = Pair()
        p.establish()
        psk = bytes(range(32))
        for dev, peer in ((p.a, p.pa), (p.b, p.pb)):
            dev.update_peer(
                peer,
                allowed_ips=peer.allowed_ips,
                endpoint=peer.endpoint,
                persistent_keepalive=0,
                preshared_key=psk,
            )
        self.assertEqual(p.a.stats()["keypairs"], 0)
        p.establish(T0 + 10)  # a new handshake, with the new key on both sides
        self.assertEqual(p.pa.preshared_key, psk)

    def test_endpoint_and_keepalive(self) -> None:
        p = Pair()
        p.a.update_peer(
            p.pa,
            allowed_ips=p.pa.allowed_ips,
            endpoint=("192.0.2.99", 1),
            persistent_keepalive=5,
            preshared_key=None,
        )
        self.assertEqual(p.pa.endpoint, ("192.0.2.99", 1))
        self.assertEqual(p.pa.persistent_keepalive, 5)
