"""twistd ``funnel`` (the node daemon)."""

from .tap import NodeOptions as Options
from .tap import make_node_service as makeService

__all__ = ["Options", "makeService"]
