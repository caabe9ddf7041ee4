"""What a handler plugin implements, and what it is given for each flow."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from twisted.internet.interfaces import IProtocol
from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface


@attrs.frozen
class Flow:
    """One incoming stream: who it is from and where it was addressed.

    ``client`` is the public client's (ip, port) for funnel flows (from
    Tailscale-Ingress-Src), else the overlay peer's address. ``peer`` is the name of the
    WireGuard peer the stream came through (the relay for funnel flows).
    """

    client: tuple[str, int]
    host: str
    port: int
    funnel: bool
    peer: str


class IIngressHandler(Interface):
    """A handler for ``[serve PORT] handler = NAME``, found with ``twisted.plugin``.

    Plugins provide ``IIngressHandlerFactory``; the factory validates the section's options
    when the configuration is loaded and returns an ``IIngressHandler``.
    """

    terminate_tls = Attribute(
        "True: the node terminates TLS and the protocol sees plaintext; "
        "False: the protocol sees the raw (still encrypted) stream."
    )

    def build_protocol(flow: Flow) -> IProtocol | None:
        """The Protocol for this flow, or None to refuse it (the connection is closed)."""


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
