"""twistd Options shared by ``funnel`` (node/tap.py) and ``funnel-relay`` (relay/tap.py).

Loading the configuration happens in ``postOptions`` so a bad file makes twistd exit
non-zero with the ConfigError text, never with a traceback.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from .config import ConfigError


class ConfigOptions(usage.Options):
    """``--config FILE``, loaded (and checked) by the subclass's ``load``."""

    optParameters = [["config", "c", None, "configuration file"]]
    loaded: Any = None

    def load(self, path: str) -> Any:
        raise NotImplementedError

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config FILE is required")
        try:
            self.loaded = self.load(self["config"])
        except ConfigError as e:
            raise usage.UsageError(f"invalid configuration:\n{e}") from None
