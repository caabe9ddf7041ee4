"""What a handler plugin is given and what it gives back: IHandlerPlugin, HandlerContext,
PluginMetrics, Refused.

A plugin object (found with ``twisted.plugin``) declares its options (``schema``), may
cross-check them (``validate``) and builds one IIngressHandler per configured section with a
:class:`HandlerContext`: the node's reactor, a logger, the section, a private state
directory and a metrics hook. Nothing here reaches for the global reactor.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import Attribute

from ..flow import IIngressHandler

__all__ = ["HandlerContext", "IHandlerPlugin", "PluginMetrics", "Refused"]

MAX_METRICS = 32  # counters and gauges one plugin may name: a scrape stays small
MAX_REASONS = 16  # distinct refusal reasons kept per plugin; more are counted as "other"
MAX_REASON_LENGTH = 64
_METRIC_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}\Z")
_REASON_CHARS = re.compile(r"[^a-z0-9_.-]+")


class IHandlerPlugin(IPlugin):
    """A named handler kind (``[serve PORT] handler = NAME``), found by twisted.plugin.

    ``validate`` is optional: provide it for checks across options. The built handler may
    also provide ``twisted.application.service.IService``: the node then starts it before its
    port is served and stops it (with a drain deadline) when the node stops, or when a reload
    replaces it. A handler with a ``reload(options)`` method is told a reload's new options
    instead of being replaced (docs/plugins.md, "Lifecycle").
    """

    name = Attribute("The name used in [serve PORT] handler = NAME.")
    schema = Attribute("A sequence of funnel_tw.plugin.options Options: every key it takes.")

    def build(options: Mapping[str, Any], context: HandlerContext) -> IIngressHandler:
        """The handler for one section, from its parsed ``options`` (defaults filled in)."""


class Refused(Exception):
    """Raise from ``build_protocol`` to refuse a flow with a reason: the log line, the
    counters (by plugin and reason) and ``funnel-tw status`` show it as the plugin's own.

    Keep reasons few and fixed ("not-allowed", "too-many-clients"), never per client: they are
    metric labels (at most MAX_REASONS distinct ones per plugin are kept apart)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def reason_label(reason: str) -> str:
    """A refusal reason as a label: lower case, [a-z0-9_.-], bounded length."""
    label = _REASON_CHARS.sub("-", reason.strip().lower()).strip("-")
    return label[:MAX_REASON_LENGTH] or "refused"


class PluginMetrics:
    """A plugin's counters and gauges, shown by ``funnel-tw status`` and, when the node has
    ``metrics-listen``, as ``funnel_node_plugin_*{plugin="NAME"}`` on /metrics.

    Names are fixed at build time (``[a-z][a-z0-9_]*``, at most MAX_METRICS per plugin)."""

    def __init__(self, plugin: str, carried: PluginMetrics | None = None) -> None:
        self.plugin = plugin
        self.counters: dict[str, int] = {}
        self.gauges: dict[str, float] = {}
        self.help: dict[str, str] = {}
        self.refused: dict[str, int] = {}
        # a reload's new instance of the same plugin: counters and refusals go on from the
        # old instance's values (monotonic, as Prometheus expects); gauges are its own
        self._carried: dict[str, int] = {}
        if carried is not None and carried.plugin == plugin:
            self._carried = dict(carried.counters)
            self.refused = dict(carried.refused)

    def _declare(self, name: str, help: str) -> None:
        if not _METRIC_NAME.match(name):
            raise ValueError(f"{name!r} is not a metric name ([a-z][a-z0-9_]*)")
        if name in self.counters or name in self.gauges:
            raise ValueError(f"metric {name!r} is declared twice")
        if len(self.counters) + len(self.gauges) >= MAX_METRICS:
            raise ValueError(f"a plugin may declare at most {MAX_METRICS} metrics")
        self.help[name] = help

    def counter(self, name: str, help: str = "") -> Counter:
        self._declare(name, help)
        self.counters[name] = self._carried.get(name, 0)
        return Counter(self, name)

    def gauge(self, name: str, help: str = "") -> Gauge:
        self._declare(name, help)
        self.gauges[name] = 0.0
        return Gauge(self, name)

    def refuse(self, reason: str) -> str:
        """Count one refusal; the label it was counted under."""
        label = reason_label(reason)
        if label not in self.refused and len(self.refused) >= MAX_REASONS:
            label = "other"
        self.refused[label] = self.refused.get(label, 0) + 1
        return label

    def to_json(self) -> dict[str, Any]:
        return {
            "counters": dict(self.counters),
            "gauges": dict(self.gauges),
            "refused": dict(self.refused),
        }


@attrs.define
class Counter:
    metrics: PluginMetrics
    name: str

    def inc(self, n: int = 1) -> None:
        self.metrics.counters[self.name] += n

    @property
    def value(self) -> int:
        return self.metrics.counters[self.name]


@attrs.define
class Gauge:
    metrics: PluginMetrics
    name: str

    def set(self, value: float) -> None:
        self.metrics.gauges[self.name] = value

    def inc(self, n: float = 1) -> None:
        self.metrics.gauges[self.name] += n

    def dec(self, n: float = 1) -> None:
        self.metrics.gauges[self.name] -= n

    @property
    def value(self) -> float:
        return self.metrics.gauges[self.name]


@attrs.define
class HandlerContext:
    """What the node gives a plugin for one ``[serve PORT]`` section."""

    reactor: Any  # the node's reactor: use it, never ``from twisted.internet import reactor``
    log: Logger  # namespace "funnel_tw.plugin.NAME.SECTION"
    plugin: str  # the handler name
    section: str  # "serve 10000" or "serve blog.example.com:443"
    port: int
    state_root: Path  # state-dir/plugins/NAME-KEY: see state_dir()
    metrics: PluginMetrics

    def state_dir(self) -> Path:
        """The plugin's private directory for this section (mode 0700), made on first use."""
        path = self.state_root
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.mkdir(exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)
        return path


def make_context(
    reactor: Any, plugin: str, key: int | str, state_dir: Path, metrics: PluginMetrics
) -> HandlerContext:
    """The context of ``[serve KEY] handler = PLUGIN`` on a node with ``state_dir``."""
    port = key if isinstance(key, int) else int(str(key).rpartition(":")[2])
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", f"{plugin}-{key}")
    return HandlerContext(
        reactor=reactor,
        log=Logger(namespace=f"funnel_tw.plugin.{plugin}.{key}"),
        plugin=plugin,
        section=f"serve {key}",
        port=port,
        state_root=state_dir / "plugins" / safe,
        metrics=metrics,
    )
