"""funnel-tw: a self-hosted Tailscale-Funnel-compatible node and relay on Twisted.

The public surface, as treq keeps one: the two daemons' services, the configuration loaders and
their errors, and what a handler plugin implements (``Flow``, ``IIngressHandler``). Everything
else is private by convention and may change. Names load on first use, so importing
``funnel_tw`` (for ``__version__``) costs nothing.

    from funnel_tw import NodeService, load_node_config
    node = NodeService(load_node_config("node.ini"))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .config import ConfigError, NodeConfig, RelayConfig, load_node_config, load_relay_config
    from .flow import Flow, IIngressHandler
    from .node.service import NodeService
    from .relay.service import RelayService

_PUBLIC = {
    "ConfigError": "funnel_tw.config",
    "NodeConfig": "funnel_tw.config",
    "RelayConfig": "funnel_tw.config",
    "load_node_config": "funnel_tw.config",
    "load_relay_config": "funnel_tw.config",
    "Flow": "funnel_tw.flow",
    "IIngressHandler": "funnel_tw.flow",
    "NodeService": "funnel_tw.node.service",
    "RelayService": "funnel_tw.relay.service",
}

__all__ = [
    "ConfigError",
    "Flow",
    "IIngressHandler",
    "NodeConfig",
    "NodeService",
    "RelayConfig",
    "RelayService",
    "__version__",
    "load_node_config",
    "load_relay_config",
]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'funnel_tw' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
