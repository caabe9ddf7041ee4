"""Live reload of the relay: apply a plan (config/plan.py) to the running RelayService.

What can fail is done first: listening on added public ports (a port in use refuses the
reload, closing the ports just opened) and resolving new node endpoints. Then the nodes
(WireGuard peers, routes by hostname, peerAPI addresses), the limits and timeouts, and last the
public ports removed: their listeners close, connections already spliced on them go on until
they end. A removed node's peer leaves the WireGuard device at once, so its visitors are
refused (no route) and its sessions end.
"""

from __future__ import annotations

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort

from ..config import RelayConfig, RelayNode, load_relay_config
from ..config.plan import Plan, peer_changes, relay_plan
from ..daemon.reload import Reloader, ReloadRefused
from .service import RelayService


def apply_relay_plan(relay: RelayService, new: RelayConfig, plan: Plan) -> None:
    old = relay.config
    relay.config = new  # factories built for new ports read the new timeouts
    opened: dict[int, IListeningPort] = {}
    try:
        if relay.running:
            for change in plan.of("public-port"):
                if change.action == "added":
                    port = int(change.name)
                    try:
                        opened[port] = relay.listen_public(port)
                    except (OSError, CannotListenError) as e:
                        raise ReloadRefused(
                            f"cannot listen on {new.public_address}:{port}: {e}"
                        ) from None
        remove, add, update = peer_changes(plan, "node", RelayNode)
        try:
            relay.overlay.reconfigure_peers(remove=remove, add=add, update=update, restricted={})
        except OSError as e:
            raise ReloadRefused(f"a node's endpoint does not resolve: {e}") from None
    except ReloadRefused:
        relay.config = old
        for port, listener in opened.items():
            listener.stopListening()
            relay.public.pop(port, None)
            relay.factories.pop(port, None)
        raise
    relay.ports += opened.values()
    relay.routes.replace(new.nodes)
    relay.endpoints.configured = {n.name for n in new.nodes if n.endpoint is not None}
    for factory in relay.factories.values():
        factory.client_hello_timeout = new.client_hello_timeout
        factory.idle_timeout = new.idle_timeout
        factory.ingress_timeout = new.ingress_connect_timeout
        factory.fallback = relay.fallback if new.tcp_fallback else None  # open links stay
    relay.limits.max_total = new.max_connections
    relay.limits.max_per_ip = new.max_connections_per_ip
    for change in plan.of("public-port"):
        port = int(change.name)
        if change.action == "removed" and port in relay.public:
            listener = relay.public.pop(port)
            relay.factories.pop(port, None)
            relay.ports.remove(listener)
            listener.stopListening()  # accepted connections are not closed by this
    relay.observer.config = new


def relay_reloader(relay: RelayService) -> Reloader[RelayConfig]:
    """What SIGHUP runs for the relay (daemon/run.py)."""
    return Reloader(
        current=lambda: relay.config,
        load=lambda old: load_relay_config(old.path),
        plan=relay_plan,
        apply=lambda new, plan: apply_relay_plan(relay, new, plan),
    )
