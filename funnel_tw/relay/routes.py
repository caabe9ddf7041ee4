"""Which nodes serve a name: exact names first, then ``*.suffix`` wildcards (one label).

Several nodes may list the same name (or the same wildcard): they form a pool, kept in config
order (``balance = first`` reads that order as active, then standbys). A name listed exactly by
some node is served by those nodes only, not by a wildcard's.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from ..config import RelayNode


@attrs.frozen
class Pool:
    """The nodes serving one name as relay.ini lists it (``app.example.com``, ``*.example.com``)."""

    key: str
    nodes: tuple[RelayNode, ...]


class Routes:
    def __init__(self, nodes: Sequence[RelayNode]) -> None:
        self.replace(nodes)

    def replace(self, nodes: Sequence[RelayNode]) -> None:
        """Route by these nodes from now on (a reload, an enrollment): new lookups see them at
        once; connections already spliced stay with their node."""
        exact: dict[str, list[RelayNode]] = {}
        wildcard: dict[str, list[RelayNode]] = {}
        for node in nodes:
            for name in node.hostnames:
                table, key = (wildcard, name[2:]) if name.startswith("*.") else (exact, name)
                members = table.setdefault(key, [])
                if node not in members:
                    members.append(node)
        self.nodes: tuple[RelayNode, ...] = tuple(nodes)
        self.exact = {k: Pool(k, tuple(v)) for k, v in exact.items()}
        self.wildcard = {k: Pool(f"*.{k}", tuple(v)) for k, v in wildcard.items()}

    def pool(self, name: str) -> Pool | None:
        """The pool serving ``name`` (an SNI), or None."""
        name = name.lower().rstrip(".")
        pool = self.exact.get(name)
        if pool is not None:
            return pool
        label, dot, rest = name.partition(".")
        if label and dot:
            return self.wildcard.get(rest)
        return None

    def lookup(self, name: str) -> RelayNode | None:
        """The first node serving ``name`` (config order), or None."""
        pool = self.pool(name)
        return pool.nodes[0] if pool is not None else None

    def pools(self) -> list[Pool]:
        return [*self.exact.values(), *self.wildcard.values()]
