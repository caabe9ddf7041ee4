"""Which nodes are in service: the relay's health view of each node (sans-IO: no reactor, time
is passed in).

A node is *out* when

- it has no WireGuard session: the relay has never heard from it (no endpoint known), or
- its session is stale: no authenticated packet from it for ``stale_after`` seconds although
  the relay probes it (a probe is traffic both ways, so a live node is never silent that long), or
- an ingress attempt or a probe failed: connect timeout, refused (a node that stops gracefully
  closes its peerAPI port), lost, or a 5xx answer.

An out node is probed again after a backoff (``BACKOFF_FIRST`` doubling up to ``BACKOFF_MAX``),
at once when it handshakes anew (a restarted node), and is back in after one successful probe
or ingress. A node in service is probed every ``interval`` (``POOL_INTERVAL`` when it shares a
name with another node, where a quick verdict saves visitors a failed first attempt, else
``LONE_INTERVAL``). The Twisted side (``relay/probe.py``) runs the probes and feeds this.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

POOL_INTERVAL = 1.0  # probe a pool member in service this often
LONE_INTERVAL = 5.0  # a node alone on its names
PROBE_TIMEOUT = 1.0  # a probe's TCP connect to the peerAPI
STALE_AFTER_INTERVALS = 3  # no authenticated packet for this many probe intervals: stale
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 5.0
SESSION_LIFETIME = 180.0  # WireGuard's Reject-After-Time


@attrs.define
class NodeHealth:
    name: str
    since: float  # when it last went in or out
    up: bool = True
    reason: str = ""  # why it is out
    failures: int = 0  # consecutive failures
    next_probe: float = 0.0
    probing: bool = False
    interval: float = LONE_INTERVAL
    outages: int = 0  # times it went out
    rx_packets: int = -1  # the WireGuard peer's counter when last seen
    last_rx: float = 0.0  # when that counter last moved
    last_handshake: float | None = None
    silent: bool = False  # out for a WireGuard reason (no session, stale, expired)
    endpoint_known: bool = False


class Health:
    """Every node's state; the relay asks :meth:`usable` for each new connection."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeHealth] = {}

    def sync(self, pools: Iterable[tuple[str, ...]], now: float) -> None:
        """Follow the node set (config, reload, enrollment): ``pools`` lists the node names of
        each pool. New nodes start in service (a probe follows at once); gone ones are dropped."""
        intervals: dict[str, float] = {}
        for members in pools:
            every = POOL_INTERVAL if len(members) > 1 else LONE_INTERVAL
            for name in members:
                intervals[name] = min(every, intervals.get(name, every))
        for name in list(self.nodes):
            if name not in intervals:
                del self.nodes[name]
        for name, every in intervals.items():
            state = self.nodes.get(name)
            if state is None:
                state = self.nodes[name] = NodeHealth(name, since=now, next_probe=now, last_rx=now)
            state.interval = every

    def usable(self, name: str) -> bool:
        state = self.nodes.get(name)
        return state is None or state.up

    def reason(self, name: str) -> str:
        state = self.nodes.get(name)
        return state.reason if state is not None and not state.up else ""

    # --- what the overlay says --------------------------------------------------------------

    def wireguard(
        self,
        name: str,
        now: float,
        *,
        endpoint_known: bool,
        last_handshake: float | None,
        rx_packets: int,
    ) -> bool:
        """Take the WireGuard peer's state in; True if the node went out now."""
        state = self.nodes.get(name)
        if state is None:
            return False
        state.endpoint_known = endpoint_known
        if rx_packets != state.rx_packets:
            state.rx_packets = rx_packets
            state.last_rx = now
        if last_handshake != state.last_handshake:
            state.last_handshake = last_handshake
            if not state.up and endpoint_known and last_handshake is not None:
                # a new session: the node is there. Out only for want of one: back now;
                # out after a failed attempt (a restart?): ask it now.
                state.failures = 0
                state.next_probe = now
                if state.silent:
                    self.succeeded(state.name, now)
        if not state.up:
            return False
        if not endpoint_known:  # not an outage: it has never been in service
            state.up, state.silent, state.since = False, True, now
            state.reason = "no WireGuard session (never heard from)"
            return False
        if last_handshake is not None and now - last_handshake > SESSION_LIFETIME + 30:
            return self._out(state, "WireGuard session expired", now, silent=True)
        stale = STALE_AFTER_INTERVALS * max(state.interval, 1.0)
        if now - state.last_rx > stale:
            why = f"no WireGuard packet for {now - state.last_rx:.0f} s"
            return self._out(state, why, now, silent=True)
        return False

    # --- probes and ingress attempts --------------------------------------------------------

    def due(self, now: float) -> list[str]:
        """The nodes to probe now; they count as being probed until :meth:`failed` or
        :meth:`succeeded` reports."""
        out = []
        for state in self.nodes.values():
            if not state.probing and state.next_probe <= now and state.endpoint_known:
                state.probing = True
                out.append(state.name)
        return out

    def failed(self, name: str, why: str, now: float, probe: bool = False) -> bool:
        """An ingress attempt (or a probe) failed; True if the node went out now."""
        state = self.nodes.get(name)
        if state is None:
            return False
        if probe:
            state.probing = False
        return self._out(state, why, now)

    def succeeded(self, name: str, now: float, probe: bool = False) -> bool:
        """A probe or an ingress worked; True if the node came back now."""
        state = self.nodes.get(name)
        if state is None:
            return False
        if probe:
            state.probing = False
            state.next_probe = now + state.interval
        state.failures = 0
        state.last_rx = max(state.last_rx, now)
        if state.up:
            return False
        state.up, state.reason, state.since, state.silent = True, "", now, False
        return True

    def _out(self, state: NodeHealth, why: str, now: float, silent: bool = False) -> bool:
        state.failures += 1
        backoff = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (state.failures - 1))
        state.next_probe = now + backoff
        state.reason = why
        state.silent = silent
        if not state.up:
            return False
        state.up, state.since = False, now
        state.outages += 1
        return True

    def document(self, now: float) -> dict[str, dict[str, object]]:
        """Per node: in service or not, why, since how long (status)."""
        return {
            name: {
                "up": s.up,
                "reason": s.reason or None,
                "for": max(0.0, now - s.since),
                "outages": s.outages,
            }
            for name, s in self.nodes.items()
        }
