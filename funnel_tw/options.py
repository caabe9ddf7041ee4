"""twistd Options shared by ``funnel`` (node/tap.py) and ``funnel-relay`` (relay/tap.py).

Loading the configuration happens in ``postOptions`` so a bad file makes twistd exit
non-zero with the ConfigError text, never with a traceback.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from twisted.python import usage

from .config import ConfigError


class ConfigOptions(usage.Options):
    """``--config FILE``, loaded (and checked) by the subclass's ``load``; ``--debug``."""

    optParameters = [["config", "c", None, "configuration file"]]
    optFlags = [["debug", None, "log debug lines too (off: info and above only)"]]
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


def prepare_state_dir(path: Path, config: Path, section: str) -> None:
    """Create ``state-dir`` (0700) and prove it writable before anything starts.

    Under ``ProtectSystem=strict`` a relative state-dir next to /etc/funnel-tw/ is read-only;
    that must be one clear line at start, not a traceback later (or state silently lost).
    Raises SystemExit with that line.
    """
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise SystemExit(
            f"funnel-tw: {config}: [{section}] state-dir = {path}: not writable "
            f"({e.strerror or e}); use an absolute writable path, e.g. /var/lib/funnel-tw "
            f"with StateDirectory=funnel-tw in the systemd unit"
        ) from None
