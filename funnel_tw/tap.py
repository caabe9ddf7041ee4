"""twistd entry points: Options and makeService for ``funnel`` and ``funnel-relay``.

Loading the configuration happens in ``postOptions`` so a bad file makes twistd exit
non-zero with the ConfigError text, never with a traceback.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from .config import ConfigError, NodeConfig, RelayConfig, load_node_config, load_relay_config


class _ConfigOptions(usage.Options):
    optParameters = [["config", "c", None, "configuration file"]]
    loaded: Any = None

    def load(self, path: str) -> Any:
        raise NotImplementedError

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config FILE is required")
        try:
            self.loaded = self.load(self["config"])
        except ConfigError as e:
            raise usage.UsageError(f"invalid configuration:\n{e}") from None


class NodeOptions(_ConfigOptions):
    longdesc = "Run a funnel-tw node: WireGuard, peerAPI ingress, TLS and serve handlers."

    def load(self, path: str) -> NodeConfig:
        from .serve.plugins import build_handlers

        config = load_node_config(path)
        self.handlers = build_handlers(config)  # plugin options are checked now
        return config


class RelayOptions(_ConfigOptions):
    longdesc = "Run a funnel-tw relay: public listeners that route TLS by SNI to nodes."

    def load(self, path: str) -> RelayConfig:
        return load_relay_config(path)


def make_node_service(options: NodeOptions) -> IService:
    from .node import NodeService

    return NodeService(options.loaded, handlers=options.handlers)


def make_relay_service(options: RelayOptions) -> IService:
    from .relay.service import RelayService

    return RelayService(options.loaded)
