"""The local API client: standard library only, blocking; what ``funnel-tw status`` runs
(for a node or a relay)."""

from __future__ import annotations

import errno
import http.client
import json
import os
import socket
from pathlib import Path
from typing import Any

from .address import LocalAPIUnavailable, SocketAddress


class LocalAPIRefused(LocalAPIUnavailable):
    """The daemon answered, and refused the action; the message is the daemon's."""


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a UNIX socket."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        super().__init__("local", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        address = SocketAddress(Path(self.socket_path))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(address.open())
        except BaseException:
            sock.close()
            raise
        finally:
            address.close()
        self.sock = sock


def fetch(
    path: str | os.PathLike[str],
    url: str,
    timeout: float = 10.0,
    who: str = "node",
    post: dict[str, Any] | None = None,
) -> Any:
    """GET ``url`` (POST the JSON ``post`` when given) from the local API of the daemon
    (``who``: node, relay) at ``path``; the parsed JSON answer.

    Raises LocalAPIUnavailable with a message for a person when no daemon answers, and
    LocalAPIRefused with the daemon's message when it refuses an action.
    """
    where = os.fspath(path)
    conn = UnixHTTPConnection(where, timeout)
    try:
        if post is None:
            conn.request("GET", url)
        else:
            headers = {"Content-Type": "application/json"}
            conn.request("POST", url, json.dumps(post).encode(), headers)
        response = conn.getresponse()
        body = response.read()
    except FileNotFoundError:
        raise LocalAPIUnavailable(
            f"the {who} is not running (no local API socket at {where})"
        ) from None
    except ConnectionRefusedError:
        raise LocalAPIUnavailable(
            f"the {who} is not running (nothing listens on {where})"
        ) from None
    except PermissionError:
        raise LocalAPIUnavailable(
            f"permission denied on {where}: the socket is 0600, run this as the {who}'s user"
        ) from None
    except TimeoutError:
        raise LocalAPIUnavailable(
            f"the {who} did not answer on {where} within {timeout:g}s"
        ) from None
    except (OSError, http.client.HTTPException) as e:
        if isinstance(e, OSError) and e.errno == errno.ENOTSOCK:
            raise LocalAPIUnavailable(f"{where} is not a socket") from None
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        raise LocalAPIUnavailable(f"cannot talk to the {who} on {where}: {reason}") from None
    finally:
        conn.close()
    if response.status == 400 and post is not None:
        try:
            message = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            message = f"the {who} refused the request"
        raise LocalAPIRefused(str(message))
    if response.status == 404 and post is not None:
        raise LocalAPIUnavailable(f"the {who} does not know {url} (an older version?)")
    if response.status != 200:
        raise LocalAPIUnavailable(
            f"the {who} answered {response.status} {response.reason} for {url}"
        )
    try:
        return json.loads(body)
    except ValueError:
        raise LocalAPIUnavailable(f"the {who}'s answer for {url} is not JSON") from None
