"""twistd ``funnel``: the node daemon's Options and makeService."""

from __future__ import annotations

from twisted.application.service import IService

from ..config import NodeConfig, load_node_config
from ..options import ConfigOptions, prepare_state_dir


class Options(ConfigOptions):
    longdesc = "Run a funnel-tw node: WireGuard, peerAPI ingress, TLS and serve handlers."

    def load(self, path: str) -> NodeConfig:
        from ..serve.plugins import plugin_checker

        # plugin options are checked now, each error at its line with the core errors; the
        # handlers are built with their context (the reactor, state) by NodeService
        return load_node_config(path, plugins=plugin_checker())


def makeService(options: Options) -> IService:
    from ..daemon.run import add_daemon_services
    from .observe import not_serving, status_line
    from .reload import node_reloader
    from .service import LAME_DUCK, NodeService

    prepare_state_dir(options.loaded.state_dir, options.loaded.path, "node")

    node = NodeService(options.loaded)
    node.lame_duck = LAME_DUCK  # relays see it refuse before it goes silent
    add_daemon_services(
        node,
        node.reactor,
        reopen=node.observer.reopen,
        not_ready=lambda: not_serving(node),
        status=lambda: status_line(node),
        reloader=node_reloader(node),
        metrics=("funnel_node", node.observer.registry),
        debug=bool(options["debug"]),
    )
    return node
