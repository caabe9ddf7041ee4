"""RelayService: the relay daemon's overlay (public listeners come in the relay layer)."""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.logger import Logger

from ..config import RelayConfig
from ..node import OverlayService
from ..overlay.interface import OverlayInterface

log = Logger()


class RelayService(MultiService):
    def __init__(self, config: RelayConfig, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.overlay = OverlayInterface(
            reactor,
            private_key=config.private_key,
            addresses=config.addresses,
            peers=config.nodes,
            listen_port=config.listen_port,
            mtu=config.mtu,
        )
        OverlayService(self.overlay).setServiceParent(self)

    def startService(self) -> None:
        log.info(
            "funnel-tw relay starting: {addresses}, {nodes} nodes",
            addresses=", ".join(str(a) for a in self.config.addresses),
            nodes=len(self.config.nodes),
        )
        super().startService()
