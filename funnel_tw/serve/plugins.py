"""Finding handler plugins: ``twisted.plugin`` over ``funnel_tw.plugins`` and
``twisted.plugins``."""

from __future__ import annotations

from collections.abc import Mapping

from twisted.plugin import getPlugins

from ..config import ConfigError, NodeConfig, PluginHandler
from .interfaces import IIngressHandler, IIngressHandlerFactory


class UnknownHandler(LookupError):
    pass


def handler_factories() -> dict[str, IIngressHandlerFactory]:
    """Every installed handler kind by name."""
    import twisted.plugins

    found: dict[str, IIngressHandlerFactory] = {}
    for factory in getPlugins(IIngressHandlerFactory, twisted.plugins):
        found.setdefault(factory.name, factory)
    return found


def build_handlers(config: NodeConfig) -> dict[int | str, IIngressHandler]:
    """Plugin handlers for ``[serve PORT] handler = NAME`` (by port) and ``[serve HOST:PORT]``
    (by "host:port"), built (their options checked) when the configuration is loaded, not at
    the first connection."""
    handlers: dict[int | str, IIngressHandler] = {}
    for port in config.serve:
        if not isinstance(port.handler, PluginHandler):
            continue
        try:
            handlers[port.key] = create_handler(port.handler.name, dict(port.handler.options))
        except (UnknownHandler, ValueError) as e:
            raise ConfigError(f"{config.path}: [serve {port.key}] handler: {e}") from None
    return handlers


def create_handler(name: str, options: Mapping[str, str]) -> IIngressHandler:
    """Build handler ``name`` with ``options``; ValueError for bad options."""
    factory = handler_factories().get(name)
    if factory is None:
        known = ", ".join(sorted(handler_factories())) or "none installed"
        raise UnknownHandler(f"no handler plugin named {name!r} (installed: {known})")
    handler = factory.create(dict(options))
    if not IIngressHandler.providedBy(handler):
        raise ValueError(f"plugin {name!r} did not return an IIngressHandler")
    return handler
