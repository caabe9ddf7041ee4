"""ICMP echo on the overlay: answer pings to our addresses and send pings of our own."""

from __future__ import annotations

from collections.abc import Callable

from ..netstack import icmp, ip
from ..wireguard.device import Peer


class EchoService:
    """Answers echo requests to ``addresses`` and routes echo replies to waiting pingers.

    ``send`` puts an IP packet into the tunnel. Anything else is passed to ``fallback`` (the
    TCP stack, once there is one) or dropped and counted.
    """

    def __init__(
        self,
        addresses: list[bytes],
        send: Callable[[bytes], object],
        fallback: Callable[[ip.Packet, Peer], None] | None = None,
    ) -> None:
        self.addresses = set(addresses)
        self.send = send
        self.fallback = fallback
        self.waiters: dict[tuple[int, int], Callable[[icmp.Echo], None]] = {}
        self.drops: dict[str, int] = {}
        self.answered = 0

    def _drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def packet_received(self, data: bytes, peer: Peer) -> None:
        try:
            packet = ip.parse(data)
        except ip.IPError:
            self._drop("bad_ip")
            return
        if packet.dst not in self.addresses:
            self._drop("not_for_us")
            return
        if packet.protocol in (ip.PROTO_ICMP, ip.PROTO_ICMPV6):
            request = icmp.parse_echo_request(packet)
            if request is not None:
                self.answered += 1
                self.send(icmp.echo_reply(request))
                return
            reply = icmp.parse_echo_reply(packet)
            if reply is not None:
                waiter = self.waiters.pop((reply.ident, reply.sequence), None)
                if waiter is not None:
                    waiter(reply)
                    return
            self._drop("icmp")
            return
        if self.fallback is not None:
            self.fallback(packet, peer)
        else:
            self._drop("protocol")

    def ping(
        self,
        src: bytes,
        dst: bytes,
        ident: int,
        seq: int,
        data: bytes,
        on_reply: Callable[[icmp.Echo], None],
    ) -> bool:
        """Send one echo request; ``on_reply`` runs when its reply comes back."""
        self.waiters[(ident, seq)] = on_reply
        return bool(self.send(icmp.echo_request(src, dst, ident, seq, data)))
