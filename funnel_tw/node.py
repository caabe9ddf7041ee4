"""NodeService: the node daemon, composed of the overlay and (in later layers) peerAPI,
serve and TLS."""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService, Service
from twisted.logger import Logger

from .config import NodeConfig
from .overlay.interface import OverlayInterface

log = Logger()


class OverlayService(Service):
    """Runs an OverlayInterface for the lifetime of the daemon."""

    def __init__(self, overlay: OverlayInterface) -> None:
        self.overlay = overlay

    def startService(self) -> None:
        super().startService()
        self.overlay.start()

    def stopService(self) -> None:
        self.overlay.stop()
        return super().stopService()  # type: ignore[no-any-return]


class NodeService(MultiService):
    def __init__(self, config: NodeConfig, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.overlay = OverlayInterface(
            reactor,
            private_key=config.private_key,
            addresses=config.addresses,
            peers=config.peers,
            listen_port=config.listen_port,
            mtu=config.mtu,
        )
        OverlayService(self.overlay).setServiceParent(self)

    def startService(self) -> None:
        log.info(
            "funnel-tw node starting: {addresses}, hostnames {hostnames}",
            addresses=", ".join(str(a) for a in self.config.addresses),
            hostnames=", ".join(self.config.hostnames) or "(none)",
        )
        super().startService()
