"""Handler plugins' lifecycle in the node: a handler that provides IService is started before
any serve port listens and stopped, after the ports stopped listening, within a drain
deadline (``DRAIN_TIMEOUT``): a plugin that does not finish by then is logged and left."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.application.service import IService
from twisted.internet import defer
from twisted.logger import Logger

from ..serve.plugins import ConfiguredPlugin

log = Logger()

DRAIN_TIMEOUT = 10.0


class PluginServices:
    def __init__(self, plugins: Mapping[int | str, ConfiguredPlugin], reactor: Any) -> None:
        self.reactor = reactor
        self.services = [
            (p, IService(p.handler)) for p in plugins.values() if IService.providedBy(p.handler)
        ]
        self.running = False

    def start(self) -> None:
        for plugin, service in self.services:
            log.info(
                "starting plugin {plugin} for [serve {key}]", plugin=plugin.name, key=plugin.key
            )
            service.startService()
        self.running = True

    def stop(self, timeout: float = DRAIN_TIMEOUT) -> defer.Deferred[None]:
        """Stop every plugin service; fires when all did, or at ``timeout`` at the latest."""
        if not self.running:
            return defer.succeed(None)
        self.running = False
        waits = [self._stop_one(p, s, timeout) for p, s in self.services]
        d: defer.Deferred[None] = defer.gatherResults(waits, consumeErrors=True).addCallback(
            lambda _: None
        )
        return d

    def _stop_one(self, plugin: ConfiguredPlugin, service: IService, timeout: float) -> Any:
        try:
            d = defer.maybeDeferred(service.stopService)
        except Exception:  # maybeDeferred catches; this is belt and braces
            d = defer.fail()
        d.addTimeout(timeout, self.reactor)

        def failed(failure: Any) -> None:
            if failure.check(defer.TimeoutError) is not None:
                log.warn(
                    "plugin {plugin} for [serve {key}] did not stop within {timeout}s",
                    plugin=plugin.name,
                    key=plugin.key,
                    timeout=timeout,
                )
            else:
                log.failure("plugin {plugin} failed to stop", failure, plugin=plugin.name)

        d.addErrback(failed)
        return d
