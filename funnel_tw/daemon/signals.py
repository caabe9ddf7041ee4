"""SIGHUP and SIGUSR1 for a twistd daemon.

Twisted's reactor handles SIGINT and SIGTERM only, and twistd adds SIGUSR1 (rotate its own log
file) only when it logs to a file. Any other signal keeps the kernel's default action, which
for SIGHUP (and for SIGUSR1 without a log file) is to terminate the process at once, with no
log line and no clean shutdown: ``kill -HUP`` or ``systemctl reload`` killed the relay, and
``Restart=on-failure`` does not restart a process killed by SIGHUP. So both daemons install:

- SIGHUP: ``on_hup`` (until live reload exists: one warning, the daemon keeps running);
- SIGUSR1: twistd's own handler if it had one (its log file), then ``on_usr1`` (reopen the
  access log for logrotate).

Handlers only schedule work with ``reactor.callFromThread``: nothing runs inside the signal
handler itself. The previous handlers are restored on stop.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

from twisted.application.service import Service

Handler = Callable[[int, FrameType | None], Any] | int | None


class SignalService(Service):
    """Installs the SIGHUP / SIGUSR1 handlers while the daemon runs (main thread only)."""

    def __init__(
        self, reactor: Any, on_hup: Callable[[], None], on_usr1: Callable[[], None]
    ) -> None:
        self.reactor = reactor
        self.on_hup = on_hup
        self.on_usr1 = on_usr1
        self.previous: dict[int, Handler] = {}

    def _handler(self, signum: int, action: Callable[[], None]) -> Callable[..., None]:
        previous = self.previous.get(signum)

        def handle(number: int, frame: FrameType | None) -> None:
            if callable(previous):
                previous(number, frame)  # twistd's rotateLog: itself only callFromThread
            self.reactor.callFromThread(action)

        return handle

    def startService(self) -> None:
        super().startService()
        for signum, action in ((signal.SIGHUP, self.on_hup), (signal.SIGUSR1, self.on_usr1)):
            self.previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handler(signum, action))

    def stopService(self) -> None:
        for signum, previous in self.previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self.previous = {}
        return super().stopService()  # type: ignore[no-any-return]
