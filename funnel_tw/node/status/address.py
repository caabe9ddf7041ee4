"""The node's local API socket: the shared implementation is daemon/localapi/address.py."""

from ...daemon.localapi.address import (
    _EXPIRY_WARNING,
    _PROBE_TIMEOUT,
    IDLE_TIMEOUT,
    SERVE_STATUS_PATH,
    SOCKET_MODE,
    SOCKET_NAME,
    STATUS_PATH,
    LocalAPIError,
    LocalAPIUnavailable,
    SocketAddress,
    socket_path,
)

__all__ = [
    "IDLE_TIMEOUT",
    "SERVE_STATUS_PATH",
    "SOCKET_MODE",
    "SOCKET_NAME",
    "STATUS_PATH",
    "_EXPIRY_WARNING",
    "_PROBE_TIMEOUT",
    "LocalAPIError",
    "LocalAPIUnavailable",
    "SocketAddress",
    "socket_path",
]
