"""Live reload of the node: apply a plan (config/plan.py) to the running NodeService.

Checked first, before anything changes: plugin handlers of changed [serve] sections are built
(their options checked; unchanged sections keep their running instance, see node/plugins.py),
a ``files`` certificate is loaded, new peer endpoints resolve. Then:

- peers: removed from / added to / updated on the WireGuard device, and the funnel-ingress
  packet filter restricts exactly the new funnel-ingress peers;
- hostnames and [tls]: the store serves the new names (a removed name's handshakes are
  refused) and the certificate source is started again for them;
- everything else (serve sections, and any section kind added to ``NODE_SECTIONS`` later, such
  as access policies): the serve model is rebuilt from the new file and swapped in whole. The
  dispatcher reads it per flow, so new flows use the new configuration while flows in progress
  keep the site and handler they were given; serve ports are listened on or closed.
"""

from __future__ import annotations

from twisted.logger import Logger

from ..config import ConfigError, NodeConfig, PeerConfig
from ..config.plan import Plan, node_plan, peer_changes
from ..daemon.reload import Reloader, ReloadRefused
from ..serve.access.guard import Access
from ..serve.model import ServeConfig
from ..serve.plugins import load_checked
from ..tls.sources import CertificateSourceError, FilesSource
from ..tls.store import CertificateStore
from .fallback import fallback_targets
from .plugins import PluginReload, prepare_reload
from .service import NodeService

log = Logger()

OWN_STEPS = ("peer", "tls")  # every other kind of change rebuilds the serve model


def _plugins(node: NodeService, new: NodeConfig) -> PluginReload:
    """Plugin sections after the reload (node/plugins.py): unchanged ones keep their instance."""
    try:
        return prepare_reload(node.plugins, new, node.reactor)
    except ConfigError as e:
        raise ReloadRefused(str(e).replace("\n", "; ")) from None


def _check_certificates(new: NodeConfig) -> None:
    tls = new.tls
    if tls.source != "files":
        return  # self-signed is made on the spot; ACME keeps a stand-in while it issues
    assert tls.cert_file is not None and tls.key_file is not None
    scratch = CertificateStore(new.hostnames)
    try:
        FilesSource(scratch, tls.cert_file, tls.key_file, None).load()
    except CertificateSourceError as e:
        raise ReloadRefused(f"[tls]: {e}") from None


def apply_node_plan(node: NodeService, new: NodeConfig, plan: Plan) -> None:
    rebuild_serve = any(c.kind not in OWN_STEPS for c in plan.changes)
    certificates = plan.touches("tls", "hostname")
    # --- what can fail, before anything changes
    plugins = _plugins(node, new) if rebuild_serve else None
    if certificates:
        _check_certificates(new)
    remove, add, update = peer_changes(plan, "peer", PeerConfig)
    ingress_port = frozenset({new.peerapi_port})
    try:
        node.overlay.reconfigure_peers(
            remove=remove,
            add=add,
            update=update,
            restricted={p.name: ingress_port for p in new.peers if p.funnel_ingress},
        )
    except OSError as e:
        raise ReloadRefused(f"a peer's endpoint does not resolve: {e}") from None
    # --- from here on, nothing refuses
    old = node.config
    node.config = new
    node.peers_by_name = {p.name: p for p in new.peers}
    node.fallback.configure(fallback_targets(new.peers))
    if certificates:
        node.certificates.stop()
        node.store.set_hostnames(new.hostnames)
        node.certificates = node.certificate_source(new)
        if node.running:
            try:
                node.certificates.start()
            except CertificateSourceError as e:  # checked above: the files changed since
                log.warn("reload: no certificate for the new [tls] yet: {error}", error=e)
    if plugins is not None:
        _swap_serve(node, old, new, plugins)


def _swap_serve(node: NodeService, old: NodeConfig, new: NodeConfig, plugins: PluginReload) -> None:
    serve = ServeConfig.from_node_config(new)
    before, after = set(node.serve.ports), set(serve.ports)
    if old.access != new.access:  # new flows get the new policies (their counters start anew)
        node.access = Access(new.access, node.reactor, state_dir=new.state_dir)
        node.dispatcher.access = node.access
    node.serve = serve
    node.dispatcher.serve = serve
    node.plugin_services.apply_reload(plugins, lambda: _swap_plugins(node, plugins))
    node.ingress.policy = serve
    if not node.running:
        return
    for port in sorted(before - after):
        listener = node.serve_listeners.pop(port, None)
        if listener is not None:
            node.listening.remove(listener)
            listener.stopListening()  # connections already accepted go on
    for port in sorted(after - before):
        node.listen_serve(port)


def _swap_plugins(node: NodeService, plugins: PluginReload) -> None:
    """New flows go to the new handlers (their services started already)."""
    node.plugins = plugins.plugins
    node.dispatcher.handlers = plugins.handlers
    node.dispatcher.plugin_metrics = {
        key: p.context.metrics for key, p in plugins.plugins.items() if p.context is not None
    }


def node_reloader(node: NodeService) -> Reloader[NodeConfig]:
    """What SIGHUP runs for the node (daemon/run.py)."""
    return Reloader(
        current=lambda: node.config,
        load=lambda old: load_checked(old.path),  # plugin options too, with core errors
        plan=node_plan,
        apply=lambda new, plan: apply_node_plan(node, new, plan),
    )
