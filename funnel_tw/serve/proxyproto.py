"""PROXY protocol v1 and v2 headers (haproxy's spec), sent before the first byte to a backend.

The source is the public client (Tailscale-Ingress-Src); the destination is the node's
overlay address of the same family, with the backend's port.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address, ip_address

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def _text(address: IPv4Address | IPv6Address) -> str:
    """The address as the spec writes it: IPv6 in hex groups only (Python 3.13 writes
    v4-mapped addresses as ::ffff:192.0.2.1, which the spec does not allow)."""
    if address.version == 4:
        return str(address)
    groups = [f"{int.from_bytes(address.packed[i : i + 2], 'big'):x}" for i in range(0, 16, 2)]
    best, best_len, start = -1, 1, -1
    for i, group in enumerate([*groups, "end"]):
        if group == "0" and start < 0:
            start = i
        elif group != "0" and start >= 0:
            if i - start > best_len:
                best, best_len = start, i - start
            start = -1
    if best < 0:
        return ":".join(groups)
    return ":".join(groups[:best]) + "::" + ":".join(groups[best + best_len :])


def header(version: int, source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    src = ip_address(source[0])
    dst = ip_address(destination[0])
    if isinstance(src, IPv4Address) and not isinstance(dst, IPv4Address):
        src = IPv6Address(f"::ffff:{src}")  # a v4 client in front of a v6-only node
    if isinstance(src, IPv6Address) and isinstance(dst, IPv4Address):
        dst = IPv6Address(f"::ffff:{dst}")
    if version == 1:
        name = "TCP4" if src.version == 4 else "TCP6"
        return f"PROXY {name} {_text(src)} {_text(dst)} {source[1]} {destination[1]}\r\n".encode()
    if version == 2:
        if src.version == 4:
            body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
            family = 0x11  # AF_INET, STREAM
        else:
            body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
            family = 0x21  # AF_INET6, STREAM
        return V2_SIGNATURE + bytes((0x21, family)) + struct.pack("!H", len(body)) + body
    raise ValueError(f"PROXY protocol version {version}")
