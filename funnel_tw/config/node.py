"""The node.ini schema: [node], [peer NAME], [tls] and [serve PORT] / [serve HOST:PORT] into a
NodeConfig, with the warnings the file alone shows."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import attrs

from funnel_tw.keys import decode_key

from . import values
from .access import ACCESS, access_policy, check_port_access
from .enrolled import NODE_ENROLLMENT, Enrollment, read_enrollment
from .ini import IniFile, Section, group_sections
from .interface import TCP_KEYS, check_peers, tcp_buffers, wireguard_keys
from .model import (
    DEFAULT_PROXY_TIMEOUT,
    AccessPolicy,
    ClientLimits,
    HTTPSMounts,
    InspectConfig,
    NodeConfig,
    PeerConfig,
    PluginHandler,
    PortHandler,
    ServePort,
    TCPForward,
    TLSConfig,
    TLSTerminatedTCP,
)
from .ops import OPS_KEYS, ops_config

__all__ = ["load_node_config", "node_config"]

INSPECT_KEYS = (
    "inspect-listen",
    "inspect-mounts",
    "inspect-keep",
    "inspect-body-limit",
    "inspect-show-secrets",
)


_NODE_KEYS = (
    "private-key",
    "private-key-file",
    "listen-port",
    "address",
    "hostname",
    "peerapi-port",
    "mtu",
    "network",
    "state-dir",
    *TCP_KEYS,
    *OPS_KEYS,
    "tls-handshake-timeout",
    "http-head-timeout",
    "http-body-timeout",
    "http-body-min-rate",
    *INSPECT_KEYS,
)
_PEER_KEYS = (
    "public-key",
    "endpoint",
    "allowed-ips",
    "persistent-keepalive",
    "funnel-ingress",
    "tcp-fallback",
    "preshared-key",
    "preshared-key-file",
)
_TLS_KEYS = (
    "source",
    "cert-file",
    "key-file",
    "acme-directory",
    "acme-email",
    "acme-challenge",
    "acme-dns-hook",
    "acme-dns-plugin",
    "acme-ca-file",
)
_TLS_KEY_SOURCE = {
    "cert-file": "files",
    "key-file": "files",
    "acme-directory": "acme",
    "acme-email": "acme",
    "acme-challenge": "acme",
    "acme-dns-hook": "acme",
    "acme-dns-plugin": "acme",
    "acme-ca-file": "acme",
}
_SERVE_KEYS = (
    "funnel",
    "tcp-forward",
    "tls-terminated-tcp",
    "proxy-protocol",
    "handler",
    "proxy-timeout",
    "underscores-in-headers",
    ACCESS,
)
_SERVE_CHOICES = ("tcp-forward", "tls-terminated-tcp", "handler")


PluginCheck = Callable[[Section, str, Mapping[str, str]], "Mapping[str, Any] | None"]
"""Checks a ``handler = NAME`` section's options (serve/plugins.py gives one): records each
error on the section at its line, returns the parsed options (None when wrong, or unchecked)."""


def load_node_config(
    path: str | os.PathLike[str], plugins: PluginCheck | None = None
) -> NodeConfig:
    """Read node.ini; raise ConfigError listing every problem found (with ``plugins``, the
    handler plugins' option errors too, each at its line)."""
    return node_config(IniFile(path), plugins)


def node_config(file: IniFile, plugins: PluginCheck | None = None) -> NodeConfig:
    """The NodeConfig of a file already read; ConfigError listing every problem found."""
    groups = group_sections(
        file,
        singles=("node", "tls"),
        named=("peer", "serve", "access"),
        required="node",
        own_names=("serve",),
    )
    enrollment = _enrollment(groups["node"][0]) if groups["node"] else None
    node = _node(groups["node"][0], enrollment) if groups["node"] else None
    peers = [_peer(section) for section in groups["peer"]]
    if enrollment is not None:
        _check_joined(groups["peer"], peers, enrollment)
    if node is not None:
        check_peers(
            [
                (s, p.public_key, p.allowed_ips)
                for s, p in zip(groups["peer"], peers, strict=True)
                if p
            ],
            node.private_key,
        )
    tls = _tls(groups["tls"][0]) if groups["tls"] else TLSConfig(source="self-signed")
    policies = {section.name: access_policy(section) for section in groups["access"]}
    serve = [
        _serve(
            section,
            node.peerapi_port if node else None,
            node.hostnames if node else None,
            policies,
            plugins,
        )
        for section in groups["serve"]
    ]
    serving = [
        (section, port) for section, port in zip(groups["serve"], serve, strict=True) if port
    ]
    _check_one_section_per_key(serving)
    inspect = _inspect(groups["node"][0], [port for _, port in serving]) if groups["node"] else None
    file.check()
    assert node is not None and tls is not None  # else an error was recorded
    _warn(groups["peer"], [p for p in peers if p], serving, enrollment)
    joined = (enrollment.relay,) if enrollment is not None else ()
    return attrs.evolve(
        node,
        inspect=inspect,
        peers=(*(p for p in peers if p), *joined),
        tls=tls,
        serve=tuple(s for s in serve if s),
        warnings=file.warnings,
        access=tuple(p for p in policies.values() if p),
    )


def _check_one_section_per_key(serving: list[tuple[Section, ServePort]]) -> None:
    """[serve Blog.example.com:443] after [serve blog.example.com:443] is the same host:port."""
    first: dict[int | str, Section] = {}
    for section, port in serving:
        seen = first.setdefault(port.key, section)
        if seen is not section:
            what = "port" if port.host is None else "host:port"
            section.error(None, f"same {what} as [{seen.header}] (line {seen.line()})")


def _enrollment(section: Section) -> Enrollment | None:
    """The relay this node joined (state-dir/enrollment.json), if it did."""
    state_dir = section.opt("state-dir", section.path, section.path("state"))
    path = state_dir / NODE_ENROLLMENT
    try:
        return read_enrollment(path)
    except ValueError as e:
        section.error("state-dir", f"{path}: {e} (written by funnel-tw join: join again)")
        return None


def _check_joined(
    sections: list[Section], peers: list[PeerConfig | None], enrollment: Enrollment
) -> None:
    """A [peer] for the relay joined by token would be that relay twice."""
    relay = enrollment.relay
    for section, peer in zip(sections, peers, strict=True):
        if section.name == relay.name:
            section.error(None, "same name as the relay joined by token (state-dir)")
        elif peer is not None and peer.public_key == relay.public_key:
            section.error("public-key", "is the relay joined by token: remove this section")


def _warn(
    peer_sections: list[Section],
    peers: list[PeerConfig],
    serving: list[tuple[Section, ServePort]],
    enrollment: Enrollment | None = None,
) -> None:
    """What the file alone shows will not work as it seems to say: warnings, not errors."""
    ingress = [p for p in peers if p.funnel_ingress]
    if not ingress and enrollment is None:
        for section, port in serving:
            if port.funnel:
                section.warn(
                    "funnel",
                    "no [peer] has funnel-ingress = yes, so no relay can bring internet"
                    " clients to it",
                )
    by_name = {s.name: s for s in peer_sections}
    for peer in ingress:
        if peer.persistent_keepalive == 0 and peer.endpoint is None:
            by_name[peer.name].warn(
                None,
                "funnel-ingress peer without persistent-keepalive, and no endpoint to reach it:"
                " a node behind NAT is unreachable for it (add persistent-keepalive = 25)",
            )


def _inspect(section: Section, serving: list[ServePort]) -> InspectConfig | None:
    """``inspect-*`` of [node]: the request inspector, off unless inspect-listen is set.

    Bound elsewhere than loopback it is a warning, not an error: whoever reaches that address
    reads every captured request and can replay it."""
    listen = section.opt("inspect-listen", _inspect_address, None)
    if listen is None:
        for key in INSPECT_KEYS[1:]:
            if key in section.values:
                section.error(key, "is only used with inspect-listen")
        return None
    if not ip_address(listen[0]).is_loopback:
        section.warn(
            "inspect-listen",
            f"{listen[0]} is not a loopback address: whoever reaches it reads the captured"
            " requests (bodies and all) and can replay them",
        )
    mounts = section.opt("inspect-mounts", _mount_list, ())
    known = {
        path
        for port in serving
        if isinstance(port.handler, HTTPSMounts)
        for path, _ in port.handler.mounts
    }
    for path in mounts:
        if path not in known:
            listed = ", ".join(sorted(known)) or "none"
            section.error("inspect-mounts", f"{path} is not a mount of any [serve] ({listed})")
    return InspectConfig(
        listen=listen,
        mounts=mounts,
        keep=section.opt(
            "inspect-keep", lambda v: values.integer(v, 1, 100_000, "number of requests"), 500
        ),
        body_limit=section.opt("inspect-body-limit", lambda v: values.size(v, 0, 16 << 20), 65536),
        show_secrets=section.opt("inspect-show-secrets", values.boolean, False),
    )


def _inspect_address(value: str) -> tuple[str, int]:
    """``IP:PORT``, ``[IPV6]:PORT``, or a bare ``PORT`` on loopback (127.0.0.1)."""
    if value.isdigit():
        return "127.0.0.1", values.integer(value, 0, 65535, "port number")
    name, number = values.split_host_port(value)
    try:
        address = ip_address(name)
    except ValueError:
        raise ValueError(f"{name!r} is not an IP address (127.0.0.1: this host only)") from None
    return str(address), values.integer(number, 0, 65535, "port number")


def _mount_list(value: str) -> tuple[str, ...]:
    paths = tuple(p.strip() for p in value.split(",") if p.strip())
    if not paths:
        raise ValueError("names no mount (a comma list of mount paths, such as /hooks/)")
    for path in paths:
        if not values.MOUNT_PATH.match(path):
            raise ValueError(f"{path!r}: a mount path starts with '/' and has no spaces")
    return paths


def _node(section: Section, enrollment: Enrollment | None = None) -> NodeConfig | None:
    section.reject_unknown(_NODE_KEYS)
    wireguard = wireguard_keys(section, enrollment.addresses if enrollment else None)
    # a joined node serves the names the relay granted, unless hostname says otherwise
    granted = enrollment.hostnames if enrollment else ()
    hostnames = section.opt("hostname", values.hostnames, granted)
    if enrollment is not None and "hostname" in section.values:
        others = [h for h in hostnames if not _covers(granted, h)]
        if others:
            section.warn(
                "hostname",
                f"{', '.join(others)} not granted by the relay joined by token (it grants "
                f"{', '.join(granted)}): that relay will not route it",
            )
    peerapi_port = section.opt("peerapi-port", values.port, 41642)
    network = section.opt("network", values.choice("userspace", "tun"), "userspace")
    state_dir = section.opt("state-dir", section.path, section.path("state"))
    tcp = tcp_buffers(section, userspace=network == "userspace")
    ops = ops_config(section)
    limits = ClientLimits(
        tls_handshake_timeout=section.opt("tls-handshake-timeout", values.seconds, 10.0),
        http_head_timeout=section.opt("http-head-timeout", values.seconds, 10.0),
        http_body_timeout=section.opt("http-body-timeout", values.seconds, 30.0),
        http_body_min_rate=section.opt(
            "http-body-min-rate",
            lambda v: values.integer(v, 0, 1 << 30, "whole number (bytes a second)"),
            500,
        ),
    )
    if wireguard is None:
        return None
    return NodeConfig(
        path=section.file.path,
        private_key=wireguard.private_key,
        listen_port=wireguard.listen_port,
        addresses=wireguard.addresses,
        hostnames=hostnames,
        peerapi_port=peerapi_port,
        mtu=wireguard.mtu,
        network=network,
        state_dir=state_dir,
        peers=(),
        tls=TLSConfig(source="self-signed"),
        serve=(),
        ops=ops,
        limits=limits,
        enrollment=state_dir / NODE_ENROLLMENT if enrollment else None,
        tcp=tcp,
    )


def _peer(section: Section) -> PeerConfig | None:
    section.reject_unknown(_PEER_KEYS)
    key = section.req("public-key", decode_key)
    endpoint = section.opt("endpoint", values.endpoint, None)
    allowed_ips = section.req("allowed-ips", values.networks)
    keepalive = section.opt("persistent-keepalive", values.keepalive, 0)
    funnel_ingress = section.opt("funnel-ingress", values.boolean, False)
    preshared_key = section.secret("preshared-key", required=False)
    fallback = section.opt("tcp-fallback", _fallback_target, "auto")
    if fallback == "auto":  # a relay's public HTTPS port, where it takes the fallback
        fallback = (endpoint[0], 443) if funnel_ingress and endpoint is not None else None
    elif fallback is not None and endpoint is None:
        section.error("tcp-fallback", "needs an endpoint: the fallback is for a peer we dial")
    if key is None or allowed_ips is None:
        return None
    return PeerConfig(
        name=section.name,
        public_key=key,
        endpoint=endpoint,
        allowed_ips=allowed_ips,
        persistent_keepalive=keepalive,
        funnel_ingress=funnel_ingress,
        preshared_key=preshared_key,
        tcp_fallback=fallback if isinstance(fallback, tuple) else None,
    )


def _fallback_target(value: str) -> tuple[str, int] | str | None:
    """``auto`` (the endpoint's host, port 443, for funnel-ingress peers), ``off`` or HOST:PORT."""
    if value == "auto":
        return "auto"
    if value == "off":
        return None
    return values.endpoint(value)


def _tls(section: Section) -> TLSConfig | None:
    section.reject_unknown(_TLS_KEYS)
    errors = len(section.file.errors)
    source = section.opt("source", values.choice("self-signed", "files", "acme"), "self-signed")
    if len(section.file.errors) > errors:
        return None
    for name, needs in _TLS_KEY_SOURCE.items():
        if name in section.values and source != needs:
            section.error(name, f"is only used with source = {needs}")
    if source == "files":
        cert = section.req("cert-file", lambda v: values.existing_file(section.path(v)))
        key = section.req("key-file", lambda v: values.existing_file(section.path(v), secret=True))
        return TLSConfig(source=source, cert_file=cert, key_file=key)
    if source == "acme":
        return _acme(section)
    return TLSConfig(source=source)


def _acme(section: Section) -> TLSConfig:
    directory = section.req("acme-directory", lambda v: values.url(v, ("https", "http")))
    email = section.opt("acme-email", values.email, None)
    challenge = section.opt("acme-challenge", values.choice("tls-alpn-01", "dns-01"), "tls-alpn-01")
    hook: Path | None = None
    plugin: str | None = None
    if challenge == "dns-01" and "acme-dns-plugin" in section.values:
        plugin = section.opt("acme-dns-plugin", values.plugin_name, None)
        if "acme-dns-hook" in section.values:
            section.error("acme-dns-hook", "cannot be combined with acme-dns-plugin")
    elif challenge == "dns-01":
        hook = section.req("acme-dns-hook", lambda v: values.executable(section.path(v)))
    else:
        for option in ("acme-dns-hook", "acme-dns-plugin"):
            if option in section.values:
                section.error(option, "is only used with acme-challenge = dns-01")
    ca_file = section.opt("acme-ca-file", lambda v: values.existing_file(section.path(v)), None)
    return TLSConfig(
        source="acme",
        acme_directory=directory,
        acme_email=email,
        acme_challenge=challenge,
        acme_dns_hook=hook,
        acme_dns_plugin=plugin,
        acme_ca_file=ca_file,
    )


def _serve_name(
    section: Section, hostnames: tuple[str, ...] | None
) -> tuple[str | None, int] | None:
    """The HOST (None for every name) and PORT of [serve PORT] or [serve HOST:PORT]."""
    host, colon, number = section.name.rpartition(":")
    expected = "[serve HOST:PORT]" if colon else "[serve PORT]"
    if not section.name:
        expected = "[serve PORT] or [serve HOST:PORT]"
    try:
        if not number:
            raise ValueError("needs a port")
        port = values.port(number)
        if str(port) != number:
            raise ValueError(f"{number!r} is not a plain port number")
        name = values.hostname(host) if colon else None
    except ValueError as e:
        section.error(None, f"{e} (expected {expected})")
        return None
    if name is not None and hostnames is not None and not _covers(hostnames, name):
        listed = ", ".join(hostnames) or "none"
        section.error(None, f"{name} is not covered by the node's hostname ({listed})")
    return name, port


def _covers(hostnames: tuple[str, ...], host: str) -> bool:
    """One of the node's names is `host`, or a ``*.suffix`` covering it (one label, as in TLS)."""
    if host in hostnames:
        return True
    label, dot, rest = host.partition(".")
    return label != "*" and bool(label and dot) and f"*.{rest}" in hostnames


UNDERSCORES = "underscores-in-headers"


def _per_mount_keys(section: Section) -> list[str]:
    """``underscores-in-headers /PATH`` and ``access /PATH`` keys: options for one mount."""
    per_mount = (UNDERSCORES, ACCESS)
    return [k for k in section.values if k.partition(" ")[0] in per_mount and " " in k]


def _underscores(section: Section, mount_keys: list[str]) -> frozenset[str]:
    """``underscores-in-headers = yes`` (every mount) or ``underscores-in-headers /PATH = yes``:
    the mounts whose backends get header names containing "_" (dropped by default)."""
    allowed: set[str] = set()
    for key in [k for k in section.values if k.partition(" ")[0] == UNDERSCORES]:
        path = key.partition(" ")[2].strip()
        if not mount_keys:
            section.error(key, "is only used with /PATH = TARGET mounts")
            continue
        if path and path not in mount_keys:
            section.error(key, f"{path} is not a mount of this section")
            continue
        if section.opt(key, values.boolean, False):
            allowed.update([path] if path else mount_keys)
    return frozenset(allowed)


def _serve(
    section: Section,
    peerapi_port: int | None,
    hostnames: tuple[str, ...] | None,
    policies: dict[str, AccessPolicy | None] | None = None,
    plugins: PluginCheck | None = None,
) -> ServePort | None:
    """[serve PORT] / [serve HOST:PORT]: what it serves is decided by its keys, exactly one of
    the PortHandlers."""
    name = _serve_name(section, hostnames)
    if name is None:
        return None
    host, port = name
    if port == peerapi_port:
        section.error(None, f"port {port} is the peerapi-port")
    mount_keys = [key for key in section.values if key.startswith("/")]
    # What the section serves, keyed by the first key that says so, in file order.
    chosen = {key: key for key in section.values if key in _SERVE_CHOICES}
    if mount_keys:
        chosen[mount_keys[0]] = "mounts"
    if not chosen:
        section.error(None, f"needs one of: /PATH = TARGET mounts, {', '.join(_SERVE_CHOICES)}")
        return None
    if len(chosen) > 1:
        (_, first), (second_key, _) = sorted(chosen.items(), key=lambda kv: section.line(kv[0]))[:2]
        section.error(second_key, f"cannot be combined with {first}: use one per [serve PORT]")
        return None
    (kind,) = chosen.values()
    # The other keys are checked even when the one that picks the kind is wrong: all errors show.
    plugin = section.opt("handler", values.plugin_name, None)
    parsed: Mapping[str, Any] | None = None
    if kind == "handler":
        options = tuple(
            (k, v)
            for k, v in section.values.items()
            if k not in _SERVE_KEYS and k.partition(" ")[0] != ACCESS
        )
        if plugin is not None and plugins is not None:
            parsed = plugins(section, plugin, dict(options))
    else:
        section.reject_unknown([*_SERVE_KEYS, *mount_keys, *_per_mount_keys(section)])
        options = ()
    forwards = kind in ("tcp-forward", "tls-terminated-tcp")
    target = section.opt(kind, values.forward, None) if forwards else None
    proxy_protocol = None
    if "proxy-protocol" in section.values:
        if forwards:
            proxy_protocol = section.opt("proxy-protocol", values.proxy_protocol, None)
        else:
            section.error("proxy-protocol", "is only used with tcp-forward or tls-terminated-tcp")
    proxy_timeout = DEFAULT_PROXY_TIMEOUT
    if "proxy-timeout" in section.values:
        if mount_keys:
            proxy_timeout = section.opt("proxy-timeout", values.seconds, DEFAULT_PROXY_TIMEOUT)
        else:
            section.error("proxy-timeout", "is only used with /PATH = URL mounts")
    underscores = _underscores(section, mount_keys)
    mounts = []
    for key in mount_keys:
        try:
            if not values.MOUNT_PATH.match(key):
                raise ValueError("a mount path starts with '/' and has no spaces")
            mounts.append((key, values.mount_target(section.values[key], section.file.base)))
        except ValueError as e:
            section.error(key, str(e))
    funnel = section.opt("funnel", values.boolean, False)
    access, mount_access = check_port_access(section, kind, policies or {})
    handler: PortHandler
    if kind == "mounts":
        handler = HTTPSMounts(tuple(mounts), proxy_timeout, underscores, mount_access)
    elif target is not None and kind == "tcp-forward":
        handler = TCPForward(target, proxy_protocol)
    elif target is not None and kind == "tls-terminated-tcp":
        handler = TLSTerminatedTCP(target, proxy_protocol)
    elif plugin is not None:
        handler = PluginHandler(plugin, options, parsed, section.line())
    else:
        return None  # the bad value is recorded: the file fails
    return ServePort(port=port, funnel=funnel, handler=handler, host=host, access=access)
