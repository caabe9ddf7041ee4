"""Finding and building handler plugins: ``twisted.plugin`` over ``twisted.plugins``.

Two kinds are found: :class:`funnel_tw.plugin.IHandlerPlugin` (a declared option schema,
checked at config load with each error at its line; ``build(options, context)``) and the
older ``IIngressHandlerFactory`` (``create(options)`` on raw strings, still accepted,
deprecated: its one ValueError is reported at the ``handler`` key).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener, IProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.plugin import getPlugins
from twisted.python.failure import Failure
from zope.interface import implementer

from ..config import ConfigError, NodeConfig, PluginHandler, load_node_config
from ..config.ini import Section
from ..config.node import PluginCheck
from ..config.schema import check_options
from ..flow import Flow
from ..plugin.api import (
    HandlerContext,
    IHandlerPlugin,
    PluginMetrics,
    Refused,
    make_context,
    reason_label,
)
from ..web.hostport import format_host_port
from .interfaces import IIngressHandler, IIngressHandlerFactory

log = Logger()


class UnknownHandler(LookupError):
    pass


def handler_factories() -> dict[str, Any]:
    """Every installed handler kind by name: IHandlerPlugin or IIngressHandlerFactory objects
    (the first one found wins a name)."""
    import twisted.plugins

    found: dict[str, Any] = {}
    for plugin in getPlugins(IHandlerPlugin, twisted.plugins):
        found.setdefault(plugin.name, plugin)
    for factory in getPlugins(IIngressHandlerFactory, twisted.plugins):
        found.setdefault(factory.name, factory)
    return found


def _unknown(name: str, found: Mapping[str, Any]) -> str:
    known = ", ".join(sorted(found)) or "none installed"
    return f"no handler plugin named {name!r} (installed: {known})"


def plugin_checker() -> PluginCheck:
    """The check ``load_node_config(path, plugins=...)`` runs on each ``handler = NAME``
    section: every option error at its line, with the file's other errors."""
    found: dict[str, Any] = {}
    looked = False

    def check(section: Section, name: str, options: Mapping[str, str]) -> Mapping[str, Any] | None:
        nonlocal looked
        if not looked:  # the drop-ins are imported only for a file that names a handler
            found.update(handler_factories())
            looked = True
        plugin = found.get(name)
        if plugin is None:
            section.error("handler", _unknown(name, found))
            return None
        if not IHandlerPlugin.providedBy(plugin):  # the older interface: raw strings
            try:
                create_legacy(plugin, name, options)
            except ValueError as e:
                section.error("handler", str(e))
            return None
        parsed = check_options(section, name, plugin.schema, options)
        if parsed is None:
            return None
        validate = getattr(plugin, "validate", None)
        if validate is not None:
            try:
                validate(parsed)
            except ValueError as e:
                section.error(None, f"handler {name}: {e}")
                return None
        return parsed

    return check


def load_checked(path: str | Path) -> NodeConfig:
    """``load_node_config`` with every handler plugin's options checked too."""
    return load_node_config(path, plugins=plugin_checker())


@attrs.define
class ConfiguredPlugin:
    """One ``[serve KEY] handler = NAME`` section, built."""

    key: int | str
    name: str
    handler: IIngressHandler
    context: HandlerContext | None  # None for the older interface
    spec: PluginHandler | None = None  # the section it was built from (a reload compares)
    options: Mapping[str, Any] = attrs.Factory(dict)  # as build() (or create()) got them


def build_plugins(
    config: NodeConfig,
    reactor: Any,
    only: Callable[[int | str], bool] | None = None,
    carried: Mapping[int | str, PluginMetrics] | None = None,
) -> dict[int | str, ConfiguredPlugin]:
    """Build the plugin handlers of ``config`` with their context (options parsed at load;
    a config loaded without the check is checked now, from its file): every section, or
    those whose key ``only`` accepts. ``carried`` metrics (a reload's, by key) keep their
    counters in the new instance's metrics."""
    found = handler_factories()
    specs = [p.handler for p in config.serve if isinstance(p.handler, PluginHandler)]
    if any(s.parsed is None for s in specs if _new(found, s.name)):
        config = load_checked(config.path)  # raises ConfigError with every FILE:LINE
    sections = [p for p in config.serve if isinstance(p.handler, PluginHandler)]
    built: dict[int | str, ConfiguredPlugin] = {}
    for port in sections:
        if only is not None and not only(port.key):
            continue
        spec = port.handler
        assert isinstance(spec, PluginHandler)
        plugin = found.get(spec.name)
        where = f"{config.path}:{spec.line}: [serve {port.key}] handler"
        try:
            if plugin is None:
                raise UnknownHandler(_unknown(spec.name, found))
            if IHandlerPlugin.providedBy(plugin):
                assert spec.parsed is not None
                old = (carried or {}).get(port.key)
                metrics = PluginMetrics(spec.name, carried=old)
                context = make_context(reactor, spec.name, port.key, config.state_dir, metrics)
                handler = plugin.build(dict(spec.parsed), context)
                if not IIngressHandler.providedBy(handler):
                    raise ValueError(f"plugin {spec.name!r} did not return an IIngressHandler")
                built[port.key] = ConfiguredPlugin(
                    port.key, spec.name, handler, context, spec, dict(spec.parsed)
                )
            else:
                _warn_legacy(spec.name)
                handler = create_legacy(plugin, spec.name, dict(spec.options))
                built[port.key] = ConfiguredPlugin(
                    port.key, spec.name, handler, None, spec, dict(spec.options)
                )
        except (UnknownHandler, ValueError) as e:
            raise ConfigError(f"{where}: {e}") from None
    return built


def plugin_specs(config: NodeConfig) -> dict[int | str, PluginHandler]:
    """The ``handler = NAME`` sections of ``config`` by key."""
    return {p.key: p.handler for p in config.serve if isinstance(p.handler, PluginHandler)}


def _new(found: Mapping[str, Any], name: str) -> bool:
    return IHandlerPlugin.providedBy(found.get(name))


def build_handlers(config: NodeConfig, reactor: Any = None) -> dict[int | str, IIngressHandler]:
    """Plugin handlers by section key (port, or "host:port"), for checks and for callers of
    the older API; ConfigError for a bad section."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    return {key: c.handler for key, c in build_plugins(config, reactor).items()}


_warned: set[str] = set()


def _warn_legacy(name: str) -> None:
    """Once per plugin and process: the older interface is deprecated (docs/plugins.md)."""
    if name in _warned:
        return
    _warned.add(name)
    log.warn(
        "handler plugin {name!r} uses the deprecated IIngressHandlerFactory.create(options); "
        "it keeps working for now: move it to funnel_tw.plugin.IHandlerPlugin (docs/plugins.md)",
        name=name,
    )


def create_legacy(factory: Any, name: str, options: Mapping[str, str]) -> IIngressHandler:
    """The older interface: ``create(options)`` on raw strings; ValueError for bad options."""
    handler = factory.create(dict(options))
    if not IIngressHandler.providedBy(handler):
        raise ValueError(f"plugin {name!r} did not return an IIngressHandler")
    return handler


@implementer(IHandshakeListener, IHalfCloseableProtocol)
class PluginStart(Protocol):
    """Inside the node's TLS: the plugin's protocol is built once the handshake is done, so
    its Flow carries the client's server name (SNI) and the negotiated ALPN."""

    def __init__(self, build: Callable[[Flow], IProtocol | None], flow: Flow) -> None:
        self.build = build
        self.flow = flow
        self.inner: IProtocol | None = None

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.connected = 1
        handle = transport.getHandle() if hasattr(transport, "getHandle") else None
        sni = handle.get_servername() if handle is not None else None
        alpn = getattr(transport, "negotiatedProtocol", None)
        flow = attrs.evolve(
            self.flow,
            server_name=sni.decode("ascii", "replace") if sni else None,
            alpn=alpn.decode("ascii", "replace") if alpn else None,
        )
        inner = self.build(flow)
        if inner is None:
            transport.loseConnection()
            return
        self.inner = inner
        inner.makeConnection(transport)

    def handshakeCompleted(self) -> None:
        listener = IHandshakeListener(self.inner, None)
        if listener is not None:
            listener.handshakeCompleted()

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)

    def readConnectionLost(self) -> None:
        half = IHalfCloseableProtocol(self.inner, None)
        if half is not None:
            half.readConnectionLost()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        half = IHalfCloseableProtocol(self.inner, None)
        if half is not None:
            half.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = 0
        if self.inner is not None:
            self.inner.connectionLost(reason)


def plugin_protocol(
    handler: IIngressHandler,
    flow: Flow,
    name: str,
    metrics: PluginMetrics | None,
    count: Callable[[str], None],
) -> IProtocol | None:
    """``handler.build_protocol(flow)``; a refusal (``Refused(reason)``, or None) is
    counted as ``plugin_refused`` and by the plugin's reason, and logged."""
    try:
        protocol = handler.build_protocol(flow)
    except Refused as e:
        reason = e.reason
    else:
        if protocol is not None:
            return protocol
        reason = "refused"
    count("plugin_refused")
    label = metrics.refuse(reason) if metrics is not None else reason_label(reason)
    log.info(
        "plugin {plugin} refused {client} -> {host}:{port} (flow {flow_id}): {reason}",
        plugin=name,
        client=format_host_port(*flow.client),
        host=flow.host,
        port=flow.port,
        flow_id=flow.id,
        reason=label,
    )
    return None
