"""twistd ``funnel-relay`` (the relay daemon)."""

from .tap import RelayOptions as Options
from .tap import make_relay_service as makeService

__all__ = ["Options", "makeService"]
