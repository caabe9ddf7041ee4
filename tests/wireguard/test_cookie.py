"""mac1, mac2 and cookie replies (funnel_tw.wireguard.cookie)."""

from __future__ import annotations

import random
import struct

from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.wireguard import crypto
from funnel_tw.wireguard.cookie import CookieChecker, CookieGenerator
from funnel_tw.wireguard.messages import COOKIE_REPLY_SIZE, MSG_COOKIE_REPLY, unpack_cookie_reply

RESPONDER_PUBLIC = crypto.hash_(b"responder public key")  # any 32 bytes serve as a MAC key
OTHER_PUBLIC = crypto.hash_(b"someone else")
SOURCE = ("198.51.100.7", 40000)
T0 = 1_000.0
REFRESH = 120.0


def _body(seed: int) -> bytes:
    """An initiation-sized message without its MACs (148 - 32 bytes)."""
    return struct.pack("<I", 1) + random.Random(seed).randbytes(148 - 32 - 4)


class MACTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.checker = CookieChecker(RESPONDER_PUBLIC, REFRESH, random.Random(1).randbytes)
        self.generator = CookieGenerator(RESPONDER_PUBLIC, REFRESH)

    def test_layout(self) -> None:
        body = _body(0)
        message = self.generator.add_macs(body, T0)
        self.assertEqual(len(message), len(body) + 32)
        self.assertEqual(message[: len(body)], body)
        mac1_key = crypto.hash_(b"mac1----", RESPONDER_PUBLIC)
        self.assertEqual(message[-32:-16], crypto.mac(mac1_key, body))
        self.assertEqual(message[-16:], bytes(16))  # no cookie yet: mac2 is zeros

    def test_mac1_valid(self) -> None:
        self.assertTrue(self.checker.check_mac1(self.generator.add_macs(_body(0), T0)))

    def test_mac1_invalid(self) -> None:
        message = self.generator.add_macs(_body(0), T0)
        tampered_body = bytes([message[0] ^ 1]) + message[1:]
        tampered_mac = message[:-32] + bytes([message[-32] ^ 1]) + message[-31:]
        self.assertFalse(self.checker.check_mac1(tampered_body))
        self.assertFalse(self.checker.check_mac1(tampered_mac))
        # Made for another responder.
        foreign = CookieGenerator(OTHER_PUBLIC, REFRESH).add_macs(_body(0), T0)
        self.assertFalse(self.checker.check_mac1(foreign))
        # mac2 is not covered by mac1.
        other_mac2 = message[:-16] + b"\xff" * 16
        self.assertTrue(self.checker.check_mac1(other_mac2))

    def test_mac2_invalid_without_cookie(self) -> None:
        message = self.generator.add_macs(_body(0), T0)
        self.assertFalse(self.checker.check_mac2(message, SOURCE, T0))
        # Even once the checker has a secret, a zero mac2 is no cookie.
        self.checker.create_reply(message, 1, SOURCE, T0)
        self.assertFalse(self.checker.check_mac2(message, SOURCE, T0))


class CookieReplyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.checker = CookieChecker(RESPONDER_PUBLIC, REFRESH, random.Random(2).randbytes)
        self.generator = CookieGenerator(RESPONDER_PUBLIC, REFRESH)
        self.first = self.generator.add_macs(_body(1), T0)
        self.reply = self.checker.create_reply(self.first, 0xDEADBEEF, SOURCE, T0)

    def test_reply_layout(self) -> None:
        self.assertEqual(len(self.reply), COOKIE_REPLY_SIZE)
        self.assertEqual(self.reply[:4], struct.pack("<I", MSG_COOKIE_REPLY))
        reply = unpack_cookie_reply(self.reply)
        self.assertEqual(reply.receiver, 0xDEADBEEF)
        self.assertEqual(len(reply.nonce), 24)
        self.assertEqual(len(reply.cookie), 32)
        # The cookie is sealed under HASH("cookie--" || responder public), mac1 as AD.
        cookie = crypto.xaead_open(
            crypto.hash_(b"cookie--", RESPONDER_PUBLIC),
            reply.nonce,
            reply.cookie,
            self.first[-32:-16],
        )
        self.assertEqual(len(cookie), 16)

    def test_round_trip(self) -> None:
        self.assertTrue(self.generator.consume_reply(self.reply, T0 + 0.1))
        second = self.generator.add_macs(_body(2), T0 + 1)
        self.assertNotEqual(second[-16:], bytes(16))
        self.assertTrue(self.checker.check_mac1(second))
        self.assertTrue(self.checker.check_mac2(second, SOURCE, T0 + 1))

    def test_cookie_is_bound_to_the_source(self) -> None:
        self.generator.consume_reply(self.reply, T0)
        second = self.generator.add_macs(_body(2), T0 + 1)
        self.assertFalse(self.checker.check_mac2(second, ("198.51.100.8", 40000), T0 + 1))
        self.assertFalse(self.checker.check_mac2(second, ("198.51.100.7", 40001), T0 + 1))
        self.assertTrue(self.checker.check_mac2(second, SOURCE, T0 + 1))

    def test_mac2_covers_the_message(self) -> None:
        self.generator.consume_reply(self.reply, T0)
        second = self.generator.add_macs(_body(2), T0 + 1)
        tampered = second[:-16] + bytes([second[-16] ^ 1]) + second[-15:]
        self.assertFalse(self.checker.check_mac2(tampered, SOURCE, T0 + 1))

    def test_checker_secret_expires(self) -> None:
        self.generator.consume_reply(self.reply, T0)
        second = self.generator.add_macs(_body(2), T0 + 1)
        self.assertTrue(self.checker.check_mac2(second, SOURCE, T0 + REFRESH))
        self.assertFalse(self.checker.check_mac2(second, SOURCE, T0 + REFRESH + 0.5))

    def test_secret_rotates_after_refresh(self) -> None:
        self.generator.consume_reply(self.reply, T0)
        late = T0 + REFRESH + 1
        third = self.generator.add_macs(_body(3), T0 + 2)
        # A new reply after the refresh time comes with a new secret: old cookies are void.
        self.checker.create_reply(third, 1, SOURCE, late)
        self.assertFalse(self.checker.check_mac2(third, SOURCE, late))

    def test_secret_kept_within_refresh(self) -> None:
        self.generator.consume_reply(self.reply, T0)
        second = self.generator.add_macs(_body(2), T0 + 1)
        # Another reply (for someone else) inside the refresh time keeps the same secret.
        self.checker.create_reply(second, 1, ("203.0.113.1", 1), T0 + 60)
        self.assertTrue(self.checker.check_mac2(second, SOURCE, T0 + 60))

    def test_generator_stops_using_an_old_cookie(self) -> None:
        self.generator.consume_reply(self.reply, T0)
        fresh = self.generator.add_macs(_body(2), T0 + REFRESH)
        self.assertNotEqual(fresh[-16:], bytes(16))
        stale = self.generator.add_macs(_body(3), T0 + REFRESH + 0.5)
        self.assertEqual(stale[-16:], bytes(16))

    def test_reply_to_a_different_mac1_rejected(self) -> None:
        # The generator has since sent another message: the reply to the first no longer
        # authenticates (its AD is the first message's mac1).
        self.generator.add_macs(_body(9), T0 + 0.5)
        self.assertFalse(self.generator.consume_reply(self.reply, T0 + 0.6))
        later = self.generator.add_macs(_body(10), T0 + 1)
        self.assertEqual(later[-16:], bytes(16))

    def test_reply_for_another_responder_rejected(self) -> None:
        other = CookieGenerator(OTHER_PUBLIC, REFRESH)
        other.add_macs(_body(1), T0)
        self.assertFalse(other.consume_reply(self.reply, T0))

    def test_tampered_or_short_reply_rejected(self) -> None:
        tampered = self.reply[:-1] + bytes([self.reply[-1] ^ 1])
        self.assertFalse(self.generator.consume_reply(tampered, T0))
        self.assertFalse(self.generator.consume_reply(self.reply[:-1], T0))
        self.assertFalse(self.generator.consume_reply(self.reply + b"\x00", T0))
        self.assertTrue(self.generator.consume_reply(self.reply, T0))

    def test_generator_that_sent_nothing_rejects(self) -> None:
        fresh = CookieGenerator(RESPONDER_PUBLIC, REFRESH)
        self.assertFalse(fresh.consume_reply(self.reply, T0))

    def test_nonces_are_random(self) -> None:
        again = self.checker.create_reply(self.first, 0xDEADBEEF, SOURCE, T0)
        self.assertNotEqual(unpack_cookie_reply(again).nonce, unpack_cookie_reply(self.reply).nonce)
