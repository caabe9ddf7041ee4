"""The node's local API: an HTTP server on a UNIX socket in state-dir, for ``funnel-tw status``.

    GET /v0/serve-status   the serve config exactly as ``tailscale serve status --json`` prints it
    GET /v0/status         everything the human summary shows: peers, serve ports, certificates,
                           open ingress connections, counters, version

The socket is ``<state-dir>/funnel-tw.sock``, mode 0600: only the node's own user can ask. A
node refuses to start when another node already answers on that socket; a stale socket file
that nobody listens on (a node that was killed) is removed.

The client half (:func:`fetch`, :func:`format_status`) uses the standard library only and
blocks: it is what ``funnel-tw status`` runs.
"""

from __future__ import annotations

import datetime
import errno
import http.client
import json
import os
import socket
import stat
import sys
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http as web_http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from . import __version__
from .overlay.tunnel import display_endpoint

if TYPE_CHECKING:
    from .node import NodeService

log = Logger()

SOCKET_NAME = "funnel-tw.sock"
SOCKET_MODE = 0o600
SERVE_STATUS_PATH = "/v0/serve-status"
STATUS_PATH = "/v0/status"
IDLE_TIMEOUT = 30
# sun_path holds 108 bytes on Linux (104 on the BSDs and macOS), the terminating NUL included
_MAX_SOCKET_PATH = (104 if sys.platform == "darwin" or "bsd" in sys.platform else 108) - 1
_PROBE_TIMEOUT = 2.0
_EXPIRY_WARNING = 7 * 86400


def socket_path(state_dir: Path) -> Path:
    """Where a node with this state-dir puts its local API socket."""
    return Path(state_dir) / SOCKET_NAME


class LocalAPIError(Exception):
    """The local API cannot listen (another node runs, a bad path, ...)."""


class LocalAPIUnavailable(Exception):
    """The client found no node answering on the socket; the message says why."""


# --- the documents ---------------------------------------------------------------------------


def serve_status(node: NodeService) -> dict[str, Any]:
    """``tailscale serve status --json``: nothing more, nothing less."""
    return node.serve.to_json()


def _ports(node: NodeService) -> list[dict[str, Any]]:
    serve = node.serve
    out: list[dict[str, Any]] = []
    for port, handler in sorted(serve.tcp.items()):
        entry: dict[str, Any] = {
            "port": port,
            "funnel": any(serve.allow_funnel.get(f"{h}:{port}", False) for h in serve.hostnames),
        }
        if handler.https:
            entry["kind"] = "https"
            mounts = next(
                (serve.web[f"{h}:{port}"] for h in serve.hostnames if f"{h}:{port}" in serve.web),
                {},
            )
            entry["mounts"] = {path: h.to_json() for path, h in mounts.items()}
        elif handler.terminate_tls is not None:
            entry["kind"] = "tls-terminated-tcp"
            entry["target"] = handler.tcp_forward
        elif handler.tcp_forward is not None:
            entry["kind"] = "tcp-forward"
            entry["target"] = handler.tcp_forward
        elif handler.handler is not None:
            entry["kind"] = "handler"
            entry["handler"] = handler.handler
        if handler.proxy_protocol:
            entry["proxy_protocol"] = handler.proxy_protocol
        out.append(entry)
    return out


def _peers(node: NodeService, now: float) -> list[dict[str, Any]]:
    out = []
    for peer in node.overlay.device.peers:
        spec = node.peers_by_name.get(peer.name)
        last = peer.last_handshake
        out.append(
            {
                "name": peer.name,
                "endpoint": display_endpoint(peer.endpoint) if peer.endpoint else None,
                "allowed_ips": [str(n) for n in peer.allowed_ips],
                "funnel_ingress": bool(spec and spec.funnel_ingress),
                "last_handshake": last,
                "last_handshake_age": None if last is None else max(0.0, now - last),
                "rx_bytes": peer.rx_bytes,
                "tx_bytes": peer.tx_bytes,
            }
        )
    return out


def _certificates(node: NodeService, now: float) -> list[dict[str, Any]]:
    installed = node.store.certificates()
    out: list[dict[str, Any]] = []
    for name in node.store.hostnames:
        cert = installed.get(name)
        if cert is None:
            out.append({"hostname": name, "source": None, "names": [], "not_after": None})
            continue
        not_after = cert.not_after
        out.append(
            {
                "hostname": name,
                "source": cert.source,
                "names": list(cert.names),
                "not_after": not_after.isoformat(),
                "expires_in": not_after.timestamp() - now,
            }
        )
    return out


def open_ingress_connections(node: NodeService) -> int | None:
    """TCP connections from funnel-ingress peers to the peerAPI port: each one is a public
    client once the node has answered 101. None where the kernel owns TCP (network = tun)."""
    if node.config.network != "userspace":
        return None
    count = 0
    for _local, local_port, remote, _remote_port in list(node.overlay.stack.connections):
        if local_port != node.config.peerapi_port:
            continue
        try:
            caller = node.caller(str(ip_address(remote)))
        except ValueError:
            continue
        if caller is not None and caller[1]:
            count += 1
    return count


def status_document(node: NodeService, now: float) -> dict[str, Any]:
    """What ``GET /v0/status`` answers; ``now`` is the node's clock (reactor.seconds())."""
    config = node.config
    overlay = node.overlay
    return {
        "version": __version__,
        "hostnames": list(config.hostnames),
        "addresses": [str(a) for a in config.addresses],
        "network": config.network,
        "listen_port": overlay.port if overlay.tunnel is not None else None,
        "peerapi_port": config.peerapi_port,
        "peers": _peers(node, now),
        "serve": serve_status(node),
        "ports": _ports(node),
        "certificates": _certificates(node, now),
        # the ACME issuer's state (failures, last error, next attempt); None for other sources
        "renewal": node.certificates.status() if hasattr(node.certificates, "status") else None,
        "ingress": {"open": open_ingress_connections(node)},
        "counters": {
            "ingress": dict(node.ingress.counters),
            "serve": dict(node.dispatcher.counters),
            "tls": dict(node.store.counters),
            "overlay": overlay.stats(),
        },
    }


# --- the server ------------------------------------------------------------------------------


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


class LocalAPISite(Site):
    """The local API's routes, without an access log of its own."""

    def __init__(self, node: NodeService, reactor: Any) -> None:
        root = Resource()
        v0 = Resource()
        root.putChild(b"v0", v0)
        v0.putChild(b"serve-status", _JSONResource(lambda: serve_status(node)))
        v0.putChild(b"status", _JSONResource(lambda: status_document(node, reactor.seconds())))
        super().__init__(root, timeout=IDLE_TIMEOUT, reactor=reactor)
        self.displayTracebacks = False

    def log(self, request: web_http.Request) -> None:
        pass


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


def _free_socket_path(path: Path, address: str) -> None:
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
        pass  # nobody listens: a node that did not stop cleanly left it behind
    except TimeoutError:
        raise LocalAPIError(
            f"another funnel-tw node is already running with this state-dir "
            f"(its local API socket {path} is busy)"
        ) from None
    except OSError as e:
        raise LocalAPIError(f"cannot check the existing socket {path}: {e.strerror}") from None
    else:
        raise LocalAPIError(
            f"another funnel-tw node is already running with this state-dir "
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
    """Serves the local API on ``<state-dir>/funnel-tw.sock`` while the node runs."""

    def __init__(self, node: NodeService, reactor: Any = None, path: Path | None = None) -> None:
        if reactor is None:
            reactor = node.reactor
        self.node = node
        self.reactor = reactor
        self.path = path if path is not None else socket_path(node.config.state_dir)
        self.site = LocalAPISite(node, reactor)
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
            _free_socket_path(self.path, where)
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


# --- the client (standard library only, blocking) --------------------------------------------


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


def fetch(path: str | os.PathLike[str], url: str, timeout: float = 10.0) -> Any:
    """GET ``url`` from the node's local API at ``path``; the parsed JSON answer.

    Raises LocalAPIUnavailable with a message for a person when no node answers.
    """
    where = os.fspath(path)
    conn = UnixHTTPConnection(where, timeout)
    try:
        conn.request("GET", url)
        response = conn.getresponse()
        body = response.read()
    except FileNotFoundError:
        raise LocalAPIUnavailable(
            f"the node is not running (no local API socket at {where})"
        ) from None
    except ConnectionRefusedError:
        raise LocalAPIUnavailable(f"the node is not running (nothing listens on {where})") from None
    except PermissionError:
        raise LocalAPIUnavailable(
            f"permission denied on {where}: the socket is 0600, run this as the node's user"
        ) from None
    except TimeoutError:
        raise LocalAPIUnavailable(
            f"the node did not answer on {where} within {timeout:g}s"
        ) from None
    except (OSError, http.client.HTTPException) as e:
        if isinstance(e, OSError) and e.errno == errno.ENOTSOCK:
            raise LocalAPIUnavailable(f"{where} is not a socket") from None
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        raise LocalAPIUnavailable(f"cannot talk to the node on {where}: {reason}") from None
    finally:
        conn.close()
    if response.status != 200:
        raise LocalAPIUnavailable(
            f"the node answered {response.status} {response.reason} for {url}"
        )
    try:
        return json.loads(body)
    except ValueError:
        raise LocalAPIUnavailable(f"the node's answer for {url} is not JSON") from None


# --- the human summary -----------------------------------------------------------------------


def format_age(seconds: float) -> str:
    """``12s``, ``3m05s``, ``2h07m``, ``4d03h``."""
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_bytes(n: int) -> str:
    """As ``wg show`` prints transfer: ``512 B``, ``1.50 KiB``, ``3.20 MiB``."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.2f} {unit}"


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}{'' if n == 1 else 'S'}"


def format_expiry(expires_in: float) -> str:
    """``in 89 days``; under 7 days, in capitals so it is seen."""
    if expires_in <= 0:
        ago = -expires_in
        if ago < 86400:
            return f"EXPIRED {_plural(int(ago // 3600), 'HOUR')} AGO"
        return f"EXPIRED {_plural(int(ago // 86400), 'DAY')} AGO"
    if expires_in < 86400:
        return f"EXPIRES IN {_plural(int(expires_in // 3600), 'HOUR')}"
    days = int(expires_in // 86400)
    if expires_in < _EXPIRY_WARNING:
        return f"EXPIRES IN {_plural(days, 'DAY')}"
    return f"in {days} days"


def _mount_text(handler: dict[str, Any]) -> str:
    if "Proxy" in handler:
        return f"proxy {handler['Proxy']}"
    if "Path" in handler:
        return f"files {handler['Path']}"
    return f"text {json.dumps(handler.get('Text', ''))}"


def _port_text(entry: dict[str, Any]) -> str:
    kind = entry.get("kind", "?")
    if kind in ("tcp-forward", "tls-terminated-tcp"):
        text = f"{kind} -> {entry.get('target')}"
    elif kind == "handler":
        text = f"handler {entry.get('handler')}"
    else:
        text = kind
    if entry.get("proxy_protocol"):
        text += f", PROXY protocol v{entry['proxy_protocol']}"
    return text


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        (indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))).rstrip()
        for r in rows
    ]


_SUMMARY_COUNTERS = ("handshakes", "rx_datagrams", "tcp_connections")


def format_status(doc: dict[str, Any]) -> str:
    """The readable ``funnel-tw status`` summary of a ``/v0/status`` document."""
    lines: list[str] = []
    names = ", ".join(doc.get("hostnames") or []) or "(no hostname)"
    lines.append(f"funnel-tw {doc.get('version', '?')} node {names}")
    udp = doc.get("listen_port")
    lines.append(
        f"  overlay {', '.join(doc.get('addresses') or [])} ({doc.get('network')}), "
        f"WireGuard UDP port {udp if udp is not None else '(not listening)'}, "
        f"peerAPI port {doc.get('peerapi_port')}"
    )

    lines += ["", "peers:"]
    peers = doc.get("peers") or []
    if not peers:
        lines.append("  (none)")
    else:
        rows = []
        for p in peers:
            age = p.get("last_handshake_age")
            rows.append(
                [
                    p["name"],
                    p.get("endpoint") or "(no endpoint)",
                    "handshake " + ("never" if age is None else f"{format_age(age)} ago"),
                    f"rx {format_bytes(p.get('rx_bytes', 0))}",
                    f"tx {format_bytes(p.get('tx_bytes', 0))}",
                    "funnel-ingress" if p.get("funnel_ingress") else "",
                ]
            )
        lines += _table(rows)

    lines += ["", "serve:"]
    ports = doc.get("ports") or []
    if not ports:
        lines.append("  (nothing)")
    else:
        width = max(len(str(e["port"])) for e in ports)
        for e in ports:
            reach = ("funnel" if e.get("funnel") else "tailnet only").ljust(12)
            lines.append(f"  {str(e['port']).ljust(width)}  {reach}  {_port_text(e)}")
            mounts = e.get("mounts") or {}
            if mounts:
                path_width = max(len(p) for p in mounts)
                for path, handler in mounts.items():
                    lines.append(
                        f"  {' ' * width}    {path.ljust(path_width)}  {_mount_text(handler)}"
                    )

    lines += ["", "certificates:"]
    certs = doc.get("certificates") or []
    if not certs:
        lines.append("  (no hostnames)")
    else:
        rows = []
        for c in certs:
            if c.get("not_after") is None:
                rows.append([c["hostname"], "NO CERTIFICATE", ""])
                continue
            until = datetime.datetime.fromisoformat(c["not_after"]).astimezone(datetime.UTC)
            rows.append(
                [
                    c["hostname"],
                    f"expires {until:%Y-%m-%d %H:%M} UTC ({format_expiry(c['expires_in'])})",
                    c.get("source") or "",
                ]
            )
        lines += _table(rows)
    renewal = doc.get("renewal") or {}
    if renewal.get("failures"):
        next_in = renewal.get("next_check_in")
        lines.append(
            f"  RENEWAL FAILING ({_plural(int(renewal['failures']), 'ATTEMPT')}): "
            f"{renewal.get('last_error') or 'unknown error'}"
            + (f"; next try in {next_in:.0f} s" if next_in is not None else "")
        )

    open_ingress = (doc.get("ingress") or {}).get("open")
    lines += ["", "ingress:"]
    lines.append(
        "  open connections: "
        + ("unknown (the kernel owns TCP)" if open_ingress is None else str(open_ingress))
    )

    counters = doc.get("counters") or {}
    shown: list[tuple[str, int]] = []
    for group in ("ingress", "serve", "tls"):
        shown += sorted((counters.get(group) or {}).items())
    overlay = counters.get("overlay") or {}
    shown += [(k, overlay[k]) for k in _SUMMARY_COUNTERS if k in overlay]
    drops = sum(v for k, v in overlay.items() if k.startswith("drop_"))
    shown.append(("overlay_drops", drops))
    lines += ["", "counters:"]
    lines += _table([[k, str(v)] for k, v in shown])
    return "\n".join(lines) + "\n"


__all__ = [
    "SERVE_STATUS_PATH",
    "SOCKET_MODE",
    "SOCKET_NAME",
    "STATUS_PATH",
    "LocalAPIError",
    "LocalAPIService",
    "LocalAPISite",
    "LocalAPIUnavailable",
    "SocketAddress",
    "UnixHTTPConnection",
    "fetch",
    "format_status",
    "serve_status",
    "socket_path",
    "status_document",
]
