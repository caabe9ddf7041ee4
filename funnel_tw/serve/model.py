"""The serve model: node.ini's ``[serve PORT]`` and ``[serve HOST:PORT]`` sections as
Tailscale's ServeConfig.

``tailscale serve status --json`` prints this shape, and so does ``funnel-tw status --json``:

    {"TCP": {"443": {"HTTPS": true}, "8443": {"TCPForward": "127.0.0.1:9443"}, ...},
     "Web": {"node.example.com:443": {"Handlers": {"/": {"Proxy": "http://127.0.0.1:8080"}}},
             "blog.example.com:443": {"Handlers": {"/": {"Proxy": "http://127.0.0.1:2368"}}}},
     "AllowFunnel": {"node.example.com:443": true}}

Funnel ingress for ``host:port`` is admitted only when ``host`` is served on that port (one of
the node's names, or covered by one of its ``*.suffix`` names) and the section serving it there
says ``funnel = yes``.
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
    underscores: bool = False  # proxy: pass request header names with "_" (not in the JSON)
    access: str | None = None  # the [access NAME] guarding it: the mount's own, else the port's

    def to_json(self) -> dict[str, str]:
        if self.proxy is not None:
            out = {"Proxy": self.proxy}
        elif self.path is not None:
            out = {"Path": self.path}
        else:
            out = {"Text": self.text or ""}
        if self.access is not None:
            out["Access"] = self.access  # funnel-tw's, not in Tailscale's model
        return out


@attrs.frozen
class TCPPortHandler:
    https: bool = False
    tcp_forward: str | None = None
    terminate_tls: str | None = None  # the hostname whose certificate ends TLS
    proxy_protocol: int | None = None
    handler: str | None = None  # a plugin (not in Tailscale's model)
    access: str | None = None  # [access NAME] of a non-HTTP port: checked per connection

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
        if self.access is not None and not self.https:
            out["Access"] = self.access
        return out


def mount_handler(target: str, underscores: bool = False, access: str | None = None) -> HTTPHandler:
    """funnel_tw.config has normalised targets: URLs, ``unix:``, ``text:``, absolute paths."""
    if target.startswith("text:"):
        return HTTPHandler(text=target[5:], access=access)
    if target.startswith(("http://", "https://", "https+insecure://", "unix:")):
        return HTTPHandler(proxy=target, underscores=underscores, access=access)
    return HTTPHandler(path=target, access=access)


def _split_key(key: str) -> tuple[str, int]:
    """ "host:port" -> (host, port); a host here is a DNS name, never an IPv6 address."""
    host, _, port = key.rpartition(":")
    return host, int(port)


@attrs.frozen
class ServeConfig:
    """Tailscale's ServeConfig, with funnel-tw's ``[serve HOST:PORT]`` sections.

    A *site* is one "host:port" the node serves: each HOST:PORT section's own, and for each
    [serve PORT] every name of the node that has no section of its own on that port. `sites`
    maps each to its section's key (the port, or "host:port"): the Web and AllowFunnel entries,
    handler selection and plugin handlers all go by it.
    """

    tcp: dict[int, TCPPortHandler]  # [serve PORT]; HTTPS too where only HOST:PORT mounts are
    web: dict[str, dict[str, HTTPHandler]]  # site -> mount path -> handler
    allow_funnel: dict[str, bool]  # site -> True
    hostnames: tuple[str, ...]
    hosts: dict[str, TCPPortHandler] = attrs.field(factory=dict)  # [serve HOST:PORT] by key
    sites: dict[str, int | str] = attrs.field(factory=dict)  # site -> its section's key
    timeouts: dict[str, float] = attrs.field(factory=dict)  # site -> proxy timeout of its mounts
    ports: tuple[int, ...] = ()  # every port with a section, sorted

    @classmethod
    def from_node_config(cls, config: NodeConfig) -> ServeConfig:
        return cls.build(config.serve, config.hostnames)

    @classmethod
    def build(cls, ports: Iterable[ServePort], hostnames: tuple[str, ...]) -> ServeConfig:
        sections = list(ports)
        tcp: dict[int, TCPPortHandler] = {}
        hosts: dict[str, TCPPortHandler] = {}
        web: dict[str, dict[str, HTTPHandler]] = {}
        funnel: dict[str, bool] = {}
        sites: dict[str, int | str] = {}
        timeouts: dict[str, float] = {}
        primary = hostnames[0] if hostnames else None
        own = {f"{p.host}:{p.port}" for p in sections if p.host is not None}
        for port in sections:
            if port.host is None:
                names = [f"{n}:{port.port}" for n in hostnames if f"{n}:{port.port}" not in own]
            else:
                names = [f"{port.host}:{port.port}"]
            for site in names:
                sites[site] = port.key
            handler = _port_handler(port, primary if port.host is None else port.host)
            if port.host is None:
                tcp[port.port] = handler
            else:
                hosts[f"{port.host}:{port.port}"] = handler
            if isinstance(port.handler, HTTPSMounts):
                own_access = dict(port.handler.access)
                mounts = {
                    path: mount_handler(
                        target, path in port.handler.underscores, own_access.get(path, port.access)
                    )
                    for path, target in port.handler.mounts
                }
                for site in names:
                    web[site] = mounts
                    timeouts[site] = port.handler.proxy_timeout
            if port.funnel:
                for site in names:
                    funnel[site] = True
        for port in sections:
            # a port of HOST:PORT mounts only: TLS ends here for any name, the SNI picks the site
            on_port = [h for k, h in hosts.items() if _split_key(k)[1] == port.port]
            if port.port not in tcp and all(h.https for h in on_port):
                tcp[port.port] = TCPPortHandler(https=True)
        every_port = tuple(sorted({p.port for p in sections}))
        return cls(tcp, web, funnel, tuple(hostnames), hosts, sites, timeouts, every_port)

    def site(self, host: str, port: int) -> str | None:
        """The site serving ``host:port``: exactly that name, else the ``*.suffix`` covering it
        (one label, as in TLS). A name of the node is its [serve PORT]'s unless a HOST:PORT
        section names it; None for a name the node does not serve on that port."""
        host = host.lower().rstrip(".")
        exact = f"{host}:{port}"
        if exact in self.sites:
            return exact
        label, dot, rest = host.partition(".")
        wildcard = f"*.{rest}:{port}"
        if label and dot and wildcard in self.sites:
            return wildcard
        return None

    def handler_for(self, host: str, port: int) -> tuple[int | str, TCPPortHandler] | None:
        """The key and handler of the section taking a flow to ``host:port``: the HOST:PORT
        section of its site, else the port's (the node's other names, or a name it does not
        know, as on the tailnet before TLS)."""
        site = self.site(host, port)
        key = self.sites[site] if site is not None else port
        if isinstance(key, str):
            return key, self.hosts[key]
        handler = self.tcp.get(port)
        return None if handler is None else (port, handler)

    def admits_funnel(self, host: str, port: int) -> bool:
        """Tailscale's HasFunnelForTarget, plus a handler must exist for that host:port."""
        site = self.site(host, port)
        return (
            site is not None
            and self.allow_funnel.get(site, False)
            and self.handler_for(host, port) is not None
        )

    def admits_serve(self, port: int) -> bool:
        return port in self.ports

    def mounts_for(self, host: str, port: int) -> dict[str, HTTPHandler] | None:
        site = self.site(host, port)
        return None if site is None else self.web.get(site)

    def to_json(self) -> dict[str, Any]:
        """TCP by port (with "Hosts" where a HOST:PORT section serves otherwise than the port's
        entry says), Web and AllowFunnel by "host:port"."""
        out: dict[str, Any] = {}
        if self.ports:
            out["TCP"] = {str(p): self._tcp_json(p) for p in self.ports}
        if self.web:
            out["Web"] = {
                hp: {"Handlers": {path: h.to_json() for path, h in handlers.items()}}
                for hp, handlers in self.web.items()
            }
        if self.allow_funnel:
            out["AllowFunnel"] = dict(self.allow_funnel)
        return out

    def _tcp_json(self, port: int) -> dict[str, Any]:
        default = self.tcp.get(port)
        entry = default.to_json() if default is not None else {}
        hosts = {
            host: handler.to_json()
            for host, number, handler in (
                (*_split_key(key), handler) for key, handler in self.hosts.items()
            )
            if number == port and handler != default
        }
        if hosts:
            entry["Hosts"] = hosts
        return entry


def _port_handler(port: ServePort, name: str | None) -> TCPPortHandler:
    """The TCP-level handler of one section; `name` is the certificate name ending TLS."""
    match port.handler:
        case HTTPSMounts():
            return TCPPortHandler(https=True)
        case TCPForward(target=target, proxy_protocol=proxy_protocol):
            return TCPPortHandler(
                tcp_forward=target, proxy_protocol=proxy_protocol, access=port.access
            )
        case TLSTerminatedTCP(target=target, proxy_protocol=proxy_protocol):
            # no hostname, no certificate: the TLS bytes are forwarded as they come
            return TCPPortHandler(
                tcp_forward=target,
                terminate_tls=name,
                proxy_protocol=proxy_protocol,
                access=port.access,
            )
        case PluginHandler(name=plugin):
            return TCPPortHandler(handler=plugin, access=port.access)
        case unreachable:
            assert_never(unreachable)


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
