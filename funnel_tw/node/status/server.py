"""The node's local API, for ``funnel-tw status`` (the socket and server: daemon/localapi/).

GET /v0/serve-status   the serve config exactly as ``tailscale serve status --json`` prints it
GET /v0/status         everything the human summary shows: peers, serve ports, certificates,
                       open ingress connections, counters, version
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...daemon.localapi import server
from .address import SERVE_STATUS_PATH, STATUS_PATH
from .document import StatusSource, serve_status, status_document


class LocalAPISite(server.LocalAPISite):
    def __init__(self, node: StatusSource, reactor: Any) -> None:
        super().__init__(
            {
                SERVE_STATUS_PATH: lambda: serve_status(node),
                STATUS_PATH: lambda: status_document(node, reactor.seconds()),
            },
            reactor,
        )


class LocalAPIService(server.LocalAPIService):
    """Serves the node's local API on ``<state-dir>/funnel-tw.sock`` while it runs."""

    def __init__(self, node: StatusSource, reactor: Any = None, path: Path | None = None) -> None:
        if reactor is None:
            reactor = node.reactor
        self.node = node
        super().__init__(LocalAPISite(node, reactor), node.config.state_dir, reactor, "node", path)
