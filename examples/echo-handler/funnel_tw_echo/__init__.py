"""An example funnel-tw handler plugin (see docs/plugins.md)."""

from .handler import EchoHandler, EchoPlugin, EchoProtocol

__all__ = ["EchoHandler", "EchoPlugin", "EchoProtocol"]
