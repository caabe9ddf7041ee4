"""How a pool's nodes share new public connections (``balance`` in ``[relay]``).

- ``round-robin`` (the default): each new connection starts one node further along the pool;
- ``least-connections``: the node with the fewest spliced connections from this relay first
  (ties in round-robin order);
- ``first``: config order: the first node in service takes everything, the others stand by.

The answer is an order, not one node: when an attempt fails (the node is gone, refuses or
declines) the relay still holds the ClientHello and tries the next node of that order, so the
client does not notice. Only nodes in service (``relay/health.py``) are listed; an empty order
means every node of the name is out. No Twisted here: the state is a cursor per pool and a
count of spliced connections per node.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import RelayConfig, RelayNode
from .health import Health
from .routes import Pool, Routes

POLICIES = ("round-robin", "least-connections", "first")


class Balancer:
    def __init__(
        self, routes: Routes, health: Health, config: Callable[[], RelayConfig] | None = None
    ) -> None:
        """``config()``: the current relay.ini (its ``balance`` keys; read per connection, so
        a reload applies to the next one)."""
        self.routes = routes
        self.health = health
        self.config = config
        self.cursors: dict[str, int] = {}  # by pool key
        self.active: dict[str, int] = {}  # spliced connections by node name
        # what WireGuard knows now of these nodes, read into the health view (relay/probe.py)
        self.refresh: Callable[[Pool], None] = lambda pool: None

    def policy(self, pool: Pool) -> str:
        if self.config is None:
            return "round-robin"
        config = self.config()
        return dict(config.balance_by_name).get(pool.key, config.balance)

    def order(self, pool: Pool) -> list[RelayNode]:
        """The pool's nodes in service, in the order to try them for one new connection."""
        self.refresh(pool)
        healthy = [n for n in pool.nodes if self.health.usable(n.name)]
        names = {n.name for n in healthy}
        policy = self.policy(pool)
        if policy == "first" or len(healthy) < 2:
            return healthy
        cursor = self.cursors.get(pool.key, 0)
        self.cursors[pool.key] = (cursor + 1) % len(pool.nodes)
        # rotate the whole pool (not only the healthy part) so a node's turn does not move
        # when another one goes out and comes back
        start = cursor % len(pool.nodes)
        rotated = [n for n in (*pool.nodes[start:], *pool.nodes[:start]) if n.name in names]
        if policy == "least-connections":
            rotated.sort(key=lambda n: self.active.get(n.name, 0))  # stable: ties keep the turn
        return rotated

    def opened(self, node: str) -> None:
        self.active[node] = self.active.get(node, 0) + 1

    def closed(self, node: str) -> None:
        left = self.active.get(node, 0) - 1
        if left > 0:
            self.active[node] = left
        else:
            self.active.pop(node, None)
