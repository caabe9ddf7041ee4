"""The local API client (shared with the relay: daemon/localapi/client.py)."""

from ...daemon.localapi.client import UnixHTTPConnection, fetch

__all__ = ["UnixHTTPConnection", "fetch"]
