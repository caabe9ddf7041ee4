"""The serve model: node.ini's ``[serve PORT]`` sections as Tailscale's ServeConfig.

``tailscale serve status --json`` prints this shape, and so does ``funnel-tw status --json``:

    {"TCP": {"443": {"HTTPS": true}, "8443": {"TCPForward": "127.0.0.1:9443"}, ...},
     "Web": {"node.example.com:443": {"Handlers": {"/": {"Proxy": "http://127.0.0.1:8080"}}}},
     "AllowFunnel": {"node.example.com:443": true}}

Funnel ingress for ``host:port`` is admitted only when ``host`` is exactly one of the node's
hostnames and the port's section says ``funnel = yes``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from typing import Any, assert_never

import attrs

from ..config import (
    HTTPSMounts,
    NodeConfig,
    PluginHandler,
    ServePort,
    TCPForward,
    TLSTerminatedTCP,
)


@attrs.frozen
class HTTPHandler:
    """One mount: exactly one of proxy, path, text."""

    proxy: str | None = None
    path: str | None = None
    text: str | None = None

    def to_json(self) -> dict[str, str]:
        if self.proxy is not None:
            return {"Proxy": self.proxy}
        if self.path is not None:
            return {"Path": self.path}
        return {"Text": self.text or ""}


@attrs.frozen
class TCPPortHandler:
    https: bool = False
    tcp_forward: str | None = None
    terminate_tls: str | None = None  # the hostname whose certificate ends TLS
    proxy_protocol: int | None = None
    handler: str | None = None  # a plugin (not in Tailscale's model)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.https:
            out["HTTPS"] = True
        if self.tcp_forward is not None:
            out["TCPForward"] = self.tcp_forward
        if self.terminate_tls is not None:
            out["TerminateTLS"] = self.terminate_tls
        if self.proxy_protocol:
            out["ProxyProtocol"] = self.proxy_protocol
        if self.handler is not None:
            out["Handler"] = self.handler
        return out


def mount_handler(target: str) -> HTTPHandler:
    """funnel_tw.config has normalised targets: URLs, ``unix:``, ``text:``, absolute paths."""
    if target.startswith("text:"):
        return HTTPHandler(text=target[5:])
    if target.startswith(("http://", "https://", "https+insecure://", "unix:")):
        return HTTPHandler(proxy=target)
    return HTTPHandler(path=target)


@attrs.frozen
class ServeConfig:
    tcp: dict[int, TCPPortHandler]
    web: dict[str, dict[str, HTTPHandler]]  # "host:port" -> mount path -> handler
    allow_funnel: dict[str, bool]
    hostnames: tuple[str, ...]

    @classmethod
    def from_node_config(cls, config: NodeConfig) -> ServeConfig:
        return cls.build(config.serve, config.hostnames)

    @classmethod
    def build(cls, ports: Iterable[ServePort], hostnames: tuple[str, ...]) -> ServeConfig:
        tcp: dict[int, TCPPortHandler] = {}
        web: dict[str, dict[str, HTTPHandler]] = {}
        funnel: dict[str, bool] = {}
        primary = hostnames[0] if hostnames else None
        for port in ports:
            match port.handler:
                case HTTPSMounts(mounts=mounts):
                    tcp[port.port] = TCPPortHandler(https=True)
                    handlers = {path: mount_handler(target) for path, target in mounts}
                    for name in hostnames:
                        web[f"{name}:{port.port}"] = handlers
                case TCPForward(target=target, proxy_protocol=proxy_protocol):
                    tcp[port.port] = TCPPortHandler(
                        tcp_forward=target, proxy_protocol=proxy_protocol
                    )
                case TLSTerminatedTCP(target=target, proxy_protocol=proxy_protocol):
                    # no hostname, no certificate: the TLS bytes are forwarded as they come
                    tcp[port.port] = TCPPortHandler(
                        tcp_forward=target, terminate_tls=primary, proxy_protocol=proxy_protocol
                    )
                case PluginHandler(name=name):
                    tcp[port.port] = TCPPortHandler(handler=name)
                case unreachable:
                    assert_never(unreachable)
            if port.funnel:
                for name in hostnames:
                    funnel[f"{name}:{port.port}"] = True
        return cls(tcp, web, funnel, tuple(hostnames))

    def site_name(self, host: str) -> str | None:
        """The configured hostname serving ``host``: itself, or a ``*.suffix`` covering it."""
        host = host.lower().rstrip(".")
        if host in self.hostnames:
            return host
        label, dot, rest = host.partition(".")
        if label and dot and f"*.{rest}" in self.hostnames:
            return f"*.{rest}"
        return None

    def admits_funnel(self, host: str, port: int) -> bool:
        """Tailscale's HasFunnelForTarget, plus a handler must exist for the port."""
        name = self.site_name(host)
        return (
            name is not None
            and self.allow_funnel.get(f"{name}:{port}", False)
            and (port in self.tcp)
        )

    def admits_serve(self, port: int) -> bool:
        return port in self.tcp

    def mounts_for(self, host: str, port: int) -> dict[str, HTTPHandler] | None:
        name = self.site_name(host)
        return None if name is None else self.web.get(f"{name}:{port}")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.tcp:
            out["TCP"] = {str(p): h.to_json() for p, h in sorted(self.tcp.items())}
        if self.web:
            out["Web"] = {
                hp: {"Handlers": {path: h.to_json() for path, h in handlers.items()}}
                for hp, handlers in self.web.items()
            }
        if self.allow_funnel:
            out["AllowFunnel"] = dict(self.allow_funnel)
        return out


def _clean(path: str) -> str:
    """Go's path.Clean for an absolute URL path."""
    cleaned = posixpath.normpath("/" + path.lstrip("/"))
    return "/" + cleaned.lstrip("/")


def match_mount(mounts: dict[str, HTTPHandler], path: str) -> tuple[str, HTTPHandler] | None:
    """Tailscale's lookup: the exact path, then from the cleaned path upwards ``p/`` then ``p``."""
    if path in mounts:
        return path, mounts[path]
    current = _clean(path)
    while True:
        for key in (current + "/", current):
            if key in mounts:
                return key, mounts[key]
        if current == "/":
            return None
        current = posixpath.dirname(current)
