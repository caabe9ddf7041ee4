"""twistd ``funnel-relay``: the relay daemon's Options and makeService."""

from __future__ import annotations

from twisted.application.service import IService

from ..config import RelayConfig, load_relay_config
from ..options import ConfigOptions, prepare_state_dir


class Options(ConfigOptions):
    longdesc = "Run a funnel-tw relay: public listeners that route TLS by SNI to nodes."

    def load(self, path: str) -> RelayConfig:
        return load_relay_config(path)


def makeService(options: Options) -> IService:
    from ..daemon.run import add_daemon_services
    from .enroll.live import attach_enroll
    from .observe import not_serving, status_line
    from .reload import relay_reloader
    from .service import RelayService

    prepare_state_dir(options.loaded.state_dir, options.loaded.path, "relay")

    relay = RelayService(options.loaded)
    attach_enroll(relay)  # invite, nodes, remove-node; the enroll listener with enroll-port
    add_daemon_services(
        relay,
        relay.reactor,
        reopen=relay.observer.reopen,
        not_ready=lambda: not_serving(relay),
        status=lambda: status_line(relay),
        reloader=relay_reloader(relay),
        metrics=("funnel_relay", relay.observer.registry),
        debug=bool(options["debug"]),
    )
    return relay
