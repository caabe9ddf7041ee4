"""A daemon's local API: JSON over HTTP on a UNIX socket in state-dir, for ``funnel-tw status``.

The node (node/status/) and the relay (relay/observe.py) each give the routes they answer.
The socket is ``<state-dir>/funnel-tw.sock``, mode 0600: only the daemon's own user can ask. A
daemon refuses to start when another one already answers on that socket; a stale socket file
that nobody listens on (a daemon that was killed) is removed.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http as web_http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from .address import (
    _PROBE_TIMEOUT,
    IDLE_TIMEOUT,
    RELAY_SOCKET_NAME,
    SOCKET_MODE,
    SOCKET_NAME,
    LocalAPIError,
    SocketAddress,
    socket_path,
)

log = Logger()


class _JSONResource(Resource):
    isLeaf = True

    def __init__(self, produce: Callable[[], Any]) -> None:
        super().__init__()
        self.produce = produce

    def render_GET(self, request: Request) -> bytes:
        body = json.dumps(self.produce(), indent=2).encode() + b"\n"
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return body


class ActionRefused(Exception):
    """An action's refusal: answered 400 with ``{"error": message}`` for the command to show."""


MAX_ACTION_BODY = 64 << 10


class _ActionResource(Resource):
    """POST with a JSON object body: ``act(body)`` answers, as JSON (ActionRefused: 400)."""

    isLeaf = True

    def __init__(self, act: Callable[[dict[str, Any]], Any]) -> None:
        super().__init__()
        self.act = act

    def render_POST(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        assert request.content is not None
        data = request.content.read(MAX_ACTION_BODY + 1)
        try:
            body = json.loads(data) if len(data) <= MAX_ACTION_BODY else None
            if not isinstance(body, dict):
                raise ActionRefused("the request body is not a JSON object")
            answer = self.act(body)
        except (ActionRefused, ValueError) as e:
            request.setResponseCode(400)
            return json.dumps({"error": str(e)}).encode() + b"\n"
        return json.dumps(answer, indent=2).encode() + b"\n"


Routes = Mapping[str, Callable[[], Any]]  # "/v0/status" -> what it answers, as JSON


class LocalAPISite(Site):
    """The local API's routes, without an access log of its own."""

    noisy = False

    def __init__(self, routes: Routes, reactor: Any) -> None:
        self.root = Resource()
        for url, produce in routes.items():
            self.add(url, _JSONResource(produce))
        super().__init__(self.root, timeout=IDLE_TIMEOUT, reactor=reactor)
        self.displayTracebacks = False

    def add(self, url: str, resource: Resource) -> None:
        parent = self.root
        *dirs, leaf = url.strip("/").split("/")
        for name in dirs:
            child = parent.children.get(name.encode())
            if child is None:
                child = Resource()
                parent.putChild(name.encode(), child)
            parent = child
        parent.putChild(leaf.encode(), resource)

    def add_route(self, url: str, produce: Callable[[], Any]) -> None:
        """GET ``url`` answers ``produce()`` as JSON."""
        self.add(url, _JSONResource(produce))

    def add_action(self, url: str, act: Callable[[dict[str, Any]], Any]) -> None:
        """POST ``url`` with a JSON object answers ``act(body)`` (ActionRefused: 400)."""
        self.add(url, _ActionResource(act))

    def log(self, request: web_http.Request) -> None:
        pass


def _free_socket_path(path: Path, address: str, who: str) -> None:
    """Make ``path`` (reached as ``address``) free to bind, or say clearly why it is not."""
    try:
        mode = os.lstat(address).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise LocalAPIError(f"{path} exists and is not a socket: move it away or change state-dir")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(_PROBE_TIMEOUT)
    try:
        probe.connect(address)
    except ConnectionRefusedError:
        pass  # nobody listens: a daemon that did not stop cleanly left it behind
    except TimeoutError:
        raise LocalAPIError(
            f"another funnel-tw {who} is already running with this state-dir "
            f"(its local API socket {path} is busy)"
        ) from None
    except OSError as e:
        raise LocalAPIError(f"cannot check the existing socket {path}: {e.strerror}") from None
    else:
        raise LocalAPIError(
            f"another funnel-tw {who} is already running with this state-dir "
            f"(its local API answers on {path})"
        )
    finally:
        probe.close()
    log.info("removing stale local API socket {path}", path=str(path))
    try:
        os.unlink(address)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise LocalAPIError(f"cannot remove the stale socket {path}: {e.strerror}") from None


class LocalAPIService(Service):
    """Serves the local API on ``<state-dir>/funnel-tw.sock`` while the daemon runs."""

    def __init__(
        self, site: Site, state_dir: Path, reactor: Any, who: str, path: Path | None = None
    ) -> None:
        self.reactor = reactor
        self.who = who  # "node" or "relay", for the error lines
        name = RELAY_SOCKET_NAME if who == "relay" else SOCKET_NAME
        self.path = path if path is not None else socket_path(state_dir, name)
        self.site = site
        self.port: IListeningPort | None = None
        self._address: SocketAddress | None = None

    def listen(self) -> None:
        """Bind the socket now; LocalAPIError says why it cannot be."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise LocalAPIError(f"cannot create {self.path.parent}: {e.strerror}") from None
        address = SocketAddress(self.path)
        try:
            where = address.open()
        except OSError as e:
            raise LocalAPIError(
                f"cannot use {self.path} for the local API socket: {e.strerror}; "
                "choose a shorter state-dir"
            ) from None
        try:
            _free_socket_path(self.path, where, self.who)
            self._bind(where)
        except BaseException:
            address.close()
            raise
        self._address = address
        log.info("local API on {path}", path=str(self.path))

    def _bind(self, where: str) -> None:
        endpoint = UNIXServerEndpoint(self.reactor, where, mode=SOCKET_MODE)
        # Twisted chmods the socket after bind(); the umask closes that window.
        previous = os.umask(0o177)
        try:
            d = endpoint.listen(self.site)
        finally:
            os.umask(previous)
        # UNIXServerEndpoint.listen calls reactor.listenUNIX at once: the Deferred has fired.
        outcome: list[IListeningPort | Failure] = []
        d.addBoth(outcome.append)
        if not outcome:
            raise LocalAPIError(f"cannot listen on {self.path}: the reactor did not listen at once")
        result = outcome[0]
        if isinstance(result, Failure):
            raise LocalAPIError(f"cannot listen on {self.path}: {result.getErrorMessage()}")
        self.port = result

    def startService(self) -> None:
        try:
            self.listen()
        except LocalAPIError as e:  # a clear line, not a traceback
            raise SystemExit(f"funnel-tw: {e}") from None
        super().startService()

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        address, self._address = self._address, None
        if port is None:
            if address is not None:
                address.close()
            return None
        # the port removes the socket file when it stops, through the same address
        result = port.stopListening()
        stopped: defer.Deferred[None] = (
            result if isinstance(result, defer.Deferred) else defer.succeed(None)
        )

        def done(result: object) -> None:
            if address is not None:
                address.close()

        stopped.addBoth(done)
        return stopped
