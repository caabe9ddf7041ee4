"""Per-source token buckets for handshake messages, applied only when under load."""

from __future__ import annotations

PACKETS_PER_SECOND = 20
PACKETS_BURSTABLE = 5
_PACKET_COST = 1.0 / PACKETS_PER_SECOND
_MAX_TOKENS = _PACKET_COST * PACKETS_BURSTABLE
MAX_SOURCES = 1 << 16


class RateLimiter:
    """Allows a burst of 5 then 20 handshakes per second from each source address.

    The table is bounded: entries idle for a second are collected, and when it is still full
    a new source is refused (under a flood from many addresses, failing closed is the point).
    """

    def __init__(self, max_sources: int = MAX_SOURCES) -> None:
        self._table: dict[str, tuple[float, float]] = {}  # source ip -> (tokens, last time)
        self._max = max_sources
        self._last_gc = float("-inf")

    def _collect(self, now: float) -> None:
        self._last_gc = now
        self._table = {k: v for k, v in self._table.items() if now - v[1] <= 1.0}

    def allow(self, source_ip: str, now: float) -> bool:
        if now - self._last_gc > 1.0:
            self._collect(now)
        entry = self._table.get(source_ip)
        if entry is None:
            if len(self._table) >= self._max:
                return False
            self._table[source_ip] = (_MAX_TOKENS - _PACKET_COST, now)
            return True
        tokens, last = entry
        tokens = min(_MAX_TOKENS, tokens + (now - last))
        if tokens >= _PACKET_COST - 1e-12:
            self._table[source_ip] = (tokens - _PACKET_COST, now)
            return True
        self._table[source_ip] = (tokens, now)
        return False

    def __len__(self) -> int:
        return len(self._table)
