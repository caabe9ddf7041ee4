"""The plugin API: IIngressHandlerFactory, and (from flow.py) Flow and IIngressHandler."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.plugin import IPlugin
from zope.interface import Attribute

from ..flow import Flow, IIngressHandler

__all__ = ["Flow", "IIngressHandler", "IIngressHandlerFactory", "describe"]


class IIngressHandlerFactory(IPlugin):
    """A named handler kind: what ``twisted.plugin.getPlugins`` finds (a plugin object must
    provide IPlugin, which this interface extends, or getPlugins skips it)."""

    name = Attribute("The name used in [serve PORT] handler = NAME.")

    def create(options: Mapping[str, str]) -> IIngressHandler:
        """Validate ``options`` (the section's other keys) and build the handler.

        Raise ValueError with a clear message for a bad option: it becomes a ConfigError
        naming the file, line, section and key.
        """


def describe(handler: Any) -> str:
    return getattr(handler, "name", type(handler).__name__)
