"""node.ini and relay.ini -> frozen attrs objects, or one ConfigError listing every problem.

The files are read with configparser. configparser knows no line numbers, so a small scan that
follows its grammar (see `_scan`) maps each section and key to the line it was written on; every
error reads "FILE:LINE: [SECTION] KEY: WHY" and the whole file is checked before failing, so
`funnel-tw check-config` can show all problems at once. Nothing here touches the network.
"""

from __future__ import annotations

import configparser
import difflib
import os
import re
import stat
import sys
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
    ip_interface,
    ip_network,
)
from pathlib import Path
from typing import NoReturn, TypeVar

import attrs

from funnel_tw.keys import decode_key, public_key

__all__ = [
    "ConfigError",
    "NodeConfig",
    "PeerConfig",
    "RelayConfig",
    "RelayNode",
    "ServePort",
    "TLSConfig",
    "load_config",
    "load_node_config",
    "load_relay_config",
]

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
IPInterface = IPv4Interface | IPv6Interface

T = TypeVar("T")
D = TypeVar("D")

MAX_FILE_SIZE = 1 << 20
"""A config file larger than this is refused unread: hostile input gets bounded memory."""


class ConfigError(Exception):
    """Everything wrong with one config file; `errors` holds one "FILE:LINE: ..." line each."""

    def __init__(self, errors: str | Sequence[str]) -> None:
        self.errors: list[str] = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


def format_error(file: str, line: int, section: str | None, key: str | None, why: str) -> str:
    """The one error format, "FILE:LINE: [SECTION] KEY: WHY", less the parts that do not apply."""
    where = f"{file}:{line}:"
    if section is not None:
        where += f" [{section}]" if key is None else f" [{section}] {key}"
        where += ":"
    return f"{where} {why}"


# ---------------------------------------------------------------------------------------------
# The objects


@attrs.frozen
class PeerConfig:
    """A WireGuard peer of the node ([peer NAME] in node.ini)."""

    name: str
    public_key: bytes
    endpoint: tuple[str, int] | None
    allowed_ips: tuple[IPNetwork, ...]
    persistent_keepalive: int
    funnel_ingress: bool
    preshared_key: bytes | None


@attrs.frozen
class TLSConfig:
    """Where the node's certificates come from ([tls] in node.ini)."""

    source: str
    cert_file: Path | None = None
    key_file: Path | None = None
    acme_directory: str | None = None
    acme_email: str | None = None
    acme_challenge: str = "tls-alpn-01"
    acme_dns_hook: Path | None = None
    acme_dns_plugin: str | None = None  # a DNS provider plugin instead of a hook
    acme_ca_file: Path | None = None


@attrs.frozen
class ServePort:
    """One TCP port of the node ([serve PORT]): exactly one of mounts, a forward, or a handler."""

    port: int
    funnel: bool
    mounts: tuple[tuple[str, str], ...]
    tcp_forward: str | None
    tls_terminated_tcp: str | None
    proxy_protocol: int | None
    handler: str | None
    options: tuple[tuple[str, str], ...]
    proxy_timeout: float = 60.0  # seconds a proxied backend has to start answering (504)


@attrs.frozen
class NodeConfig:
    """A parsed node.ini."""

    path: Path
    private_key: bytes
    listen_port: int
    addresses: tuple[IPInterface, ...]
    hostnames: tuple[str, ...]
    peerapi_port: int
    mtu: int
    network: str
    state_dir: Path
    peers: tuple[PeerConfig, ...]
    tls: TLSConfig
    serve: tuple[ServePort, ...]


@attrs.frozen
class RelayNode:
    """A node the relay forwards to ([node NAME] in relay.ini)."""

    name: str
    public_key: bytes
    allowed_ips: tuple[IPNetwork, ...]
    hostnames: tuple[str, ...]
    peerapi: tuple[IPAddress, int]
    endpoint: tuple[str, int] | None
    persistent_keepalive: int
    preshared_key: bytes | None


@attrs.frozen
class RelayConfig:
    """A parsed relay.ini."""

    path: Path
    private_key: bytes
    listen_port: int
    addresses: tuple[IPInterface, ...]
    public_address: str
    public_ports: tuple[int, ...]
    client_hello_timeout: float
    max_connections: int
    mtu: int
    nodes: tuple[RelayNode, ...]
    max_connections_per_ip: int = 256
    idle_timeout: float = 600.0
    http_redirect_port: int | None = None
    shutdown_timeout: float = 10.0
    state_dir: Path = Path("state")  # learned node endpoints, kept across restarts


# ---------------------------------------------------------------------------------------------
# Value converters: each takes the raw (stripped) value and returns it parsed, or raises
# ValueError whose text is the "why" of the error.

_TRUE = frozenset({"yes", "true", "on", "1"})
_FALSE = frozenset({"no", "false", "off", "0"})
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_MOUNT_PATH = re.compile(r"/\S*\Z")


def _bool(value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValueError(f"{value!r} is not a boolean (use yes/no, true/false, on/off or 1/0)")


def _int(value: str, low: int, high: int, what: str = "number") -> int:
    if not re.fullmatch(r"[0-9]{1,10}", value):
        raise ValueError(f"{value!r} is not a {what}")
    number = int(value)
    if not low <= number <= high:
        raise ValueError(f"{number} is out of range ({low}..{high})")
    return number


def _port(value: str) -> int:
    return _int(value, 1, 65535, "port number")


def _listen_port(value: str) -> int:
    return _int(value, 0, 65535, "port number")


def _keepalive(value: str) -> int:
    if value.lower() == "off":
        return 0
    return _int(value, 0, 65535, "number of seconds")


def _seconds(value: str) -> float:
    if not re.fullmatch(r"[0-9]{1,9}(\.[0-9]{1,9})?", value):
        raise ValueError(f"{value!r} is not a number of seconds")
    seconds = float(value)
    if seconds <= 0:
        raise ValueError("must be more than 0 seconds")
    return seconds


def _items(value: str) -> list[str]:
    """A comma (or line) separated list; empty items, as after a trailing comma, are dropped."""
    return [item.strip() for item in re.split(r"[,\n]", value) if item.strip()]


def _interfaces(value: str) -> tuple[IPInterface, ...]:
    result = []
    for item in _items(value):
        try:
            result.append(ip_interface(item))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address with a prefix length") from None
    if not result:
        raise ValueError("needs at least one address")
    return tuple(result)


def _networks(value: str) -> tuple[IPNetwork, ...]:
    result: list[IPNetwork] = []
    for item in _items(value):
        try:
            network = ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP network (CIDR)") from None
        if network.network_address != ip_interface(item).ip:
            raise ValueError(f"{item!r} has host bits set; did you mean {network}?")
        if network in result:
            raise ValueError(f"{network} is listed twice")
        result.append(network)
    if not result:
        raise ValueError("needs at least one network")
    return tuple(result)


def _hostname(item: str) -> str:
    name = item.lower()
    labels = name[2:].split(".") if name.startswith("*.") else name.split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{item!r} is not a DNS name (or a *.suffix wildcard)")
    return name


def _hostnames(value: str) -> tuple[str, ...]:
    result: list[str] = []
    for item in _items(value):
        name = _hostname(item)
        if name in result:
            raise ValueError(f"{name} is listed twice")
        result.append(name)
    return tuple(result)


def _split_host_port(value: str) -> tuple[str, str]:
    """Split HOST:PORT or [IPV6]:PORT; a bare IPv6 address is refused as ambiguous."""
    if value.startswith("["):
        host, bracket, port = value[1:].partition("]:")
        if not bracket:
            raise ValueError(f"{value!r} is not [ADDRESS]:PORT")
        try:
            IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
        return host, port
    host, colon, port = value.rpartition(":")
    if not colon or not host:
        raise ValueError(f"{value!r} is not HOST:PORT")
    if ":" in host:
        raise ValueError(f"{value!r} is not HOST:PORT (write an IPv6 address as [ADDRESS]:PORT)")
    return host, port


def _host(host: str) -> str:
    if ":" in host:
        return host  # checked as IPv6 by _split_host_port
    try:
        return str(IPv4Address(host))
    except ValueError:
        pass
    if host.endswith("."):
        host = host[:-1]
    if not all(_LABEL.match(label) for label in host.lower().split(".")):
        raise ValueError(f"{host!r} is not a host name or IP address")
    return host


def _endpoint(value: str) -> tuple[str, int]:
    host, port = _split_host_port(value)
    return _host(host), _port(port)


def _peerapi(value: str) -> tuple[IPAddress, int]:
    host, port = _split_host_port(value)
    try:
        address = ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address (the peerAPI is on the overlay)") from None
    return address, _port(port)


def _forward(value: str) -> str:
    """A TCP backend: HOST:PORT, or a bare PORT on 127.0.0.1; normalised to HOST:PORT."""
    if re.fullmatch(r"[0-9]+", value):
        return f"127.0.0.1:{_port(value)}"
    host, port = _endpoint(value)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _url(value: str, schemes: Iterable[str]) -> str:
    parts = urllib.parse.urlsplit(value)
    try:
        _ = parts.port  # a port that is not a number only shows when asked for
    except ValueError:
        raise ValueError(f"{value!r} has a bad port") from None
    if parts.scheme not in schemes or not parts.hostname or any(c.isspace() for c in value):
        raise ValueError(f"{value!r} is not a {' or '.join(s + '://' for s in schemes)} URL")
    return value


def _mount_target(value: str, base: Path) -> str:
    """Check a mount target lightly; a bare port becomes a proxy URL, a relative path absolute."""
    if not value:
        raise ValueError("needs a target")
    if value.startswith("text:"):
        return value
    if value.startswith("unix:"):
        if not value[5:].startswith("/"):
            raise ValueError(f"{value!r}: a unix socket target is unix:/ABSOLUTE/PATH")
        return value
    if "://" in value:
        return _url(value, ("http", "https", "https+insecure"))
    if re.fullmatch(r"[0-9]+", value):
        return f"http://127.0.0.1:{_port(value)}"
    if ":" in value:
        raise ValueError(
            f"{value!r} is not a target: use http://, https://, https+insecure://,"
            " unix:/PATH, text:TEXT, a port or a path"
        )
    return str(_path(value, base))


def _path(value: str, base: Path) -> Path:
    if not value:
        raise ValueError("needs a path")
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # ~user for a user that does not exist, or no home directory
        raise ValueError(f"cannot expand {value!r}: no such home directory") from None
    return path if path.is_absolute() else base / path


def _choice(*choices: str) -> Callable[[str], str]:
    def convert(value: str) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of: {', '.join(choices)}")
        return value

    return convert


def _check_file(path: Path, st: os.stat_result, secret: bool) -> None:
    """A regular file, and for a secret one that only its owner can read (as DESIGN.md asks)."""
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path} is not a regular file")
    if secret and st.st_mode & 0o077:
        raise ValueError(f"{path} is readable by group or others; chmod 600 it")


def _existing_file(path: Path, secret: bool = False) -> Path:
    """A file that another part of the program reads later: checked now, so a typo shows early."""
    try:
        _check_file(path, path.stat(), secret)
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    return path


def _read_key_file(path: Path) -> bytes:
    """Read a key file the way wg-quick expects it: one base64 key, surrounding space ignored."""
    try:
        # O_NONBLOCK: opening a FIFO by mistake must not hang; the fstat below refuses it.
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            # Checked on the open file, so the file we read is the file we checked.
            _check_file(path, os.fstat(f.fileno()), secret=True)
            data = f.read(256)
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    try:
        return decode_key(data.decode("ascii").strip())
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a valid key: it is not base64") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


# ---------------------------------------------------------------------------------------------
# Reading the file


_COMMENT = ("#", ";")
_INLINE_COMMENT = ";"
_SECTION_RE = configparser.RawConfigParser.SECTCRE
_OPTION_RE = re.compile(r"(?P<option>.*?)\s*(?P<vi>=)\s*(?P<value>.*)$")
_NONSPACE = re.compile(r"\S")
_NO_DEFAULT_SECTION = "\n"  # can never be a section header, so [DEFAULT] is just unknown


def _strip_comment(line: str) -> str:
    """The part of a line configparser looks at: without full-line and inline comments."""
    if line.strip().startswith(_COMMENT):
        return ""
    index = -1
    while (index := line.find(_INLINE_COMMENT, index + 1)) != -1:
        if index == 0 or line[index - 1].isspace():
            return line[:index].strip()
    return line.strip()


@attrs.frozen
class _Layout:
    """Where each section and key is written, and what configparser silently ignores."""

    sections: dict[str, int]
    keys: dict[tuple[str, str], int]
    ignored: list[tuple[int, str, str]]


def _scan(lines: Sequence[str]) -> _Layout:
    """Line numbers of sections and keys, following configparser's `_read` step by step.

    Mirrors configparser with empty_lines_in_values=False: a blank or comment line ends a value;
    a line indented deeper than its key continues that key's value. Also notes text after a
    section header, which configparser drops without a word.
    """
    layout = _Layout({}, {}, [])
    section: str | None = None
    has_key = False
    indent = 0
    for lineno, line in enumerate(lines, start=1):
        value = _strip_comment(line)
        if not value:
            indent = sys.maxsize
            continue
        match = _NONSPACE.search(line)
        current = match.start() if match else 0
        if section is not None and has_key and current > indent:
            continue
        indent = current
        if header := _SECTION_RE.match(value):
            section = header.group("header")
            layout.sections.setdefault(section, lineno)
            has_key = False
            if value[header.end() :].strip():
                layout.ignored.append((lineno, section, value[header.end() :].strip()))
        elif section is None:
            break
        elif option := _OPTION_RE.match(value):
            layout.keys.setdefault((section, option.group("option").rstrip()), lineno)
            has_key = True
    return layout


class _Parser(configparser.ConfigParser):
    """configparser as DESIGN.md fixes it: "=" only, ";" comments after space, case kept."""

    def __init__(self) -> None:
        super().__init__(
            delimiters=("=",),
            comment_prefixes=_COMMENT,
            inline_comment_prefixes=(_INLINE_COMMENT,),
            interpolation=None,
            empty_lines_in_values=False,
            default_section=_NO_DEFAULT_SECTION,
            strict=True,
        )

    def optionxform(self, optionstr: str) -> str:
        return optionstr


class _File:
    """A config file read by configparser, with line numbers and the errors found so far."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.display = os.fspath(path)
        self.path = Path(os.path.abspath(path))
        self.base = self.path.parent
        self.errors: list[tuple[int, str]] = []
        lines = self._read_lines()
        self.layout = _scan(lines)
        parser = _Parser()
        try:
            parser.read_file(lines, source=self.display)
        except configparser.DuplicateSectionError as e:
            first = self.layout.sections.get(e.section, 0)
            self.fail(e.lineno or 0, e.section, None, f"duplicate section (first at line {first})")
        except configparser.DuplicateOptionError as e:
            first = self.layout.keys.get((e.section, e.option), 0)
            self.fail(e.lineno or 0, e.section, e.option, f"duplicate key (first at line {first})")
        except configparser.MissingSectionHeaderError as e:
            self.fail(e.lineno, None, None, "a key before the first [section]")
        except configparser.ParsingError as e:
            for lineno, _ in e.errors:
                text = lines[lineno - 1].strip()
                self.error(lineno, None, None, f"cannot parse {text!r} (expected KEY = VALUE)")
            self.check()
        except configparser.Error as e:  # pragma: no cover - no other error is known to occur
            self.fail(0, None, None, e.message)
        for lineno, header, text in self.layout.ignored:
            self.error(lineno, header, None, f"unexpected {text!r} after the section header")
        self.sections = [
            _Section(self, header, *_kind_name(header), dict(parser[header]))
            for header in parser.sections()
        ]

    def _read_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_FILE_SIZE + 1)
        except OSError as e:
            self.fail(0, None, None, f"cannot read: {e.strerror or e}")
        if len(data) > MAX_FILE_SIZE:
            self.fail(0, None, None, f"cannot read: larger than {MAX_FILE_SIZE} bytes")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            self.fail(data.count(b"\n", 0, e.start) + 1, None, None, "not UTF-8 text")
        # Universal newlines, as open() in text mode would do, so line numbers match editors.
        return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")

    def error(self, line: int, section: str | None, key: str | None, why: str) -> None:
        self.errors.append((line, format_error(self.display, line, section, key, why)))

    def fail(self, line: int, section: str | None, key: str | None, why: str) -> NoReturn:
        """Record one last error and stop: the file cannot be read any further."""
        self.error(line, section, key, why)
        raise self._exception()

    def check(self) -> None:
        """Raise every error found so far, if any."""
        if self.errors:
            raise self._exception()

    def _exception(self) -> ConfigError:
        # In file order: errors are found section by section, and some only across sections.
        return ConfigError([text for _, text in sorted(self.errors, key=lambda e: e[0])])


@attrs.define
class _Section:
    """One section of the file, with helpers that read its keys and record what is wrong."""

    file: _File
    header: str
    kind: str
    name: str
    values: dict[str, str]

    def line(self, key: str | None = None) -> int:
        """The line of the key, or of the header if the key is absent (where a missing key goes)."""
        if key is not None and (self.header, key) in self.file.layout.keys:
            return self.file.layout.keys[self.header, key]
        return self.file.layout.sections.get(self.header, 0)

    def error(self, key: str | None, why: str) -> None:
        self.file.error(self.line(key), self.header, key, why)

    def path(self, value: str) -> Path:
        return _path(value, self.file.base)

    def opt(self, key: str, convert: Callable[[str], T], default: D) -> T | D:
        """The converted value of an optional key; `default` if absent or wrong (then recorded)."""
        if key not in self.values:
            return default
        try:
            return convert(self.values[key])
        except ValueError as e:
            self.error(key, str(e))
            return default

    def req(self, key: str, convert: Callable[[str], T]) -> T | None:
        """The converted value of a required key; None if absent or wrong (then recorded)."""
        if key not in self.values:
            self.error(key, "required key is missing")
            return None
        return self.opt(key, convert, None)

    def secret(self, key: str, required: bool) -> bytes | None:
        """A key given inline (KEY) or in a file only its owner can read (KEY-file), not both."""
        file_key = f"{key}-file"
        if key in self.values and file_key in self.values:
            self.error(file_key, f"use {key} or {file_key}, not both")
            return None
        if file_key in self.values:
            return self.opt(file_key, lambda v: _read_key_file(self.path(v)), None)
        if required and key not in self.values:
            self.error(key, f"required key is missing (or give {file_key})")
            return None
        return self.opt(key, decode_key, None)

    def reject_unknown(self, known: Sequence[str]) -> None:
        for key in self.values:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.error(key, f"unknown key{hint}")


def _kind_name(header: str) -> tuple[str, str]:
    kind, _, name = header.strip().partition(" ")
    return kind, name.strip()


_Groups = dict[str, list[_Section]]
_REQUIRED_SECTIONS = ("node", "relay")


def _group_sections(file: _File, singles: Sequence[str], named: Sequence[str]) -> _Groups:
    """Sort sections by kind; report unknown kinds, bad or repeated names, missing singles."""
    groups: _Groups = {kind: [] for kind in (*singles, *named)}
    seen: dict[tuple[str, str], _Section] = {}
    for section in file.sections:
        if section.kind in singles and section.name:
            section.error(None, f"unknown section ([{section.kind}] takes no name)")
            continue
        if section.kind in named and not _NAME.match(section.name):
            section.error(
                None, f"needs a NAME of letters, digits, '.', '_', '-': [{section.kind} NAME]"
            )
            continue
        if section.kind not in groups:
            close = difflib.get_close_matches(section.kind, groups, n=1)
            shown = f"{close[0]} NAME" if close and close[0] in named else "".join(close)
            hint = f" (did you mean [{shown}]?)" if close else ""
            section.error(None, f"unknown section{hint}")
            continue
        first = seen.setdefault((section.kind, section.name), section)
        if first is not section:
            section.error(None, f"same section as [{first.header}] (line {first.line()})")
            continue
        groups[section.kind].append(section)
    for kind in singles:
        if not groups[kind] and kind in _REQUIRED_SECTIONS:
            file.error(0, kind, None, "missing section")
    return groups


@attrs.frozen
class _WireGuard:
    """The [node] / [relay] keys both files share."""

    private_key: bytes
    listen_port: int
    addresses: tuple[IPInterface, ...]
    mtu: int


def _wireguard(section: _Section) -> _WireGuard | None:
    private_key = section.secret("private-key", required=True)
    listen_port = section.opt("listen-port", _listen_port, 41641)
    addresses = section.req("address", _interfaces)
    mtu = section.opt("mtu", lambda v: _int(v, 576, 9000), 1280)
    if private_key is None or addresses is None:
        return None
    if mtu < 1280 and any(a.version == 6 for a in addresses):
        section.error("mtu", f"{mtu} is below 1280, the minimum with an IPv6 address")
    return _WireGuard(private_key, listen_port, addresses, mtu)


def _check_peers(peers: Sequence[tuple[_Section, bytes, Sequence[IPNetwork]]], own: bytes) -> None:
    """One key for two peers, or one network routed to two peers, is never what was meant."""
    own_public = public_key(own)
    key_owner: dict[bytes, _Section] = {}
    net_owner: dict[IPNetwork, _Section] = {}
    for section, key, networks in peers:
        if key == own_public:
            section.error("public-key", "is the public key of this file's own private key")
        first = key_owner.setdefault(key, section)
        if first is not section:
            where = f"[{first.header}] (line {first.line('public-key')})"
            section.error("public-key", f"same key as {where}")
        for network in networks:
            first = net_owner.setdefault(network, section)
            if first is not section:
                where = f"[{first.header}] (line {first.line('allowed-ips')})"
                section.error("allowed-ips", f"{network} is already routed to {where}")


# ---------------------------------------------------------------------------------------------
# node.ini


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
)
_PEER_KEYS = (
    "public-key",
    "endpoint",
    "allowed-ips",
    "persistent-keepalive",
    "funnel-ingress",
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
)
_SERVE_CHOICES = ("tcp-forward", "tls-terminated-tcp", "handler")


def load_node_config(path: str | os.PathLike[str]) -> NodeConfig:
    """Read node.ini; raise ConfigError listing every problem found."""
    return _node_config(_File(path))


def _node_config(file: _File) -> NodeConfig:
    groups = _group_sections(file, singles=("node", "tls"), named=("peer", "serve"))
    node = _node(groups["node"][0]) if groups["node"] else None
    peers = [_peer(section) for section in groups["peer"]]
    if node is not None:
        _check_peers(
            [
                (s, p.public_key, p.allowed_ips)
                for s, p in zip(groups["peer"], peers, strict=True)
                if p
            ],
            node.private_key,
        )
    tls = _tls(groups["tls"][0]) if groups["tls"] else TLSConfig(source="self-signed")
    serve = [_serve(section, node.peerapi_port if node else None) for section in groups["serve"]]
    file.check()
    assert node is not None and tls is not None  # else an error was recorded
    return attrs.evolve(
        node,
        peers=tuple(p for p in peers if p),
        tls=tls,
        serve=tuple(s for s in serve if s),
    )


def _node(section: _Section) -> NodeConfig | None:
    section.reject_unknown(_NODE_KEYS)
    wireguard = _wireguard(section)
    hostnames = section.opt("hostname", _hostnames, ())
    peerapi_port = section.opt("peerapi-port", _port, 41642)
    network = section.opt("network", _choice("userspace", "tun"), "userspace")
    state_dir = section.opt("state-dir", section.path, section.path("state"))
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
    )


def _peer(section: _Section) -> PeerConfig | None:
    section.reject_unknown(_PEER_KEYS)
    key = section.req("public-key", decode_key)
    endpoint = section.opt("endpoint", _endpoint, None)
    allowed_ips = section.req("allowed-ips", _networks)
    keepalive = section.opt("persistent-keepalive", _keepalive, 0)
    funnel_ingress = section.opt("funnel-ingress", _bool, False)
    preshared_key = section.secret("preshared-key", required=False)
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
    )


def _tls(section: _Section) -> TLSConfig | None:
    section.reject_unknown(_TLS_KEYS)
    errors = len(section.file.errors)
    source = section.opt("source", _choice("self-signed", "files", "acme"), "self-signed")
    if len(section.file.errors) > errors:
        return None
    for name, needs in _TLS_KEY_SOURCE.items():
        if name in section.values and source != needs:
            section.error(name, f"is only used with source = {needs}")
    if source == "files":
        cert = section.req("cert-file", lambda v: _existing_file(section.path(v)))
        key = section.req("key-file", lambda v: _existing_file(section.path(v), secret=True))
        return TLSConfig(source=source, cert_file=cert, key_file=key)
    if source == "acme":
        directory = section.req("acme-directory", lambda v: _url(v, ("https", "http")))
        email = section.opt("acme-email", _email, None)
        challenge = section.opt("acme-challenge", _choice("tls-alpn-01", "dns-01"), "tls-alpn-01")
        hook: Path | None = None
        plugin: str | None = None
        if challenge == "dns-01" and "acme-dns-plugin" in section.values:
            plugin = section.opt("acme-dns-plugin", _handler_name, None)
            if "acme-dns-hook" in section.values:
                section.error("acme-dns-hook", "cannot be combined with acme-dns-plugin")
        elif challenge == "dns-01":
            hook = section.req("acme-dns-hook", lambda v: _executable(section.path(v)))
        else:
            for option in ("acme-dns-hook", "acme-dns-plugin"):
                if option in section.values:
                    section.error(option, "is only used with acme-challenge = dns-01")
        ca_file = section.opt("acme-ca-file", lambda v: _existing_file(section.path(v)), None)
        return TLSConfig(
            source=source,
            acme_directory=directory,
            acme_email=email,
            acme_challenge=challenge,
            acme_dns_hook=hook,
            acme_dns_plugin=plugin,
            acme_ca_file=ca_file,
        )
    return TLSConfig(source=source)


def _serve(section: _Section, peerapi_port: int | None) -> ServePort | None:
    try:
        port = _port(section.name)
        if str(port) != section.name:
            raise ValueError(f"{section.name!r} is not a plain port number")
    except ValueError as e:
        section.error(None, f"{e} (expected [serve PORT])")
        return None
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
    handler = section.opt("handler", _handler_name, None)
    if "handler" in section.values:
        options = tuple((k, v) for k, v in section.values.items() if k not in _SERVE_KEYS)
    else:
        section.reject_unknown([*_SERVE_KEYS, *mount_keys])
        options = ()
    forward = section.opt("tcp-forward", _forward, None)
    terminated = section.opt("tls-terminated-tcp", _forward, None)
    proxy_protocol = None
    if "proxy-protocol" in section.values:
        if "tcp-forward" in section.values or "tls-terminated-tcp" in section.values:
            proxy_protocol = section.opt("proxy-protocol", _proxy_protocol, None)
        else:
            section.error("proxy-protocol", "is only used with tcp-forward or tls-terminated-tcp")
    proxy_timeout = 60.0
    if "proxy-timeout" in section.values:
        if mount_keys:
            proxy_timeout = section.opt("proxy-timeout", _seconds, 60.0)
        else:
            section.error("proxy-timeout", "is only used with /PATH = URL mounts")
    mounts = []
    for key in mount_keys:
        try:
            if not _MOUNT_PATH.match(key):
                raise ValueError("a mount path starts with '/' and has no spaces")
            mounts.append((key, _mount_target(section.values[key], section.file.base)))
        except ValueError as e:
            section.error(key, str(e))
    return ServePort(
        port=port,
        funnel=section.opt("funnel", _bool, False),
        mounts=tuple(mounts),
        tcp_forward=forward,
        tls_terminated_tcp=terminated,
        proxy_protocol=proxy_protocol,
        handler=handler,
        options=options,
        proxy_timeout=proxy_timeout,
    )


def _proxy_protocol(value: str) -> int:
    return int(_choice("1", "2")(value))


def _handler_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"{value!r} is not a handler name")
    return value


def _email(value: str) -> str:
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value):
        raise ValueError(f"{value!r} is not an email address")
    return value


def _executable(path: Path) -> Path:
    _existing_file(path)
    if not os.access(path, os.X_OK):
        raise ValueError(f"{path} is not executable")
    return path


# ---------------------------------------------------------------------------------------------
# relay.ini


_RELAY_KEYS = (
    "private-key",
    "private-key-file",
    "listen-port",
    "address",
    "public-address",
    "public-ports",
    "client-hello-timeout",
    "max-connections",
    "max-connections-per-ip",
    "idle-timeout",
    "http-redirect-port",
    "shutdown-timeout",
    "state-dir",
    "mtu",
)
_RELAY_NODE_KEYS = (
    "public-key",
    "allowed-ips",
    "hostnames",
    "peerapi",
    "endpoint",
    "persistent-keepalive",
    "preshared-key",
    "preshared-key-file",
)


def load_relay_config(path: str | os.PathLike[str]) -> RelayConfig:
    """Read relay.ini; raise ConfigError listing every problem found."""
    return _relay_config(_File(path))


def _relay_config(file: _File) -> RelayConfig:
    groups = _group_sections(file, singles=("relay",), named=("node",))
    relay = _relay(groups["relay"][0]) if groups["relay"] else None
    nodes = [_relay_node(section) for section in groups["node"]]
    pairs = [(s, n) for s, n in zip(groups["node"], nodes, strict=True) if n]
    if relay is not None:
        _check_peers([(s, n.public_key, n.allowed_ips) for s, n in pairs], relay.private_key)
    claimed: dict[str, _Section] = {}
    for section, node in pairs:
        for name in node.hostnames:
            first = claimed.setdefault(name, section)
            if first is not section:
                where = f"[{first.header}] (line {first.line('hostnames')})"
                section.error("hostnames", f"{name} is already claimed by {where}")
    file.check()
    assert relay is not None  # else an error was recorded
    return attrs.evolve(relay, nodes=tuple(n for n in nodes if n))


def _relay(section: _Section) -> RelayConfig | None:
    section.reject_unknown(_RELAY_KEYS)
    wireguard = _wireguard(section)
    public_address = section.opt("public-address", lambda v: str(ip_address(v)), "0.0.0.0")
    public_ports = section.opt("public-ports", _ports, (443,))
    timeout = section.opt("client-hello-timeout", _seconds, 10.0)
    max_connections = section.opt("max-connections", lambda v: _int(v, 1, 1_000_000), 10000)
    per_ip = section.opt("max-connections-per-ip", lambda v: _int(v, 1, 1_000_000), 256)
    idle_timeout = section.opt("idle-timeout", _seconds, 600.0)
    redirect_port = section.opt("http-redirect-port", _port, None)
    shutdown_timeout = section.opt("shutdown-timeout", _seconds, 10.0)
    relay_state = section.opt("state-dir", section.path, section.path("state"))
    if redirect_port is not None and redirect_port in public_ports:
        section.error("http-redirect-port", "is also one of public-ports")
    if wireguard is None:
        return None
    return RelayConfig(
        path=section.file.path,
        private_key=wireguard.private_key,
        listen_port=wireguard.listen_port,
        addresses=wireguard.addresses,
        public_address=public_address,
        public_ports=public_ports,
        client_hello_timeout=timeout,
        max_connections=max_connections,
        mtu=wireguard.mtu,
        nodes=(),
        max_connections_per_ip=per_ip,
        idle_timeout=idle_timeout,
        http_redirect_port=redirect_port,
        shutdown_timeout=shutdown_timeout,
        state_dir=relay_state,
    )


def _ports(value: str) -> tuple[int, ...]:
    ports: list[int] = []
    for item in _items(value):
        port = _port(item)
        if port in ports:
            raise ValueError(f"{port} is listed twice")
        ports.append(port)
    if not ports:
        raise ValueError("needs at least one port")
    return tuple(ports)


def _relay_node(section: _Section) -> RelayNode | None:
    section.reject_unknown(_RELAY_NODE_KEYS)
    key = section.req("public-key", decode_key)
    allowed_ips = section.req("allowed-ips", _networks)
    hostnames = section.req("hostnames", _some_hostnames)
    peerapi = section.req("peerapi", _peerapi)
    endpoint = section.opt("endpoint", _endpoint, None)
    keepalive = section.opt("persistent-keepalive", _keepalive, 0)
    preshared_key = section.secret("preshared-key", required=False)
    if key is None or allowed_ips is None or hostnames is None or peerapi is None:
        return None
    if not any(peerapi[0] in network for network in allowed_ips):
        section.error("peerapi", f"{peerapi[0]} is not inside allowed-ips")
    return RelayNode(
        name=section.name,
        public_key=key,
        allowed_ips=allowed_ips,
        hostnames=hostnames,
        peerapi=peerapi,
        endpoint=endpoint,
        persistent_keepalive=keepalive,
        preshared_key=preshared_key,
    )


def _some_hostnames(value: str) -> tuple[str, ...]:
    names = _hostnames(value)
    if not names:
        raise ValueError("needs at least one host name")
    return names


# ---------------------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str]) -> NodeConfig | RelayConfig:
    """Read either file: one with a [relay] section and no [node] section is a relay.ini."""
    file = _File(path)
    headers = {section.header.strip() for section in file.sections}
    if "relay" in headers and "node" not in headers:
        return _relay_config(file)
    return _node_config(file)
