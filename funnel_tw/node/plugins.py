"""Handler plugins' lifecycle in the node: a handler that provides IService is started before
any serve port listens and stopped, after the ports stopped listening, within a drain
deadline (``DRAIN_TIMEOUT``): a plugin that does not finish by then is logged and left.

On a reload (node/reload.py), :func:`prepare_reload` decides per section, before anything
changes: a section whose handler name and options are unchanged keeps its running instance; a
changed one whose handler has a ``reload(options)`` method keeps its instance and is told the
new options; any other changed or added section gets a new instance (built now: a build error
refuses the whole reload). :meth:`PluginServices.apply_reload` then starts the new instances'
services, calls the reload hooks, and stops the replaced and removed instances' services with
the drain deadline, in the background: their flows in progress go on meanwhile."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.application.service import IService
from twisted.internet import defer
from twisted.logger import Logger

from ..config import NodeConfig, PluginHandler
from ..serve.plugins import ConfiguredPlugin, build_plugins, load_checked, plugin_specs

log = Logger()

DRAIN_TIMEOUT = 10.0


def _services(plugins: Any) -> list[tuple[ConfiguredPlugin, IService]]:
    return [(p, IService(p.handler)) for p in plugins if IService.providedBy(p.handler)]


def _same(old: PluginHandler | None, new: PluginHandler) -> bool:
    """Whether a section's handler and options are unchanged (as written, or as parsed)."""
    if old is None or old.name != new.name:
        return False
    if old.options == new.options:
        return True
    return old.parsed is not None and old.parsed == new.parsed


@attrs.define
class PluginReload:
    """What a reload does to the plugin sections (decided by :func:`prepare_reload`)."""

    plugins: dict[int | str, ConfiguredPlugin]  # the sections after the reload, by key
    built: list[ConfiguredPlugin]  # new instances (added or changed sections)
    hooked: list[tuple[ConfiguredPlugin, Mapping[str, Any], PluginHandler]]  # told new options
    retired: list[ConfiguredPlugin]  # replaced or removed: stopped with the drain deadline

    @property
    def handlers(self) -> dict[int | str, Any]:
        return {key: p.handler for key, p in self.plugins.items()}


def prepare_reload(
    current: Mapping[int | str, ConfiguredPlugin], new: NodeConfig, reactor: Any
) -> PluginReload:
    """Decide (and build) before anything changes; ConfigError refuses the reload."""
    specs = plugin_specs(new)
    if any(spec.parsed is None for spec in specs.values()):
        new = load_checked(new.path)  # options not parsed at load: every error, FILE:LINE
        specs = plugin_specs(new)
    keep: dict[int | str, ConfiguredPlugin] = {}
    hooked: list[tuple[ConfiguredPlugin, Mapping[str, Any], PluginHandler]] = []
    rebuild: set[int | str] = set()
    for key, spec in specs.items():
        running = current.get(key)
        if running is not None and _same(running.spec, spec):
            keep[key] = running
        elif (
            running is not None
            and running.context is not None  # the older interface has no parsed options
            and running.name == spec.name
            and spec.parsed is not None
            and callable(getattr(running.handler, "reload", None))
        ):
            keep[key] = running
            hooked.append((running, dict(spec.parsed), spec))
        else:
            rebuild.add(key)
    built: dict[int | str, ConfiguredPlugin] = {}
    if rebuild:
        carried = {k: p.context.metrics for k, p in current.items() if p.context is not None}
        built = build_plugins(new, reactor, only=rebuild.__contains__, carried=carried)
    retired = [p for k, p in current.items() if k not in keep]
    return PluginReload({**keep, **built}, list(built.values()), hooked, retired)


class PluginServices:
    def __init__(self, plugins: Mapping[int | str, ConfiguredPlugin], reactor: Any) -> None:
        self.reactor = reactor
        self.services = _services(plugins.values())
        self.running = False

    def start(self) -> None:
        for plugin, service in self.services:
            self._start_one(plugin, service)
        self.running = True

    @staticmethod
    def _start_one(plugin: ConfiguredPlugin, service: IService) -> None:
        log.info("starting plugin {plugin} for [serve {key}]", plugin=plugin.name, key=plugin.key)
        service.startService()

    def apply_reload(self, change: PluginReload, swap: Callable[[], None]) -> None:
        """In this order: start the new instances' services, tell hooked instances their new
        options, ``swap()`` (the dispatcher hands new flows to the new handlers from then on),
        stop the replaced and removed instances' services (drain deadline, not waited for)."""
        new = _services(change.built)
        old = _services(change.retired)
        if self.running:
            for plugin, service in new:
                self._start_one(plugin, service)
        for plugin, options, spec in change.hooked:
            try:
                plugin.handler.reload(options)  # type: ignore[attr-defined]
            except Exception:
                log.failure(
                    "plugin {plugin} for [serve {key}]: reload(options) failed; it keeps its "
                    "old options until a restart",
                    plugin=plugin.name,
                    key=plugin.key,
                )
                continue
            plugin.spec, plugin.options = spec, options
            log.info(
                "plugin {plugin} for [serve {key}] reloaded its options in place",
                plugin=plugin.name,
                key=plugin.key,
            )
        swap()
        for plugin in change.retired:
            log.info(
                "plugin {plugin} for [serve {key}] replaced or removed: new flows no longer "
                "reach it",
                plugin=plugin.name,
                key=plugin.key,
            )
        gone = {id(s) for _, s in old}
        self.services = [(p, s) for p, s in self.services if id(s) not in gone] + new
        if self.running:
            for plugin, service in old:
                self._stop_one(plugin, service, DRAIN_TIMEOUT)

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
