"""The node's TCP fallback watches, one per relay peer with a ``tcp-fallback`` target.

overlay/fallback.py says when a peer moves to a TLS link and back; this runs the watches for
the lifetime of the node and follows reloads (peers added, removed, targets changed).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.application.service import Service

from ..config import PeerConfig
from ..overlay.fallback import TCPFallback
from ..overlay.interface import OverlayInterface


def fallback_targets(peers: Iterable[PeerConfig]) -> dict[str, tuple[str, int]]:
    return {p.name: p.tcp_fallback for p in peers if p.tcp_fallback is not None}


class FallbackService(Service):
    """A :class:`TCPFallback` for each peer whose configuration names a fallback target."""

    def __init__(self, reactor: Any, overlay: OverlayInterface) -> None:
        self.reactor = reactor
        self.overlay = overlay
        self.watches: dict[str, TCPFallback] = {}
        self.targets: dict[str, tuple[str, int]] = {}

    def configure(self, targets: dict[str, tuple[str, int]]) -> None:
        """Peer name -> (host, port) of its relay's public port; at start and on reload."""
        self.targets = dict(targets)
        if self.running:
            self._sync()

    def startService(self) -> None:
        super().startService()
        self._sync()

    def stopService(self) -> None:
        for watch in self.watches.values():
            watch.stop()
        self.watches = {}
        return super().stopService()  # type: ignore[no-any-return]

    def _sync(self) -> None:
        peers = {peer.name: peer for peer in self.overlay.device.peers}
        for name in list(self.watches):
            watch = self.watches[name]
            if self.targets.get(name) != watch.target or peers.get(name) is not watch.peer:
                watch.stop()
                del self.watches[name]
        for name, target in self.targets.items():
            if name not in self.watches and name in peers and peers[name].endpoint is not None:
                watch = TCPFallback(
                    self.reactor,
                    lambda: self.overlay.tunnel,
                    self.overlay.device,
                    peers[name],
                    target,
                )
                watch.start()
                self.watches[name] = watch

    def status(self) -> dict[str, dict[str, Any]]:
        return {
            name: {"mode": w.mode, "target": f"{w.target[0]}:{w.target[1]}", **w.counters}
            for name, w in sorted(self.watches.items())
        }

    def counters(self) -> dict[str, int]:
        """The watches' counters added up (links opened, dial failures, back to UDP, probes)."""
        total: dict[str, int] = {}
        for watch in self.watches.values():
            for key, n in watch.counters.items():
                total[key] = total.get(key, 0) + n
        return total
