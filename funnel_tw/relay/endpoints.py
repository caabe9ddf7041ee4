"""The endpoints the relay has learned for its nodes, kept across restarts.

A node behind NAT is reached only at the address its packets come from. A relay that restarts
forgets it, and the node keeps sending on its old session (which the new relay cannot
decrypt) until it rekeys, up to two minutes later. So the relay writes what it learned to
``state-dir/endpoints.json`` and, when it starts, greets each node at its last address: the
node's NAT mapping is still open (its persistent keepalive keeps it so) and the handshake
completes at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet import task
from twisted.logger import Logger

from ..overlay.interface import OverlayInterface
from ..overlay.stream import is_stream_address
from ..tls.pem import write_private

log = Logger()

SAVE_EVERY = 10.0


class EndpointMemory:
    def __init__(
        self, overlay: OverlayInterface, path: Path, configured: set[str], reactor: Any
    ) -> None:
        """``configured``: nodes with an endpoint in relay.ini (those are never overridden)."""
        self.overlay = overlay
        self.path = path
        self.configured = configured
        self.reactor = reactor
        self.saved: dict[str, list[Any]] = {}
        self._loop: task.LoopingCall | None = None

    def restore(self) -> int:
        """Set remembered endpoints and greet those nodes; returns how many."""
        try:
            remembered = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return 0
        if not isinstance(remembered, dict) or self.overlay.tunnel is None:
            return 0
        greeted = 0
        now = self.reactor.seconds()
        for peer in self.overlay.device.peers:
            entry = remembered.get(peer.name)
            if peer.name in self.configured or peer.endpoint is not None:
                continue
            if not (isinstance(entry, list) and len(entry) == 2):
                continue
            host, port = entry
            if not isinstance(host, str) or not isinstance(port, int) or port == 0:
                continue
            peer.endpoint = (host, port)
            self.overlay.device.greet(peer, now)
            greeted += 1
        if greeted:
            self.overlay.tunnel.after_work()
            log.info("greeted {n} nodes at their last known endpoints", n=greeted)
        self.saved = {k: v for k, v in remembered.items() if isinstance(v, list)}
        return greeted

    def save(self) -> None:
        current = {
            peer.name: [peer.endpoint[0], peer.endpoint[1]]
            for peer in self.overlay.device.peers
            if peer.endpoint is not None
            and peer.name not in self.configured
            and not is_stream_address(peer.endpoint)  # a TCP fallback link: gone at restart
        }
        if current == self.saved:
            return
        try:
            write_private(self.path, json.dumps(current, indent=1).encode())
        except OSError as e:
            log.warn(
                "cannot save learned endpoints to {path}: {error}", path=str(self.path), error=e
            )
            return
        self.saved = current

    def start(self) -> None:
        self.restore()
        self._loop = task.LoopingCall(self.save)
        self._loop.clock = self.reactor
        self._loop.start(SAVE_EVERY, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.save()
