"""What a daemon run by twistd adds to its service tree: signals, sd_notify, and the garbage
collector's settings (gctune.py).

Only the twistd entry points (node/tap.py, relay/tap.py) call this: a NodeService or
RelayService embedded in another program, or run in-process by the tests, leaves the
process's signal handlers and garbage collector alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, GCCollector
from twisted.application.service import MultiService
from twisted.logger import Logger

from .gctune import CollectorService
from .logfilter import LogFilterService
from .metrics import ReloadCollector
from .reload import Reloader
from .sdnotify import NotifyService
from .signals import SignalService

log = Logger()


def add_daemon_services(
    parent: MultiService,
    reactor: Any,
    *,
    reopen: Callable[[], None],
    not_ready: Callable[[], str | None],
    status: Callable[[], str],
    reloader: Reloader[Any],
    metrics: tuple[str, CollectorRegistry] | None = None,
    debug: bool = False,
) -> NotifyService:
    """The log filter (no chatter; debug lines only with ``debug``), SIGHUP (``reloader``:
    reread the config file, RELOADING=1 / READY=1 around it), SIGUSR1 (``reopen``: the access
    log), and sd_notify (READY=1 once ``not_ready()`` is None). Added last: sd_notify is
    stopped first. ``metrics``: (prefix, registry) to count the reloads in."""

    def hup() -> None:
        log.info("SIGHUP: reloading the configuration")
        reloader.reload()

    def usr1() -> None:
        reopen()
        log.info("SIGUSR1: access log reopened")

    # applied in privilegedStartService: before any service starts (and listens, and logs)
    LogFilterService(debug).setServiceParent(parent)
    SignalService(reactor, hup, usr1).setServiceParent(parent)
    CollectorService().setServiceParent(parent)  # the collector's thresholds
    notify = NotifyService(reactor, not_ready, status)
    notify.setServiceParent(parent)
    reloader.notify = notify.notifier.send
    if metrics is not None:
        prefix, registry = metrics
        registry.register(ReloadCollector(prefix, reloader))
        GCCollector(registry=registry)  # python_gc_collections_total{generation}, ...
    return notify
