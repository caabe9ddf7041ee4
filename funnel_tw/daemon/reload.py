"""Live reload: SIGHUP (``systemctl reload``) rereads the config file and applies what changed.

The steps, the same for both daemons:

1. load the file again; a file with errors is refused whole, its errors logged with
   FILE:LINE, and the running configuration stays;
2. compute the plan (config/plan.py: a pure function of the old and the new configuration);
   a key that needs a restart refuses the whole reload, with its reason;
3. apply the plan to the running services (node/reload.py, relay/reload.py). An applier
   checks what can fail first (a port to listen on, a certificate file) and raises
   :class:`ReloadRefused` before it changes anything;
4. log one line per change.

systemd hears ``RELOADING=1`` (with ``MONOTONIC_USEC``, as ``Type=notify-reload`` wants) before
and ``READY=1`` after, whatever the outcome: a refused reload leaves the daemon running as it was.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

from twisted.logger import Logger

from ..config import ConfigError
from ..config.plan import Plan

log = Logger()

C = TypeVar("C")


class ReloadRefused(Exception):
    """The new configuration cannot be applied; nothing was changed."""


class Reloader(Generic[C]):
    """Runs one reload at a time for a daemon; counts the outcomes."""

    def __init__(
        self,
        *,
        current: Callable[[], C],
        load: Callable[[C], C],
        plan: Callable[[C, C], Plan],
        apply: Callable[[C, Plan], None],
        notify: Callable[..., object] = lambda *lines: None,
    ) -> None:
        """``load(old)`` reads the file ``old`` came from (raises ConfigError);
        ``apply(new, plan)`` raises ReloadRefused before changing anything, or applies all."""
        self.current = current
        self.load = load
        self.plan = plan
        self.apply = apply
        self.notify = notify
        self.counters = {"applied": 0, "unchanged": 0, "refused": 0, "failed": 0}
        # Unix time of the last reload that left the daemon on the file's content (applied or
        # unchanged), and whether the last attempt did: the two gauges Prometheus itself exports
        self.last_success: float | None = None
        self.last_ok = True

    def reload(self) -> str:
        """Reload now; returns the outcome ("applied", "unchanged", "refused" or "failed")."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the configuration")
        try:
            outcome = self._reload()
        finally:
            self.notify("READY=1")
        self.counters[outcome] += 1
        self.last_ok = outcome in ("applied", "unchanged")
        if self.last_ok:
            self.last_success = time.time()
        return outcome

    def _reload(self) -> str:
        old = self.current()
        try:
            new = self.load(old)
        except ConfigError as e:
            log.error(
                "reload refused, the running configuration stays: {errors}",
                errors=str(e).replace("\n", "; "),
            )
            return "refused"
        plan = self.plan(old, new)
        if plan.refused:
            log.error(
                "reload refused, nothing changed: {why}",
                why="; ".join(plan.refused),
            )
            return "refused"
        if not plan.changes:
            log.info("reload: no changes in {path}", path=str(getattr(new, "path", "")))
            return "unchanged"
        try:
            self.apply(new, plan)
        except ReloadRefused as e:
            log.error("reload refused, nothing changed: {why}", why=str(e))
            return "refused"
        except Exception:
            log.failure("reload failed while applying; the daemon may need a restart")
            return "failed"
        for change in plan.changes:
            log.info("reload: {change}", change=str(change))
        log.info("reload: {n} changes applied", n=len(plan.changes))
        return "applied"
