"""A WireGuard peer: its static identity, session state, timers and counters."""

from __future__ import annotations

from collections import deque
from ipaddress import IPv4Network, IPv6Network

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from . import crypto
from .constants import MAX_STAGED_PACKETS
from .cookie import CookieGenerator
from .keypair import Keypairs
from .noise import Handshake

Endpoint = tuple[str, int]


class Peer:
    """State for one peer. The Device owns and mutates it; read it for status and logging.

    Timers are absolute deadlines (None when not armed), so arming one on the hot path is a
    float assignment and the Device finds the next deadline with a min().
    """

    __slots__ = (
        "allowed_ips",
        "cookies",
        "endpoint",
        "handshake",
        "handshake_attempts",
        "keypairs",
        "last_handshake",
        "last_sent_handshake",
        "name",
        "need_another_keepalive",
        "persistent_keepalive",
        "preshared_key",
        "public_key",
        "rx_bytes",
        "rx_packets",
        "sent_last_minute_handshake",
        "staged",
        "static_static",
        "t_new_handshake",
        "t_persistent_keepalive",
        "t_retransmit_handshake",
        "t_send_keepalive",
        "t_zero_key_material",
        "tx_bytes",
        "tx_packets",
    )

    def __init__(
        self,
        *,
        name: str,
        public_key: bytes,
        local_private: X25519PrivateKey,
        allowed_ips: tuple[IPv4Network | IPv6Network, ...] = (),
        endpoint: Endpoint | None = None,
        persistent_keepalive: int = 0,
        preshared_key: bytes | None = None,
        cookie_refresh_time: float = 120.0,
    ) -> None:
        self.name = name
        self.public_key = public_key
        self.allowed_ips = allowed_ips
        self.endpoint = endpoint
        self.persistent_keepalive = persistent_keepalive
        self.preshared_key = preshared_key or bytes(32)
        # A low-order peer key leaves this as None; such a peer can never complete a handshake.
        try:
            self.static_static: bytes | None = crypto.dh(local_private, public_key)
        except ValueError:
            self.static_static = None
        self.cookies = CookieGenerator(public_key, cookie_refresh_time)
        self.handshake = Handshake()
        self.keypairs = Keypairs()
        self.staged: deque[bytes] = deque(maxlen=MAX_STAGED_PACKETS)
        self.handshake_attempts = 0
        self.last_sent_handshake = float("-inf")
        self.last_handshake: float | None = None
        self.sent_last_minute_handshake = False
        self.need_another_keepalive = False
        self.t_retransmit_handshake: float | None = None
        self.t_send_keepalive: float | None = None
        self.t_new_handshake: float | None = None
        self.t_zero_key_material: float | None = None
        self.t_persistent_keepalive: float | None = None
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.rx_packets = 0
        self.tx_packets = 0

    def next_deadline(self) -> float | None:
        deadlines = [
            t
            for t in (
                self.t_retransmit_handshake,
                self.t_send_keepalive,
                self.t_new_handshake,
                self.t_zero_key_material,
                self.t_persistent_keepalive,
            )
            if t is not None
        ]
        return min(deadlines) if deadlines else None

    def __repr__(self) -> str:
        return f"<Peer {self.name}>"
