"""What every part of a Device shares: its tables, queues, counters and events.

The parts (send.py, handshake.py, receive.py, timers.py) are classes stacked on this one, each
adding the methods of one concern; device.py composes them. Keeping the state here, in one
place, lets each part read and write it as plain attributes of ``self``, which the per-packet
loops need to stay fast.
"""

from __future__ import annotations

import random
from collections import deque
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from . import crypto
from .allowedips import AllowedIPs
from .constants import DEFAULT, Constants
from .cookie import CookieChecker
from .keypair import Keypair
from .peer import Endpoint, Peer
from .ratelimit import RateLimiter

__all__ = ["MAX_UNKNOWN_REPORTED", "DeviceState", "Event"]


ADDRESS_CACHE_SIZE = 4096
MAX_UNKNOWN_REPORTED = 16  # unknown-key initiations kept for the caller between two reads


class Event(NamedTuple):
    kind: str  # handshake-complete | handshake-failed | keys-zeroed | handshake-initiated
    peer: Peer
    initiator: bool = False


class DeviceState:
    """A WireGuard interface's state: our static key, our peers, the index table, the outputs."""

    def __init__(
        self,
        private_key: bytes,
        *,
        mtu: int = 1420,
        constants: Constants = DEFAULT,
        rng: random.Random | None = None,
    ) -> None:
        self.private = X25519PrivateKey.from_private_bytes(private_key)
        self.public_key = crypto.public_key(self.private)
        self.mtu = mtu
        self.constants = constants
        self.rng = rng or random.SystemRandom()
        # Timer jitter needs no secrecy, and a SystemRandom draw is a getrandom(2) call: under
        # load the send path draws once per reactor turn. A given rng (tests) serves both.
        self._jitter_rng = random.Random() if rng is None else rng
        self.cookie_checker = CookieChecker(
            self.public_key, constants.cookie_refresh_time, self._random_bytes
        )
        self.rate_limiter = RateLimiter()
        self.peers: list[Peer] = []
        self.peers_by_key: dict[bytes, Peer] = {}
        self.routes: AllowedIPs[Peer] = AllowedIPs()
        # an inner address -> the peer whose allowed IPs hold it (None: nobody's), for the
        # source check of what arrives and the routing of what leaves; cleared when routes change
        self._address_owner: dict[bytes, Peer | None] = {}
        self._keypairs: dict[int, Keypair] = {}  # local index -> keypair
        self._handshakes: dict[int, Peer] = {}  # local index -> peer with a handshake under way
        self._handshake_queue: deque[tuple[bytes, Endpoint]] = deque()
        self._under_load_until = float("-inf")
        self.outgoing: list[tuple[bytes, Endpoint]] = []
        self.incoming: list[tuple[bytes, Peer]] = []
        self.events: list[Event] = []
        # (claimed static key, source) of initiations from keys that are not our peers; the
        # claim is unauthenticated, so it is only ever reported, never acted on
        self.unknown_initiations: list[tuple[bytes, Endpoint]] = []
        self.rx_datagrams = 0
        self.drops: dict[str, int] = {}
        self.handshakes_completed = 0
        self.cookie_replies_sent = 0

    # --- bookkeeping ------------------------------------------------------------------------

    def _owner(self, address: bytes) -> Peer | None:
        """The peer whose allowed IPs hold ``address`` (cryptokey routing), cached."""
        try:
            return self._address_owner[address]
        except KeyError:
            return self._lookup_owner(address)

    def _lookup_owner(self, address: bytes) -> Peer | None:
        """Slow path of ``_address_owner``: the routing table, its answer cached until the
        routes change (bounded: cleared when full)."""
        if len(self._address_owner) >= ADDRESS_CACHE_SIZE:
            self._address_owner.clear()
        lookup = self.routes.lookup_v4 if len(address) == 4 else self.routes.lookup_v6
        owner = self._address_owner[address] = lookup(address)
        return owner

    def _random_bytes(self, n: int) -> bytes:
        return self.rng.getrandbits(8 * n).to_bytes(n, "little")

    def _drop(self, reason: str, count: int = 1) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + count

    def _new_index(self) -> int:
        while True:
            index = self.rng.getrandbits(32)
            if index and index not in self._keypairs and index not in self._handshakes:
                return index

    def _forget_keypairs(self, dropped: list[Keypair]) -> None:
        for keypair in dropped:
            self._keypairs.pop(keypair.local_index, None)

    def _jitter(self) -> float:
        return self._jitter_rng.uniform(0.0, self.constants.rekey_timeout_jitter)
