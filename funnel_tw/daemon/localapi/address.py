"""Where a daemon's local API socket lives, and how to reach a path too long for sun_path.

Standard library only: the blocking client (``funnel-tw status``) uses it as well as the server.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

SOCKET_NAME = "funnel-tw.sock"
RELAY_SOCKET_NAME = "funnel-tw-relay.sock"  # a node and a relay may share one state-dir
SOCKET_MODE = 0o600
SERVE_STATUS_PATH = "/v0/serve-status"
STATUS_PATH = "/v0/status"
IDLE_TIMEOUT = 30
# sun_path holds 108 bytes on Linux (104 on the BSDs and macOS), the terminating NUL included
_MAX_SOCKET_PATH = (104 if sys.platform == "darwin" or "bsd" in sys.platform else 108) - 1
_PROBE_TIMEOUT = 2.0
_EXPIRY_WARNING = 7 * 86400


def socket_path(state_dir: Path, name: str = SOCKET_NAME) -> Path:
    """Where a node (``name``: RELAY_SOCKET_NAME for a relay) with this state-dir puts its
    local API socket."""
    return Path(state_dir) / name


class LocalAPIError(Exception):
    """The local API cannot listen (another daemon runs, a bad path, ...)."""


class LocalAPIUnavailable(Exception):
    """The client found no daemon answering on the socket; the message says why."""


class SocketAddress:
    """What bind() and connect() are given for ``path``.

    A UNIX socket address holds at most 107 bytes (103 on the BSDs). A longer path is reached
    through an open descriptor of its directory, ``/proc/self/fd/N/funnel-tw.sock`` (Linux),
    which names the same file; the descriptor stays open until :meth:`close`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._dir_fd: int | None = None

    def open(self) -> str:
        """The address to use (FileNotFoundError when the directory does not exist)."""
        if len(os.fsencode(self.path)) <= _MAX_SOCKET_PATH:
            return str(self.path)
        if self._dir_fd is None:
            flags = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC
            self._dir_fd = os.open(self.path.parent, flags)
        via = f"/proc/self/fd/{self._dir_fd}"
        if not os.path.isdir(via):
            self.close()
            raise OSError(
                errno.ENAMETOOLONG,
                f"longer than the {_MAX_SOCKET_PATH} bytes a UNIX socket address holds",
            )
        return f"{via}/{self.path.name}"

    def close(self) -> None:
        fd, self._dir_fd = self._dir_fd, None
        if fd is not None:
            os.close(fd)
