"""deny, allow and allow-file: which client addresses may pass, the file reloaded on change."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from ipaddress import ip_address
from pathlib import Path

from ...config.access import read_networks
from ...config.model import IPAddress, IPNetwork

__all__ = ["RELOAD_EVERY", "AddressFilter"]

RELOAD_EVERY = 5.0
"""Seconds between looks at the allow-file's modification time."""


@functools.lru_cache(maxsize=4096)
def parse_address(ip: str) -> IPAddress | None:
    """An address (IPv4-mapped IPv6 as IPv4); cached, since a client sends many requests."""
    try:
        address = ip_address(ip)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


def _contains(networks: Sequence[IPNetwork], address: IPAddress) -> bool:
    return any(address in network for network in networks if network.version == address.version)


class AddressFilter:
    """Deny first, then allow; no allow list at all means every address may pass.

    A changed allow-file is read again (at most every RELOAD_EVERY seconds, checked when a
    request comes); a file that became unreadable or wrong keeps the last good list and
    reports it through ``on_error``, so a typo never opens (or closes) the door."""

    def __init__(
        self,
        allow: Sequence[IPNetwork],
        deny: Sequence[IPNetwork],
        allow_file: Path | None = None,
        on_error: Callable[[str], None] = lambda why: None,
    ) -> None:
        self.allow = tuple(allow)
        self.deny = tuple(deny)
        self.allow_file = allow_file
        self.on_error = on_error
        self.from_file: tuple[IPNetwork, ...] = ()
        self._stamp: tuple[int, int] | None = None
        self._checked = -RELOAD_EVERY * 2
        if allow_file is not None:
            self.reload(0.0, force=True)

    def reload(self, now: float, force: bool = False) -> None:
        if self.allow_file is None or (not force and now - self._checked < RELOAD_EVERY):
            return
        self._checked = now
        try:
            st = os.stat(self.allow_file)
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == self._stamp and not force:
                return
            self.from_file = read_networks(self.allow_file)
            self._stamp = stamp
        except (OSError, ValueError) as e:
            self.on_error(f"allow-file kept as before: {e}")

    def check(self, ip: str, now: float) -> str | None:
        """None if ``ip`` may pass, else the reason ("denied", "not_allowed")."""
        if not self.deny and not self.allow and self.allow_file is None:
            return None  # the policy has no address rule: nothing to parse
        self.reload(now)
        address = parse_address(ip)
        if address is None:
            return "not_allowed"
        if _contains(self.deny, address):
            return "denied"
        if self.allow_file is None and not self.allow:
            return None
        if _contains(self.allow, address) or _contains(self.from_file, address):
            return None
        return "not_allowed"
