from collections.abc import Sequence
from typing import Any

OPENSSL_VERSION: str

class TransportKey:
    def __init__(self, key: bytes, /) -> None: ...
    def seal(self, header: bytes, counter: int, packet: bytes, mtu: int, /) -> bytes: ...
    def seal_run(
        self,
        header: bytes,
        counter: int,
        packets: list[bytes],
        mtu: int,
        endpoint: Any,
        out: list[tuple[bytes, Any]],
        /,
    ) -> int: ...
    def open(self, message: bytes, /) -> bytes | None: ...
    def open_run(
        self,
        batch: Sequence[tuple[bytes, Any]],
        start: int,
        stop: int,
        receiver: int,
        replay: ReplayFilter,
        limit: int,
        /,
    ) -> tuple[int, list[bytes], int, int, int, Any, bytes | None, bool, int, int, int]: ...

class ReplayFilter:
    def validate(self, counter: int, limit: int, /) -> bool: ...
