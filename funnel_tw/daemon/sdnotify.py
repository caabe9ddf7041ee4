"""sd_notify without libsystemd: tell systemd (``Type=notify``) how the daemon is doing.

The protocol (sd_notify(3)): datagrams of ``KEY=VALUE`` lines to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a leading ``@`` means Linux's abstract namespace). The daemons send:

- ``STATUS=...`` while starting, and a one-line summary whenever it changes;
- ``READY=1`` once the listeners, WireGuard and the certificates are up (systemd then
  considers the unit started: ``After=`` units start, ``systemctl start`` returns);
- ``WATCHDOG=1`` every ``WATCHDOG_USEC``/2 when systemd set it (``WatchdogSec=``), from the
  reactor: a wedged event loop stops the pings and systemd restarts the unit;
- ``STOPPING=1`` when shutdown begins.

Without ``NOTIFY_SOCKET`` nothing is sent and nothing changes. A send that fails (systemd gone)
is ignored: notifications are advice, never a reason to stop serving.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

READY_POLL = 0.2  # seconds between readiness checks while starting
STATUS_POLL = 5.0  # seconds between STATUS= refreshes once ready (sent only when changed)


def socket_address(value: str) -> str | bytes:
    """The address of ``$NOTIFY_SOCKET``: a path, or ``@name`` in the abstract namespace."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


class Notifier:
    """Sends sd_notify datagrams to ``$NOTIFY_SOCKET``; does nothing without it."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        value = env.get("NOTIFY_SOCKET", "")
        self.address = socket_address(value) if value else None
        self.watchdog = _watchdog_interval(env)
        self.sent: list[str] = []  # what was sent, for tests and status

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        if self.address is None:
            return False
        message = "\n".join(lines)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)
            sock.sendto(message.encode(), self.address)
        except OSError:
            return False
        finally:
            sock.close()
        self.sent.append(message)
        return True


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of ``WATCHDOG_USEC`` in seconds, if set for this process (``WATCHDOG_PID``)."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None


class NotifyService(Service):
    """READY=1 once ``not_ready()`` returns None; STATUS= from ``status()``; the watchdog.

    Add it last to the daemon's MultiService: it is then stopped first, so STOPPING=1 goes
    out as shutdown begins, before the other services drain."""

    def __init__(
        self,
        reactor: Any,
        not_ready: Callable[[], str | None],
        status: Callable[[], str],
        notifier: Notifier | None = None,
    ) -> None:
        self.reactor = reactor
        self.not_ready = not_ready
        self.status = status
        self.notifier = notifier if notifier is not None else Notifier()
        self.ready = False
        self._last_status = ""
        self._loops: list[LoopingCall] = []

    def _loop(self, interval: float, call: Callable[[], None], now: bool = True) -> None:
        loop = LoopingCall(call)
        loop.clock = self.reactor
        self._loops.append(loop)
        loop.start(interval, now=now)

    def startService(self) -> None:
        super().startService()
        if not self.notifier.enabled:
            return
        self.notifier.send("STATUS=starting")
        if self.notifier.watchdog is not None:
            self._loop(self.notifier.watchdog, lambda: self._send("WATCHDOG=1"))
        self._loop(READY_POLL, self._check)

    def _send(self, *lines: str) -> None:
        self.notifier.send(*lines)

    def _check(self) -> None:
        if self.ready:
            text = self.status()
            if text != self._last_status:
                self._last_status = text
                self._send(f"STATUS={text}")
            return
        why = self.not_ready()
        if why is not None:
            text = f"starting: waiting for {why}"
            if text != self._last_status:
                self._last_status = text
                self._send(f"STATUS={text}")
            return
        self.ready = True
        self._last_status = self.status()
        self._send("READY=1", f"STATUS={self._last_status}")
        # the readiness poll becomes a slower status refresh
        loop = self._loops.pop()
        loop.stop()
        self._loop(STATUS_POLL, self._check, now=False)

    def stopService(self) -> None:
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        if self.notifier.enabled:
            self._send("STOPPING=1", "STATUS=stopping")
        return super().stopService()  # type: ignore[no-any-return]
