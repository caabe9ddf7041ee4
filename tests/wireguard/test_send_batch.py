"""Device.send_packets: a list of IP packets routed and sealed in runs per peer. It must
send exactly what send_packet would for each packet in turn: the same datagrams to the same
endpoints in the same order, consecutive counters, the same counts, timers and staging, and
a fresh handshake at the same point."""

from __future__ import annotations

import random
from ipaddress import ip_network

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.wireguard.constants import DEFAULT
from funnel_tw.wireguard.device import Device

from .harness import (
    A_EP,
    A_IP,
    B_EP,
    B_IP,
    C_EP,
    C_IP,
    INITIATION,
    KEY_A,
    KEY_B,
    KEY_C,
    T0,
    TRANSPORT,
    Net,
    counter,
    ip4,
    kind,
)


class Trio(Net):
    """A with two peers, B and C, sessions established both ways."""

    def __init__(self) -> None:
        super().__init__()
        self.a = self.add(Device(KEY_A, rng=random.Random(1)), A_EP)
        self.b = self.add(Device(KEY_B, rng=random.Random(2)), B_EP)
        self.c = self.add(Device(KEY_C, rng=random.Random(3)), C_EP)
        self.ab = self.a.add_peer(
            self.b.public_key, allowed_ips=(ip_network(f"{B_IP}/32"),), endpoint=B_EP
        )
        self.ac = self.a.add_peer(
            self.c.public_key, allowed_ips=(ip_network(f"{C_IP}/32"),), endpoint=C_EP
        )
        self.b.add_peer(self.a.public_key, allowed_ips=(ip_network(f"{A_IP}/32"),))
        self.c.add_peer(self.a.public_key, allowed_ips=(ip_network(f"{A_IP}/32"),))
        for dst in (B_IP, C_IP):
            assert self.a.send_packet(ip4(A_IP, dst, b"first"), T0)
        self.flush(T0)
        self.b.incoming.clear()
        self.c.incoming.clear()


DESTINATIONS = {"b": B_IP, "c": C_IP, "none": "192.168.7.7"}


def packets_for(names: list[str]) -> list[bytes]:
    return [ip4(A_IP, DESTINATIONS[n], b"packet %d" % i) for i, n in enumerate(names)]


def state(t: Trio) -> tuple[object, ...]:
    """What sending changes on A, besides the datagrams."""
    peers = (t.ab, t.ac)
    keypairs = [p.keypairs.current for p in peers]
    return (
        [(p.tx_bytes, p.tx_packets, p.t_send_keepalive) for p in peers],
        [(p.t_new_handshake, p.t_persistent_keepalive) for p in peers],
        [k.send_counter if k else None for k in keypairs],
        [list(p.staged) for p in peers],
        t.a.stats(),
    )


class SendPacketsTests(SynchronousTestCase):
    def _both(self, names: list[str], prepare: object = None) -> tuple[Trio, Trio]:
        """The same packets through send_packet one by one (first) and send_packets (second),
        on two trios in the same state."""
        one, batch = Trio(), Trio()
        for t in (one, batch):
            if callable(prepare):
                prepare(t)
            t.a.outgoing.clear()
        now = T0 + 10  # past REKEY_TIMEOUT since the trio's handshakes: one may start now
        for packet in packets_for(names):
            one.a.send_packet(packet, now)
        batch.a.send_packets(packets_for(names), now)
        return one, batch

    def assert_same(self, one: Trio, batch: Trio) -> None:
        self.assertEqual(state(batch), state(one))
        shape = [(kind(d), len(d), ep) for d, ep in one.a.outgoing]
        self.assertEqual([(kind(d), len(d), ep) for d, ep in batch.a.outgoing], shape)
        transports = [(counter(d), ep) for d, ep in one.a.outgoing if kind(d) == TRANSPORT]
        self.assertEqual(
            [(counter(d), ep) for d, ep in batch.a.outgoing if kind(d) == TRANSPORT], transports
        )

    @settings(max_examples=60)
    @given(st.lists(st.sampled_from(sorted(DESTINATIONS)), max_size=40))
    def test_same_as_one_at_a_time(self, names: list[str]) -> None:
        one, batch = self._both(names)
        self.assert_same(one, batch)
        # and every packet arrives, in order, at its peer
        batch.flush(T0 + 10)
        for device, name in ((batch.b, "b"), (batch.c, "c")):
            expected = [p for n, p in zip(names, packets_for(names), strict=True) if n == name]
            self.assertEqual([p for p, _ in device.incoming], expected)

    def test_without_a_session_the_packets_are_staged(self) -> None:
        def forget(t: Trio) -> None:
            t.ab.keypairs.current = None

        one, batch = self._both(["b", "b", "c", "b"], forget)
        self.assert_same(one, batch)
        self.assertEqual(len(batch.ab.staged), 3)
        # B's handshake starts, C's packet goes out
        self.assertEqual([kind(d) for d, _ in batch.a.outgoing], [INITIATION, TRANSPORT])

    def test_run_that_would_pass_reject_after_messages_goes_one_at_a_time(self) -> None:
        def near_the_end(t: Trio) -> None:
            keypair = t.ab.keypairs.current
            assert keypair is not None
            keypair.send_counter = DEFAULT.reject_after_messages - 2

        one, batch = self._both(["b"] * 5, near_the_end)
        self.assert_same(one, batch)
        kinds = [kind(d) for d, _ in batch.a.outgoing]
        self.assertEqual(kinds.count(TRANSPORT), 2)  # the last two counters, then staging
        self.assertIn(INITIATION, kinds)
        self.assertEqual(len(batch.ab.staged), 3)

    def test_crossing_rekey_after_messages_starts_a_handshake(self) -> None:
        def near_rekey(t: Trio) -> None:
            keypair = t.ab.keypairs.current
            assert keypair is not None
            keypair.send_counter = DEFAULT.rekey_after_messages - 2

        one, batch = self._both(["b"] * 4, near_rekey)
        self.assert_same(one, batch)
        # the packet with counter REKEY_AFTER_MESSAGES starts it, then the next goes out
        self.assertEqual(
            [kind(d) for d, _ in batch.a.outgoing], [TRANSPORT] * 3 + [INITIATION, TRANSPORT]
        )

    def test_no_endpoint_is_counted_per_packet(self) -> None:
        def no_endpoint(t: Trio) -> None:
            t.ac.endpoint = None

        one, batch = self._both(["c", "b", "c"], no_endpoint)
        self.assert_same(one, batch)
        self.assertEqual(batch.a.stats()["drop_no_endpoint"], 2)

    def test_timers_as_one_at_a_time(self) -> None:
        def armed(t: Trio) -> None:
            t.ab.t_new_handshake = None
            t.ab.t_send_keepalive = T0 + 50
            t.ab.persistent_keepalive = 25

        one, batch = self._both(["b", "b", "b"], armed)
        self.assert_same(one, batch)
        self.assertIsNone(batch.ab.t_send_keepalive)  # data sent: no keepalive due
        self.assertIsNotNone(batch.ab.t_new_handshake)  # expect an answer
        self.assertEqual(batch.ab.t_persistent_keepalive, T0 + 10 + 25)

    def test_old_session_of_the_initiator_rekeys_first(self) -> None:
        def aged(t: Trio) -> None:
            keypair = t.ab.keypairs.current
            assert keypair is not None and keypair.is_initiator
            keypair.created = T0 + 10 - DEFAULT.rekey_after_time - 1

        one, batch = self._both(["b", "b", "b"], aged)
        self.assert_same(one, batch)
        self.assertEqual(
            [kind(d) for d, _ in batch.a.outgoing], [TRANSPORT, INITIATION, TRANSPORT, TRANSPORT]
        )
