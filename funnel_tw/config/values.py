"""The value converters: each takes a key's raw (stripped) value and returns it parsed, or raises
ValueError whose text is the "why" of the error line.

They know nothing of files, sections or line numbers (that is ini.py), so each one can be read,
and tested, on its own.
"""

from __future__ import annotations

import os
import re
import stat
import urllib.parse
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_interface, ip_network
from pathlib import Path

from funnel_tw.keys import decode_key

from .model import IPAddress, IPInterface, IPNetwork

_TRUE = frozenset({"yes", "true", "on", "1"})
_FALSE = frozenset({"no", "false", "off", "0"})
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
"""The NAME of [peer NAME], [node NAME], and of a handler or DNS plugin."""
MOUNT_PATH = re.compile(r"/\S*\Z")


def boolean(value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValueError(f"{value!r} is not a boolean (use yes/no, true/false, on/off or 1/0)")


def integer(value: str, low: int, high: int, what: str = "number") -> int:
    if not re.fullmatch(r"[0-9]{1,10}", value):
        raise ValueError(f"{value!r} is not a {what}")
    number = int(value)
    if not low <= number <= high:
        raise ValueError(f"{number} is out of range ({low}..{high})")
    return number


def port(value: str) -> int:
    return integer(value, 1, 65535, "port number")


def listen_port(value: str) -> int:
    """A UDP port to listen on; 0 lets the system choose."""
    return integer(value, 0, 65535, "port number")


def keepalive(value: str) -> int:
    if value.lower() == "off":
        return 0
    return integer(value, 0, 65535, "number of seconds")


def seconds(value: str) -> float:
    if not re.fullmatch(r"[0-9]{1,9}(\.[0-9]{1,9})?", value):
        raise ValueError(f"{value!r} is not a number of seconds")
    result = float(value)
    if result <= 0:
        raise ValueError("must be more than 0 seconds")
    return result


def items(value: str) -> list[str]:
    """A comma (or line) separated list; empty items, as after a trailing comma, are dropped."""
    return [item.strip() for item in re.split(r"[,\n]", value) if item.strip()]


def ports(value: str) -> tuple[int, ...]:
    result: list[int] = []
    for item in items(value):
        number = port(item)
        if number in result:
            raise ValueError(f"{number} is listed twice")
        result.append(number)
    if not result:
        raise ValueError("needs at least one port")
    return tuple(result)


def interfaces(value: str) -> tuple[IPInterface, ...]:
    result = []
    for item in items(value):
        try:
            result.append(ip_interface(item))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address with a prefix length") from None
    if not result:
        raise ValueError("needs at least one address")
    return tuple(result)


def networks(value: str) -> tuple[IPNetwork, ...]:
    result: list[IPNetwork] = []
    for item in items(value):
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


def ip_address_text(value: str) -> str:
    """An IP address, written back the way ipaddress writes it."""
    return str(ip_address(value))


def hostname(item: str) -> str:
    name = item.lower()
    labels = name[2:].split(".") if name.startswith("*.") else name.split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{item!r} is not a DNS name (or a *.suffix wildcard)")
    return name


def hostnames(value: str) -> tuple[str, ...]:
    result: list[str] = []
    for item in items(value):
        name = hostname(item)
        if name in result:
            raise ValueError(f"{name} is listed twice")
        result.append(name)
    return tuple(result)


def some_hostnames(value: str) -> tuple[str, ...]:
    names = hostnames(value)
    if not names:
        raise ValueError("needs at least one host name")
    return names


def split_host_port(value: str) -> tuple[str, str]:
    """Split HOST:PORT or [IPV6]:PORT; a bare IPv6 address is refused as ambiguous."""
    if value.startswith("["):
        name, bracket, number = value[1:].partition("]:")
        if not bracket:
            raise ValueError(f"{value!r} is not [ADDRESS]:PORT")
        try:
            IPv6Address(name)
        except ValueError:
            raise ValueError(f"{name!r} is not an IPv6 address") from None
        return name, number
    name, colon, number = value.rpartition(":")
    if not colon or not name:
        raise ValueError(f"{value!r} is not HOST:PORT")
    if ":" in name:
        raise ValueError(f"{value!r} is not HOST:PORT (write an IPv6 address as [ADDRESS]:PORT)")
    return name, number


def host(value: str) -> str:
    if ":" in value:
        return value  # checked as IPv6 by split_host_port
    try:
        return str(IPv4Address(value))
    except ValueError:
        pass
    if value.endswith("."):
        value = value[:-1]
    if not all(_LABEL.match(label) for label in value.lower().split(".")):
        raise ValueError(f"{value!r} is not a host name or IP address")
    return value


def endpoint(value: str) -> tuple[str, int]:
    name, number = split_host_port(value)
    return host(name), port(number)


def peerapi(value: str) -> tuple[IPAddress, int]:
    name, number = split_host_port(value)
    try:
        address = ip_address(name)
    except ValueError:
        raise ValueError(f"{name!r} is not an IP address (the peerAPI is on the overlay)") from None
    return address, port(number)


def forward(value: str) -> str:
    """A TCP backend: HOST:PORT, or a bare PORT on 127.0.0.1; normalised to HOST:PORT."""
    if re.fullmatch(r"[0-9]+", value):
        return f"127.0.0.1:{port(value)}"
    name, number = endpoint(value)
    return f"[{name}]:{number}" if ":" in name else f"{name}:{number}"


def proxy_protocol(value: str) -> int:
    return int(choice("1", "2")(value))


def url(value: str, schemes: Iterable[str]) -> str:
    parts = urllib.parse.urlsplit(value)
    try:
        _ = parts.port  # a port that is not a number only shows when asked for
    except ValueError:
        raise ValueError(f"{value!r} has a bad port") from None
    if parts.scheme not in schemes or not parts.hostname or any(c.isspace() for c in value):
        raise ValueError(f"{value!r} is not a {' or '.join(s + '://' for s in schemes)} URL")
    return value


def mount_target(value: str, base: Path) -> str:
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
        return url(value, ("http", "https", "https+insecure"))
    if re.fullmatch(r"[0-9]+", value):
        return f"http://127.0.0.1:{port(value)}"
    if ":" in value:
        raise ValueError(
            f"{value!r} is not a target: use http://, https://, https+insecure://,"
            " unix:/PATH, text:TEXT, a port or a path"
        )
    return str(path(value, base))


def path(value: str, base: Path) -> Path:
    """A path; a relative one is taken from `base`, the folder of the config file."""
    if not value:
        raise ValueError("needs a path")
    try:
        result = Path(value).expanduser()
    except RuntimeError:  # ~user for a user that does not exist, or no home directory
        raise ValueError(f"cannot expand {value!r}: no such home directory") from None
    return result if result.is_absolute() else base / result


def choice(*choices: str) -> Callable[[str], str]:
    def convert(value: str) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of: {', '.join(choices)}")
        return value

    return convert


def plugin_name(value: str) -> str:
    """The NAME of ``handler = NAME`` or ``acme-dns-plugin = NAME``."""
    if not NAME.match(value):
        raise ValueError(f"{value!r} is not a handler name")
    return value


def email(value: str) -> str:
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value):
        raise ValueError(f"{value!r} is not an email address")
    return value


def _check_file(file: Path, st: os.stat_result, secret: bool) -> None:
    """A regular file, and for a secret one that only its owner can read (as DESIGN.md asks)."""
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{file} is not a regular file")
    if secret and st.st_mode & 0o077:
        raise ValueError(f"{file} is readable by group or others; chmod 600 it")


def existing_file(file: Path, secret: bool = False) -> Path:
    """A file that another part of the program reads later: checked now, so a typo shows early."""
    try:
        _check_file(file, file.stat(), secret)
    except FileNotFoundError:
        raise ValueError(f"{file} does not exist") from None
    except OSError as e:
        raise ValueError(f"cannot read {file}: {e.strerror}") from None
    return file


def executable(file: Path) -> Path:
    existing_file(file)
    if not os.access(file, os.X_OK):
        raise ValueError(f"{file} is not executable")
    return file


def read_key_file(file: Path) -> bytes:
    """Read a key file the way wg-quick expects it: one base64 key, surrounding space ignored."""
    try:
        # O_NONBLOCK: opening a FIFO by mistake must not hang; the fstat below refuses it.
        with os.fdopen(os.open(file, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            # Checked on the open file, so the file we read is the file we checked.
            _check_file(file, os.fstat(f.fileno()), secret=True)
            data = f.read(256)
    except FileNotFoundError:
        raise ValueError(f"{file} does not exist") from None
    except OSError as e:
        raise ValueError(f"cannot read {file}: {e.strerror}") from None
    try:
        return decode_key(data.decode("ascii").strip())
    except UnicodeDecodeError:
        raise ValueError(f"{file}: not a valid key: it is not base64") from None
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from None


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def size(value: str, low: int = 0, high: int = 1 << 40) -> int:
    """A size in bytes: ``4096``, ``64k``, ``10M``, ``1G`` (binary units, case ignored)."""
    match = re.fullmatch(r"([0-9]{1,13})\s*([kKmMgG]?)[bB]?", value)
    if match is None:
        raise ValueError(f"{value!r} is not a size (bytes, or a number with k, M or G)")
    number = int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if not low <= number <= high:
        raise ValueError(f"{value} is out of range ({low}..{high} bytes)")
    return number


def size_text(number: int) -> str:
    """A size as a file would write it: ``6M``, ``128K``, or bytes when no unit divides it."""
    for unit in ("g", "m", "k"):
        if number and number % _SIZE_UNITS[unit] == 0:
            return f"{number // _SIZE_UNITS[unit]}{unit.upper()}"
    return str(number)
