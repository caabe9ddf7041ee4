"""The operations keys both daemons share, in [node] and in [relay]:

metrics-listen = 127.0.0.1:9464   Prometheus /metrics, /ready, /healthz (off by default)
access-log = /var/log/funnel-tw/access.log   or "-" for standard output (off by default)
access-log-format = json          json | combined
"""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

from . import values
from .ini import Section
from .model import OpsConfig

__all__ = ["OPS_KEYS", "STDOUT", "OpsConfig", "ops_config"]

OPS_KEYS = ("metrics-listen", "access-log", "access-log-format")
STDOUT = Path("-")  # access-log = -


def listen_address(value: str) -> tuple[str, int]:
    """``IP:PORT`` or ``[IPV6]:PORT`` to bind; a name is refused (which address would it be?)."""
    name, number = values.split_host_port(value)
    try:
        address = ip_address(name)
    except ValueError:
        raise ValueError(
            f"{name!r} is not an IP address (use 127.0.0.1 for this host only, "
            "or the address Prometheus reaches)"
        ) from None
    return str(address), values.integer(number, 0, 65535, "port number")


def access_log_path(section: Section, value: str) -> Path:
    if value == "-":
        return STDOUT
    path = section.path(value)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; name a file in it")
    if not path.parent.is_dir():
        raise ValueError(f"{path.parent} is not an existing directory")
    return path


def ops_config(section: Section) -> OpsConfig:
    """The operations keys of [node] or [relay] (errors recorded with FILE:LINE)."""
    metrics = section.opt("metrics-listen", listen_address, None)
    access_log = section.opt("access-log", lambda v: access_log_path(section, v), None)
    log_format = section.opt("access-log-format", values.choice("json", "combined"), "json")
    if "access-log-format" in section.values and "access-log" not in section.values:
        section.error("access-log-format", "is only used with access-log")
    return OpsConfig(metrics_listen=metrics, access_log=access_log, access_log_format=log_format)
