"""A token-bucket rate limit per client address, with a bounded table and injected time."""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from ipaddress import ip_address, ip_network

__all__ = ["MAX_CLIENTS", "RateLimiter", "client_key"]

MAX_CLIENTS = 65536
"""Buckets kept at most; beyond, the least recently seen client is forgotten (a fresh,
full bucket if it comes back): memory stays bounded whatever the number of sources."""


@functools.lru_cache(maxsize=4096)
def client_key(ip: str) -> str:
    """The rate-limited unit: an IPv4 address, or the /64 of an IPv6 one (a single host
    usually holds a whole /64, and would otherwise get 2^64 buckets)."""
    try:
        address = ip_address(ip)
    except ValueError:
        return ip
    if address.version == 6 and address.ipv4_mapped is None:
        return str(ip_network(f"{address}/64", strict=False))
    return str(address.ipv4_mapped or address) if address.version == 6 else str(address)


class RateLimiter:
    """``rate`` events per second per client, bursts of up to ``burst``."""

    def __init__(self, rate: float, burst: int, max_clients: int = MAX_CLIENTS) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_clients = max_clients
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, t)

    def take(self, ip: str, now: float) -> float | None:
        """None if the event may go ahead (one token taken), else the seconds until it could."""
        key = client_key(ip)
        tokens, then = self.buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - then) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self.buckets[key] = (tokens, now)
        while len(self.buckets) > self.max_clients:
            self.buckets.popitem(last=False)
        return None if allowed else (1.0 - tokens) / self.rate

    @staticmethod
    def retry_after(wait: float) -> int:
        """A Retry-After value: whole seconds, at least 1."""
        return max(1, math.ceil(wait))
