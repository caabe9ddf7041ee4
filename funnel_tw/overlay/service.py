"""OverlayService: runs an overlay interface for the lifetime of a daemon (node or relay)."""

from __future__ import annotations

from twisted.application.service import Service

from .interface import OverlayInterface
from .tun_device import TunError


class OverlayService(Service):
    """Runs an overlay (userspace or TUN) for the lifetime of the daemon."""

    def __init__(self, overlay: OverlayInterface) -> None:
        self.overlay = overlay

    def startService(self) -> None:
        super().startService()
        try:
            self.overlay.start()
        except (OSError, TunError) as e:  # a clear line, not a traceback
            raise SystemExit(f"funnel-tw: cannot start the overlay: {e}") from None

    def stopService(self) -> None:
        self.overlay.stop()
        return super().stopService()  # type: ignore[no-any-return]
