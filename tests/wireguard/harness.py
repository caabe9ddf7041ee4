"""Two (or more) sans-IO Devices wired together in memory, with a fixed, explicit clock."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address, ip_network

from funnel_tw.netstack.ip import build_ipv4, build_ipv6
from funnel_tw.wireguard.constants import DEFAULT, Constants
from funnel_tw.wireguard.cookie import CookieGenerator
from funnel_tw.wireguard.device import Device, Endpoint, Peer

T0 = 1_700_000_000.0  # wall-clock seconds: TAI64N stamps are derived from it

KEY_A = bytes(range(1, 33))
KEY_B = bytes(range(33, 65))
KEY_C = bytes(range(65, 97))
A_EP: Endpoint = ("192.0.2.1", 51820)
B_EP: Endpoint = ("192.0.2.2", 51820)
C_EP: Endpoint = ("192.0.2.3", 51820)
A_IP, B_IP, C_IP = "10.0.0.1", "10.0.0.2", "10.0.0.3"
A_IP6, B_IP6 = "fd00::1", "fd00::2"

INITIATION, RESPONSE, COOKIE_REPLY, TRANSPORT = 1, 2, 3, 4


def ip4(src: str, dst: str, payload: bytes = b"ping" * 2, protocol: int = 17) -> bytes:
    return build_ipv4(IPv4Address(src).packed, IPv4Address(dst).packed, protocol, payload)


def ip6(src: str, dst: str, payload: bytes = b"ping" * 2, protocol: int = 17) -> bytes:
    return build_ipv6(IPv6Address(src).packed, IPv6Address(dst).packed, protocol, payload)


def kind(datagram: bytes) -> int:
    return datagram[0]


def counter(datagram: bytes) -> int:
    value: int = struct.unpack_from("<Q", datagram, 8)[0]
    return value


def receiver(datagram: bytes) -> int:
    value: int = struct.unpack_from("<I", datagram, 4)[0]
    return value


def kinds(datagrams: Iterable[tuple[bytes, Endpoint]]) -> list[int]:
    return [kind(d) for d, _ in datagrams]


def drops(device: Device) -> int:
    return sum(v for k, v in device.stats().items() if k.startswith("drop_"))


def junk_initiation(
    responder_public: bytes, rng: random.Random, now: float, gen: CookieGenerator | None = None
) -> bytes:
    """A 148-byte initiation with random content and a valid mac1 (and mac2 if ``gen`` has
    a cookie): it passes the cookie checks and then fails to decrypt."""
    gen = gen or CookieGenerator(responder_public)
    return gen.add_macs(struct.pack("<I", INITIATION) + rng.randbytes(148 - 32 - 4), now)


class Net:
    """Devices on a simulated network: each device has one address; datagrams sent to an
    address that no device owns are lost (and recorded)."""

    def __init__(self) -> None:
        self.devices: dict[Endpoint, Device] = {}
        self.address: dict[int, Endpoint] = {}
        self.lost: list[tuple[bytes, Endpoint]] = []
        self.now = T0

    def add(self, device: Device, address: Endpoint) -> Device:
        self.devices[address] = device
        self.address[id(device)] = address
        return device

    @staticmethod
    def take(device: Device) -> list[tuple[bytes, Endpoint]]:
        out = list(device.outgoing)
        device.outgoing.clear()
        return out

    def send(self, device: Device, now: float | None = None) -> list[tuple[bytes, Endpoint]]:
        """Deliver what ``device`` has queued, in one batch per destination."""
        now = self.now if now is None else now
        out = self.take(device)
        source = self.address[id(device)]
        by_destination: dict[Endpoint, list[tuple[bytes, Endpoint]]] = {}
        for datagram, endpoint in out:
            if endpoint in self.devices:
                by_destination.setdefault(endpoint, []).append((datagram, source))
            else:
                self.lost.append((datagram, endpoint))
        for endpoint, batch in by_destination.items():
            self.devices[endpoint].receive_batch(batch, now)
        return out

    def flush(self, now: float | None = None, limit: int = 50) -> None:
        """Deliver until nobody has anything to send."""
        for _ in range(limit):
            if not any(d.outgoing for d in self.devices.values()):
                return
            for device in list(self.devices.values()):
                self.send(device, now)
        raise AssertionError("the devices never went quiet")

    def advance(self, until: float, limit: int = 10_000) -> None:
        """Run every timer of every device up to ``until``, delivering as we go."""
        for _ in range(limit):
            due = [
                d
                for d in (dev.next_deadline() for dev in self.devices.values())
                if d is not None and d <= until
            ]
            if not due:
                self.now = until
                return
            self.now = max(self.now, min(due))
            for device in self.devices.values():
                device.tick(self.now)
            self.flush()
        raise AssertionError("timers never settled")


class Pair(Net):
    """A (10.0.0.1, knows B's endpoint) and B (10.0.0.2, learns A's endpoint)."""

    def __init__(
        self,
        *,
        constants: Constants = DEFAULT,
        a_psk: bytes | None = None,
        b_psk: bytes | None = None,
        a_keepalive: int = 0,
        b_keepalive: int = 0,
        b_knows_a_endpoint: bool = False,
        mtu: int = 1420,
    ) -> None:
        super().__init__()
        self.a = self.add(Device(KEY_A, constants=constants, rng=random.Random(1), mtu=mtu), A_EP)
        self.b = self.add(Device(KEY_B, constants=constants, rng=random.Random(2), mtu=mtu), B_EP)
        self.pa: Peer = self.a.add_peer(
            self.b.public_key,
            name="b",
            allowed_ips=(ip_network(f"{B_IP}/32"), ip_network(f"{B_IP6}/128")),
            endpoint=B_EP,
            persistent_keepalive=a_keepalive,
            preshared_key=a_psk,
        )
        self.pb: Peer = self.b.add_peer(
            self.a.public_key,
            name="a",
            allowed_ips=(ip_network(f"{A_IP}/32"), ip_network(f"{A_IP6}/128")),
            endpoint=A_EP if b_knows_a_endpoint else None,
            persistent_keepalive=b_keepalive,
            preshared_key=b_psk,
        )

    def a_to_b(self, payload: bytes = b"hello from a") -> bytes:
        return ip4(A_IP, B_IP, payload)

    def b_to_a(self, payload: bytes = b"hello from b") -> bytes:
        return ip4(B_IP, A_IP, payload)

    def establish(self, now: float = T0) -> None:
        """A sends data; handshake; B receives it (and so confirms the session)."""
        self.now = now
        assert self.a.send_packet(self.a_to_b(b"first"), now)
        self.flush(now)
        assert [p for p, _ in self.b.incoming] == [self.a_to_b(b"first")], self.b.incoming
        self.b.incoming.clear()
        self.a.events.clear()
        self.b.events.clear()
