"""Which node serves a name: exact names first, then ``*.suffix`` wildcards (one label)."""

from __future__ import annotations

from collections.abc import Sequence

from ..config import RelayNode


class Routes:
    def __init__(self, nodes: Sequence[RelayNode]) -> None:
        self.replace(nodes)

    def replace(self, nodes: Sequence[RelayNode]) -> None:
        """Route by these nodes from now on (a reload): new lookups see them at once."""
        self.exact: dict[str, RelayNode] = {}
        self.wildcard: dict[str, RelayNode] = {}
        for node in nodes:
            for name in node.hostnames:
                if name.startswith("*."):
                    self.wildcard[name[2:]] = node
                else:
                    self.exact[name] = node

    def lookup(self, name: str) -> RelayNode | None:
        name = name.lower().rstrip(".")
        node = self.exact.get(name)
        if node is not None:
            return node
        label, dot, rest = name.partition(".")
        if label and dot:
            return self.wildcard.get(rest)
        return None
