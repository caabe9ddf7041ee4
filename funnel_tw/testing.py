"""The plugin authors' test kit: installed with funnel-tw, needs nothing else.

    make_flow(...)             a Flow with test defaults (any field can be given)
    make_context(...)          a HandlerContext on a Clock, with a temporary state directory
    parse_options(plugin, {})  a plugin's raw options through its schema (and validate), as
                               the node would at load; ValueError listing every error
    run_handler(handler, ...)  an in-memory run of one flow: a StringTransport, no sockets
    plugin_path(test, DIR)     make a plugin source checkout visible to twisted.plugin
    funnel(section)            async context manager: a real relay and node, in this process,
                               on loopback, serving ``section`` (the keys of a [serve PORT])

See docs/plugins.md, "Testing".
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import task
from twisted.internet.interfaces import IHandshakeListener, IProtocol
from twisted.internet.protocol import connectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from . import keys
from .config import load_relay_config
from .config.ini import IniFile
from .config.node import node_config
from .flow import Flow, IIngressHandler
from .plugin.api import HandlerContext, PluginMetrics, Refused
from .plugin.api import make_context as _context
from .serve.plugins import plugin_checker

__all__ = [
    "Funnel",
    "HandlerRun",
    "funnel",
    "make_context",
    "make_flow",
    "parse_options",
    "plugin_path",
    "run_handler",
]

HOSTNAME = "plugin.funnel.test"


def make_flow(
    client: tuple[str, int] = ("203.0.113.5", 51234),
    host: str = HOSTNAME,
    port: int = 10000,
    funnel: bool = True,
    peer: str = "relay",
    **metadata: Any,
) -> Flow:
    """A Flow as the node would build it for a funnel client (``server_name``, ``alpn`` and
    ``id`` may be given as keywords)."""
    return Flow(client, host, port, funnel, peer, **metadata)


def make_context(
    plugin: str = "test",
    port: int = 10000,
    reactor: Any = None,
    state_dir: Path | None = None,
) -> HandlerContext:
    """A context for a unit test: a ``task.Clock`` unless ``reactor`` is given, and a fresh
    temporary state directory unless ``state_dir`` is (the caller removes it)."""
    state = state_dir or Path(tempfile.mkdtemp(prefix="funnel-tw-plugin-test-"))
    return _context(reactor or task.Clock(), plugin, port, state, PluginMetrics(plugin))


def parse_options(plugin: Any, options: Mapping[str, str]) -> dict[str, Any]:
    """``options`` as the node parses them at load (schema, defaults, then ``validate``);
    ValueError with one "KEY: WHY" line per error."""
    folder = Path(tempfile.mkdtemp(prefix="funnel-tw-options-"))
    try:
        ini = folder / "node.ini"
        lines = ["[serve 10000]", f"handler = {plugin.name}"]
        lines += [f"{key} = {value}" for key, value in options.items()]
        ini.write_text("\n".join(lines) + "\n")
        file = IniFile(ini)
        (section,) = file.sections
        parsed = plugin_checker_for(plugin)(section, plugin.name, dict(options))
        if file.errors:
            found = sorted(file.errors, key=lambda e: e[0])  # in the order of the keys given
            raise ValueError("\n".join(_why(text) for _, text in found))
        assert parsed is not None
        return dict(parsed)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _why(error: str) -> str:
    """ "KEY: WHY" (or "WHY") of a "FILE:LINE: [SECTION] KEY: WHY" error line."""
    rest = error[error.index("]") + 1 :]
    return rest.removeprefix(":").strip()


def plugin_checker_for(plugin: Any) -> Any:
    """The node's option check, for this one plugin object (installed or not)."""
    from .config.schema import check_options

    def check(section: Any, name: str, options: Mapping[str, str]) -> Any:
        parsed = check_options(section, name, plugin.schema, options)
        validate = getattr(plugin, "validate", None)
        if parsed is not None and validate is not None:
            try:
                validate(parsed)
            except ValueError as e:
                section.error(None, f"handler {name}: {e}")
                return None
        return parsed

    return check


class HandlerRun:
    """One flow of a handler, in memory: what it wrote, whether it closed, why it refused."""

    def __init__(self, handler: IIngressHandler, flow: Flow | None = None) -> None:
        self.flow = flow or make_flow()
        self.transport: Any = StringTransport()  # type: ignore[no-untyped-call]
        self.refused: str | None = None
        self.protocol: IProtocol | None = None
        try:
            self.protocol = handler.build_protocol(self.flow)
        except Refused as e:
            self.refused = e.reason
            return
        if self.protocol is None:
            self.refused = "refused"
            return
        self.protocol.makeConnection(self.transport)
        listener = IHandshakeListener(self.protocol, None)
        if listener is not None:  # as under the node's TLS, once the handshake is done
            listener.handshakeCompleted()

    def send(self, data: bytes) -> bytes:
        """Feed ``data`` to the protocol; what it wrote since the last call."""
        assert self.protocol is not None, f"the flow was refused: {self.refused}"
        self.protocol.dataReceived(data)
        return self.received()

    def received(self) -> bytes:
        data: bytes = self.transport.value()
        self.transport.clear()
        return data

    @property
    def closed(self) -> bool:
        """Whether the protocol closed (or aborted) its transport."""
        return bool(self.transport.disconnecting or getattr(self.transport, "disconnected", False))

    @property
    def producer(self) -> Any:
        """The producer the protocol registered on its transport, if any."""
        return self.transport.producer

    def lose(self, reason: Failure | None = None) -> None:
        """The client went away."""
        assert self.protocol is not None
        self.protocol.connectionLost(reason or Failure(connectionDone.value))


def run_handler(handler: IIngressHandler, flow: Flow | None = None) -> HandlerRun:
    """Start one in-memory flow of ``handler``."""
    return HandlerRun(handler, flow)


def plugin_path(test: Any, directory: str | os.PathLike[str]) -> None:
    """Make a plugin's source checkout visible, as ``pip install`` would: ``directory`` on
    sys.path and its ``twisted/plugins`` on ``twisted.plugins.__path__``; undone by the
    test's cleanup (``test.addCleanup``)."""
    import twisted.plugins

    root = Path(directory).resolve()
    plugins_dir = root / "twisted" / "plugins"
    cache = plugins_dir / "dropin.cache"
    had_cache = cache.exists()
    saved_path, saved_plugins = list(sys.path), list(twisted.plugins.__path__)
    sys.path.append(str(root))
    twisted.plugins.__path__.append(str(plugins_dir))

    def restore() -> None:
        sys.path[:] = saved_path
        twisted.plugins.__path__[:] = saved_plugins
        if not had_cache:
            cache.unlink(missing_ok=True)

    test.addCleanup(restore)


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@attrs.define
class Funnel:
    """A running relay and node: connect to ``127.0.0.1:port`` as an internet client would,
    with TLS for ``hostname`` verified against ``ca_file`` (see :meth:`tls_context`)."""

    relay: Any
    node: Any
    port: int
    hostname: str
    ca_file: str
    folder: Path

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    def connect(self, tls: bool = True, timeout: float = 10.0) -> Any:
        """A blocking client socket (TLS with SNI when ``tls``): use it from a thread
        (``twisted.internet.threads.deferToThread``) so the reactor keeps serving."""
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        if not tls:
            return raw
        return self.tls_context().wrap_socket(raw, server_hostname=self.hostname)

    def plugin_status(self) -> dict[str, Any]:
        """What ``funnel-tw status`` shows for the plugin: counters, gauges, refusals."""
        result: dict[str, Any] = self.node.plugin_status()
        entry: dict[str, Any] = result.get(str(self.port), {})
        return entry

    def open_flows(self) -> int:
        """The node's open ingress connections (the relay's streams it still holds)."""
        from .node.status.document import open_ingress_connections

        return open_ingress_connections(self.node) or 0


def write_configs(
    folder: Path, section: str, public: int, node_options: str = ""
) -> tuple[Path, Path]:
    relay_key, node_key = keys.generate_private_key(), keys.generate_private_key()
    for name, key in (("relay.key", relay_key), ("node.key", node_key)):
        path = folder / name
        path.write_text(keys.encode_key(key) + "\n")
        path.chmod(0o600)
    relay_wg = _free_port(socket.SOCK_DGRAM)
    (folder / "relay.ini").write_text(
        f"[relay]\nprivate-key-file = relay.key\nlisten-port = {relay_wg}\n"
        "address = 100.64.0.1/32\npublic-address = 127.0.0.1\n"
        f"public-ports = {public}\n\n[node test]\n"
        f"public-key = {keys.encode_key(keys.public_key(node_key))}\n"
        f"allowed-ips = 100.64.0.2/32\nhostnames = {HOSTNAME}\npeerapi = 100.64.0.2:41642\n"
    )
    (folder / "node.ini").write_text(
        "[node]\nprivate-key-file = node.key\nlisten-port = 0\naddress = 100.64.0.2/32\n"
        f"hostname = {HOSTNAME}\npeerapi-port = 41642\nstate-dir = state\n"
        f"{node_options.strip()}\n\n[peer relay]\n"
        f"public-key = {keys.encode_key(keys.public_key(relay_key))}\n"
        f"endpoint = 127.0.0.1:{relay_wg}\nallowed-ips = 100.64.0.1/32\n"
        "persistent-keepalive = 25\nfunnel-ingress = yes\n\n[tls]\nsource = self-signed\n\n"
        f"[serve {public}]\nfunnel = yes\n{section.strip()}\n"
    )
    return folder / "relay.ini", folder / "node.ini"


@contextlib.asynccontextmanager
async def funnel(
    section: str, reactor: Any = None, node_options: str = ""
) -> AsyncIterator[Funnel]:
    """A relay and a node on loopback in this process, the node serving ``section`` (the
    keys of one ``[serve PORT]``, e.g. ``"handler = echo\\ngreeting = hi"``) on a free public
    port with funnel on; both are stopped and their files removed on exit. The plugin must be
    visible to twisted.plugin (installed, or :func:`plugin_path`). ``node_options``: more
    ``[node]`` keys (``"metrics-listen = 127.0.0.1:9100"``). Use from an ``async def`` trial
    test; the node.ini is ``folder / "node.ini"`` (for ``funnel-tw status --config``)."""
    from .node.service import NodeService
    from .relay.service import RelayService

    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    folder = Path(tempfile.mkdtemp(prefix="funnel-tw-testing-"))
    relay = node = None
    try:
        public = _free_port(socket.SOCK_STREAM)
        relay_ini, node_ini = write_configs(folder, section, public, node_options)
        config = node_config(IniFile(node_ini), plugin_checker())  # option errors: ConfigError
        relay = RelayService(load_relay_config(relay_ini), reactor)
        node = NodeService(config, reactor)
        relay.startService()
        node.startService()
        for _ in range(100):  # the first WireGuard handshake takes a moment
            if relay.overlay.device.handshakes_completed:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        else:
            raise TimeoutError("no WireGuard handshake between the test relay and node")
        ca = str(config.state_dir / "tls" / "ca.pem")
        yield Funnel(relay, node, public, HOSTNAME, ca, folder)
    finally:
        if node is not None and node.running:
            await node.stopService()
        if relay is not None and relay.running:
            await relay.stopService()
        shutil.rmtree(folder, ignore_errors=True)
