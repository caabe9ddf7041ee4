"""The inspector as a service of the node: the ring, the capture, replay and the listener."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from ..config.model import InspectConfig
from ..web.hostport import format_host_port
from .capture import Capturer
from .replay import Replayer
from .server import InspectRoot, InspectSite
from .store import Entry, Store

log = Logger()


class Inspector(Service):
    """Captures the requests of ``dispatcher``'s HTTPS sites (its ``capture`` request class)
    and serves them on ``config.listen``."""

    name = "inspector"

    def __init__(self, config: InspectConfig, reactor: Any, dispatcher: Any) -> None:
        self.config = config
        self.reactor = reactor
        self.store = Store(config.keep)
        self.capturer = Capturer(self.store, reactor, config.body_limit, config.mounts)
        self.replayer = Replayer(dispatcher, self.capturer.request_factory)
        dispatcher.capture = self.capturer.request_factory
        self.root = InspectRoot(self.store, self.replay, config.show_secrets, reactor)
        max_body = max(1 << 20, 2 * config.body_limit + (64 << 10))
        self.site = InspectSite(self.root, reactor, max_body)
        self.port: IListeningPort | None = None

    def replay(self, entry: Entry, edited: bytes | None) -> None:
        self.replayer.replay(entry, edited)

    def counters(self) -> dict[str, int]:
        return {
            "captured": len(self.store),
            "evicted": self.store.evicted,
            "replays": self.replayer.replays,
            **self.root.counters,
        }

    def startService(self) -> None:
        super().startService()
        host, port = self.config.listen
        try:
            self.port = self.reactor.listenTCP(port, self.site, interface=host)
        except CannotListenError as e:  # one line, as for the other listeners
            raise SystemExit(
                f"funnel-tw: inspect-listen {format_host_port(host, port)}: {e.socketError}"
            ) from None
        self.root.port = getattr(self.port.getHost(), "port", port)
        log.info(
            "request inspector on http://{address}/",
            address=format_host_port(host, self.root.port),
        )

    def stopService(self) -> Any:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None
