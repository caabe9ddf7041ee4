"""Hostile input to Device.receive_batch: never raises, never delivers, always counted."""

from __future__ import annotations

import random
import struct
from ipaddress import ip_network

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.wireguard.cookie import CookieGenerator
from funnel_tw.wireguard.device import Device, Endpoint
from funnel_tw.wireguard.messages import (
    COOKIE_REPLY_SIZE,
    INITIATION_SIZE,
    RESPONSE_SIZE,
    TRANSPORT_MIN_SIZE,
)

from .harness import (
    A_EP,
    C_EP,
    INITIATION,
    KEY_C,
    RESPONSE,
    T0,
    TRANSPORT,
    Net,
    Pair,
    drops,
    junk_initiation,
    kinds,
)

NOW = T0 + 1
ATTACKER: Endpoint = ("198.51.100.66", 6666)
SIZES = {1: INITIATION_SIZE, 2: RESPONSE_SIZE, 3: COOKIE_REPLY_SIZE}

sources = st.sampled_from([ATTACKER, A_EP, ("203.0.113.7", 1), ("2001:db8::66", 443)])


@st.composite
def handshake_shaped(draw: st.DrawFn) -> bytes:
    """Type 1..3, three zero bytes, random content, exactly the right size."""
    kind = draw(st.integers(min_value=1, max_value=3))
    body = draw(st.binary(min_size=SIZES[kind] - 4, max_size=SIZES[kind] - 4))
    return struct.pack("<I", kind) + body


class HostileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.p = Pair()
        self.p.establish()
        # A handshake of B's own in progress (towards a peer that never answers), so that
        # responses and cookie replies can aim at a live handshake index as well.
        c = Device(KEY_C)
        self.pc = self.p.b.add_peer(
            c.public_key, allowed_ips=(ip_network("10.0.0.3/32"),), endpoint=C_EP
        )
        self.p.b.send_to_peer(self.pc, b"", NOW)
        self.assertEqual(kinds(Net.take(self.p.b)), [INITIATION])
        kp = self.p.pb.keypairs.current
        assert kp is not None
        self.live = [kp.local_index, self.pc.handshake.local_index]
        self.checked = 0

    def _feed(self, batch: list[tuple[bytes, Endpoint]]) -> None:
        b = self.p.b
        before = drops(b)
        handshake_state = self.pc.handshake.state
        b.receive_batch(batch, NOW)
        self.assertEqual(b.incoming, [])
        self.assertEqual(drops(b) - before, len(batch), b.stats())
        self.assertIs(self.pc.handshake.state, handshake_state)
        self.assertEqual(self.p.pb.endpoint, A_EP)
        # Nothing answers garbage, except cookie replies when under load.
        for datagram, _ in b.outgoing:
            self.assertEqual(datagram[0], 3)
        b.outgoing.clear()
        self._session_still_works()

    def _session_still_works(self) -> None:
        self.checked += 1
        p = self.p
        p.a.send_packet(p.a_to_b(b"a%d" % self.checked), NOW)
        p.b.send_packet(p.b_to_a(b"b%d" % self.checked), NOW)
        self.assertEqual(kinds(p.a.outgoing), [TRANSPORT])
        self.assertEqual(kinds(p.b.outgoing), [TRANSPORT])
        p.flush(NOW)
        self.assertEqual(p.b.incoming, [(p.a_to_b(b"a%d" % self.checked), p.pb)])
        self.assertEqual(p.a.incoming, [(p.b_to_a(b"b%d" % self.checked), p.pa)])
        p.a.incoming.clear()
        p.b.incoming.clear()

    @given(st.lists(st.tuples(st.binary(max_size=200), sources), min_size=1, max_size=20))
    def test_arbitrary_bytes(self, batch: list[tuple[bytes, Endpoint]]) -> None:
        self._feed(batch)

    @given(st.lists(st.tuples(handshake_shaped(), sources), min_size=1, max_size=20))
    def test_handshake_shaped(self, batch: list[tuple[bytes, Endpoint]]) -> None:
        self._feed(batch)

    @given(st.data())
    def test_aimed_at_live_indices(self, data: st.DataObject) -> None:
        batch: list[tuple[bytes, Endpoint]] = []
        for _ in range(data.draw(st.integers(min_value=1, max_value=10))):
            index = data.draw(st.sampled_from(self.live))
            kind = data.draw(st.sampled_from([RESPONSE, 3, TRANSPORT]))
            if kind == TRANSPORT:
                counter = data.draw(
                    st.one_of(st.integers(0, 1 << 16), st.integers(0, (1 << 64) - 1))
                )
                body = data.draw(st.binary(min_size=16, max_size=120))
                datagram = struct.pack("<IIQ", TRANSPORT, index, counter) + body
            elif kind == RESPONSE:
                body = data.draw(
                    st.binary(min_size=RESPONSE_SIZE - 12, max_size=RESPONSE_SIZE - 12)
                )
                datagram = struct.pack(
                    "<III", RESPONSE, data.draw(st.integers(0, 2**32 - 1)), index
                )
                datagram += body
            else:
                body = data.draw(st.binary(min_size=COOKIE_REPLY_SIZE - 8, max_size=56))
                datagram = struct.pack("<II", 3, index) + body
            batch.append((datagram, data.draw(sources)))
        self._feed(batch)

    @given(st.data())
    def test_valid_mac1_random_content(self, data: st.DataObject) -> None:
        """Past the cheap mac1 check, random content must still fail cleanly."""
        rng = random.Random(data.draw(st.integers(0, 2**32)))
        batch: list[tuple[bytes, Endpoint]] = []
        gen = CookieGenerator(self.p.b.public_key)
        for _ in range(data.draw(st.integers(min_value=1, max_value=6))):
            if data.draw(st.booleans()):
                batch.append((junk_initiation(self.p.b.public_key, rng, NOW, gen), ATTACKER))
            else:
                body = struct.pack("<III", RESPONSE, rng.getrandbits(32), self.live[1])
                body += rng.randbytes(RESPONSE_SIZE - 32 - 12)
                batch.append((gen.add_macs(body, NOW), ATTACKER))
        self._feed(batch)

    def test_under_load(self) -> None:
        rng = random.Random(3)
        batch = [
            (struct.pack("<I", 1 + i % 3) + rng.randbytes(SIZES[1 + i % 3] - 4), ATTACKER)
            for i in range(300)
        ]
        self._feed(batch)
        self.assertEqual(self.p.b.stats()["drop_mac1"], 200)
        self.assertEqual(self.p.b.stats()["cookie_replies"], 0)

    def test_malformed_sizes_and_types(self) -> None:
        bad: list[bytes] = [b"", b"\x01", b"\x04\x00\x00\x00"]
        for kind, size in SIZES.items():
            bad += [
                struct.pack("<I", kind) + bytes(size - 5),
                struct.pack("<I", kind) + bytes(size - 3),
            ]
        bad += [struct.pack("<IIQ", TRANSPORT, self.live[0], 0) + bytes(TRANSPORT_MIN_SIZE - 17)]
        bad += [bytes([k, 0, 0, 0]) + bytes(INITIATION_SIZE - 4) for k in (0, 5, 6, 255)]
        # The type is a u32: nonzero "reserved" bytes make it another (unknown) type.
        bad += [b"\x01\x01\x00\x00" + bytes(INITIATION_SIZE - 4)]
        bad += [b"\x04\x00\x00\x01" + struct.pack("<IQ", self.live[0], 0) + bytes(16)]
        self._feed([(d, ATTACKER) for d in bad])
        self.assertEqual(self.p.b.stats()["drop_malformed"], len(bad))

    def test_oversized_transport_is_just_undecryptable(self) -> None:
        datagram = struct.pack("<IIQ", TRANSPORT, self.live[0], 1) + bytes(65000)
        self._feed([(datagram, ATTACKER)])
        self.assertEqual(self.p.b.stats()["drop_decrypt"], 1)

    def test_rx_datagrams_counted(self) -> None:
        before = self.p.b.stats()["rx_datagrams"]
        self._feed([(b"x", ATTACKER)] * 7)
        self.assertEqual(self.p.b.stats()["rx_datagrams"] - before, 7 + 1)  # + the check
