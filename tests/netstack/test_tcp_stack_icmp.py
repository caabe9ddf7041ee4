"""ICMP echo through the Stack: requests for our addresses are answered, replies reported."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.netstack import icmp
from funnel_tw.netstack.ip import PROTO_ICMP, PROTO_ICMPV6, PROTO_UDP, build, parse
from funnel_tw.netstack.stack import ECHO_REPLY

from .tcp_harness import A4, A6, B4, B6, C4, T0, Net, listening_stack, packet_problems


class EchoTests(SynchronousTestCase):
    def ping(self, v6: bool) -> None:
        net = Net.pair(v6=v6)
        src, dst = (A6, B6) if v6 else (A4, B4)
        net.inject(net.b, icmp.echo_request(src, dst, 0x1234, 7, b"are you there?"))
        net.run(lambda: bool(net.a.echo_replies), timeout=1)
        (reply,) = net.a.echo_replies
        self.assertEqual(reply, icmp.Echo(dst, src, 0x1234, 7, b"are you there?"))
        self.assertEqual(net.a.events, [(ECHO_REPLY, None, reply)])
        self.assertEqual(net.b.stack.counters["icmp_echo_answered"], 1)
        (packet,) = net.b.sent
        self.assertEqual(packet_problems(packet, 1280), [])
        self.assertEqual(parse(packet).protocol, PROTO_ICMPV6 if v6 else PROTO_ICMP)
        self.assertEqual(net.b.events, [])

    def test_ipv4(self) -> None:
        self.ping(False)

    def test_ipv6(self) -> None:
        self.ping(True)

    def test_request_for_another_address_is_dropped(self) -> None:
        stack = listening_stack()
        stack.receive(icmp.echo_request(A4, C4, 1, 1), T0)
        self.assertEqual(stack.outgoing, [])
        self.assertEqual(stack.counters["drop_not_for_us"], 1)

    def test_bad_icmp_checksum_is_dropped(self) -> None:
        stack = listening_stack()
        packet = bytearray(icmp.echo_request(A4, B4, 1, 1, b"data"))
        packet[-1] ^= 1
        stack.receive(bytes(packet), T0)
        self.assertEqual(stack.outgoing, [])
        self.assertEqual(stack.counters["drop_icmp"], 1)

    def test_other_icmp_and_protocols_are_dropped(self) -> None:
        stack = listening_stack()
        unreachable = bytes([3, 1, 0, 0, 0, 0, 0, 0])
        stack.receive(build(A4, B4, PROTO_ICMP, unreachable), T0)
        stack.receive(build(A4, B4, PROTO_UDP, bytes(12)), T0)
        self.assertEqual(stack.outgoing, [])
        self.assertEqual(stack.counters["drop_icmp"], 1)
        self.assertEqual(stack.counters["drop_protocol"], 1)
