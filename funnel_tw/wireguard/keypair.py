"""Transport keypairs and a peer's previous/current/next rotation."""

from __future__ import annotations

from typing import Any

from .messages import HEADER_TRANSPORT
from .transport_key import ReplayFilter, TransportKey


class Keypair:
    """One session's keys. The AEAD objects are built once: constructing one costs more than
    sealing a packet. ``header`` starts every transport message sent with these keys."""

    __slots__ = (
        "created",
        "header",
        "is_initiator",
        "local_index",
        "peer",
        "receive",
        "remote_index",
        "replay",
        "send",
        "send_counter",
    )

    def __init__(
        self,
        *,
        send_key: bytes,
        receive_key: bytes,
        is_initiator: bool,
        local_index: int,
        remote_index: int,
        created: float,
        peer: Any,
    ) -> None:
        self.send = TransportKey(send_key)
        self.receive = TransportKey(receive_key)
        self.header = HEADER_TRANSPORT + remote_index.to_bytes(4, "little")
        self.is_initiator = is_initiator
        self.local_index = local_index
        self.remote_index = remote_index
        self.created = created
        self.send_counter = 0
        self.replay = ReplayFilter()
        self.peer = peer


class Keypairs:
    """previous / current / next, as the protocol rotates them.

    The responder keeps a new keypair as ``next`` until the initiator proves it has it by
    sending the first transport packet on it; only then does it become ``current``.
    """

    __slots__ = ("current", "next", "previous")

    def __init__(self) -> None:
        self.previous: Keypair | None = None
        self.current: Keypair | None = None
        self.next: Keypair | None = None

    def all(self) -> list[Keypair]:
        return [k for k in (self.previous, self.current, self.next) if k is not None]

    def install(self, keypair: Keypair) -> list[Keypair]:
        """Add a freshly derived keypair; returns the keypairs this displaced, to forget."""
        dropped: list[Keypair] = []
        if keypair.is_initiator:
            if self.next is not None:
                if self.previous is not None:
                    dropped.append(self.previous)
                self.previous = self.next
                self.next = None
                if self.current is not None:
                    dropped.append(self.current)
            else:
                if self.previous is not None:
                    dropped.append(self.previous)
                self.previous = self.current
            self.current = keypair
        else:
            if self.next is not None:
                dropped.append(self.next)
            self.next = keypair
            if self.previous is not None:
                dropped.append(self.previous)
            self.previous = None
        return dropped

    def promote(self, keypair: Keypair) -> Keypair | None:
        """``keypair`` (== next) was used by the peer: make it current. Returns the dropped one."""
        dropped = self.previous
        self.previous = self.current
        self.current = keypair
        self.next = None
        return dropped

    def clear(self) -> list[Keypair]:
        dropped = self.all()
        self.previous = self.current = self.next = None
        return dropped
