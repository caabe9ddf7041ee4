"""What connections learned about the path to a peer, kept for the next one (RFC 9959).

Each public connection the relay forwards is a new TCP connection to the node. Without a memory
each starts at ten segments and doubles per round trip (at 50 ms: ~9 round trips, 0.5 s, before
8 MB are in flight), and the receiving side's window starts small and autotunes up as well.
A connection that ends leaves here the most it delivered in one round trip, its smallest RTT
and the receive window it grew to; the next connection to that peer address may use them
(``tcp/resume.py``: Careful Resume). One entry per peer address, each at most ``lifetime``
seconds old, at most ``capacity`` of them (the least recently saved go first), and one
connection at a time uses an entry: a burst of new connections does not each jump.
"""

from __future__ import annotations

from collections import OrderedDict

PATH_LIFETIME = 600.0  # seconds (tcp-path-memory): minutes, as RFC 9959 4.3.1 suggests
PATH_CAPACITY = 1024  # peer addresses remembered


class PathEntry:
    """One peer address's saved parameters; ``cwnd`` 0 when nothing was sent worth saving,
    ``window`` 0 when no receive window grew."""

    __slots__ = ("busy", "cwnd", "expires", "rtt", "window")

    def __init__(self, cwnd: int, rtt: float, window: int, expires: float) -> None:
        self.cwnd = cwnd  # bytes delivered in the best round trip
        self.rtt = rtt  # the smallest round trip seen (seconds)
        self.window = window  # the receive window the connection grew to (bytes)
        self.expires = expires
        self.busy = False  # a connection uses it now

    def __repr__(self) -> str:
        return f"<PathEntry cwnd={self.cwnd} rtt={self.rtt:.4f} window={self.window}>"


class PathMemory:
    def __init__(self, lifetime: float = PATH_LIFETIME, capacity: int = PATH_CAPACITY) -> None:
        self.lifetime = lifetime  # (tcp-path-memory off: the Stack keeps no PathMemory)
        self.capacity = capacity
        self.entries: OrderedDict[bytes, PathEntry] = OrderedDict()

    def take(self, address: bytes, now: float) -> PathEntry | None:
        """The entry for ``address`` if one is there, fresh and not in use; it is in use from
        now until :meth:`give_back`, :meth:`forget` or :meth:`save`."""
        entry = self.entries.get(address)
        if entry is None or entry.busy:
            return None
        if now >= entry.expires:
            del self.entries[address]
            return None
        entry.busy = True
        return entry

    def give_back(self, address: bytes, entry: PathEntry) -> None:
        """The connection that took ``entry`` learned nothing new: the next one may use it."""
        if self.entries.get(address) is entry:
            entry.busy = False

    def forget(self, address: bytes, entry: PathEntry | None = None) -> None:
        """The path is not what was saved (a loss after the jump, a timeout): drop it."""
        if entry is None or self.entries.get(address) is entry:
            self.entries.pop(address, None)

    def save(self, address: bytes, now: float, cwnd: int, rtt: float, window: int) -> None:
        self.entries.pop(address, None)
        self.entries[address] = PathEntry(cwnd, rtt, window, now + self.lifetime)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
