"""An example funnel-tw handler plugin (see docs/plugins.md)."""

from .handler import EchoHandler, EchoHandlerFactory, EchoProtocol

__all__ = ["EchoHandler", "EchoHandlerFactory", "EchoProtocol"]
