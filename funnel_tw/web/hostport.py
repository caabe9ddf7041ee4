"""``host:port`` text, as Go's net.JoinHostPort and net.SplitHostPort write and read it.

An IPv6 address is written in brackets (``[2001:db8::1]:443``) so its colons are not taken
for the port's; a host with a colon and no brackets is refused when read. The configuration
has its own converters (their errors name the file and line) and the overlay, below this
layer, formats endpoints itself.
"""

from __future__ import annotations


def format_host_port(host: str, port: int) -> str:
    """``host:port``, or ``[host]:port`` for an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_host_port(text: str) -> tuple[str, int] | None:
    """(host, port) from ``host:port`` or ``[host]:port``; None unless the port is a number
    from 0 to 65535. The host is not checked (it may be empty): that is the caller's part."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
        if ":" in host:
            return None
    if not sep or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        return None
    return host, int(port)
