"""The handler plugin API, in one import: ``from funnel_tw import plugin``.

    plugin.IHandlerPlugin     what twisted.plugin finds: name, schema, build(options, context)
    plugin.options            the option types (the node's own converters) for ``schema``
    plugin.HandlerContext     reactor, log, section, port, state_dir(), metrics
    plugin.Flow               one stream: client, host, port, funnel, peer, id, server_name, alpn
    plugin.IIngressHandler    terminate_tls and build_protocol(flow)
    plugin.Refused            raise it from build_protocol to refuse a flow with a reason
    plugin.proxy_to           a flow protocol that proxies to a TCP backend (BackendProxy)

See docs/plugins.md; ``funnel_tw.testing`` is the test kit.
"""

from __future__ import annotations

from ..config import schema as options
from ..flow import Flow, IIngressHandler
from .api import HandlerContext, IHandlerPlugin, PluginMetrics, Refused
from .proxy import BackendProxy, proxy_to

__all__ = [
    "BackendProxy",
    "Flow",
    "HandlerContext",
    "IHandlerPlugin",
    "IIngressHandler",
    "PluginMetrics",
    "Refused",
    "options",
    "proxy_to",
]
