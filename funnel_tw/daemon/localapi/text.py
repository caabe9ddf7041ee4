"""Text helpers shared by the node's and the relay's ``funnel-tw status`` summaries."""

from __future__ import annotations

from typing import Any

from ...config.values import size_text


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


def table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        (indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))).rstrip()
        for r in rows
    ]


def _path_memory_text(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds:g}s" if seconds else "off"


def _on_off(value: bool | None) -> str:
    return "?" if value is None else ("on" if value else "off")


def format_tcp_buffers(tcp: dict[str, Any] | None) -> list[str]:
    """The userspace TCP stack's caps (the ``tcp`` of a status document; None with tun) as
    the keys that set them."""
    if not tcp:
        return []
    return [
        f"  TCP buffers: tcp-receive-buffer-max {size_text(tcp['receive_buffer_max'])}, "
        f"tcp-send-buffer-max {size_text(tcp['send_buffer_max'])}, "
        f"tcp-memory {size_text(tcp['memory'])}, "
        f"tcp-max-connections {tcp['connections']}, "
        f"tcp-path-memory {_path_memory_text(tcp.get('path_memory'))}, "
        f"tcp-timestamps {_on_off(tcp.get('timestamps'))}, "
        f"tcp-congestion {tcp.get('congestion', 'cubic')}",
        f"  TCP checksum: {tcp.get('checksum', '?')}",
        f"  WireGuard transport: {tcp.get('transport', '?')}",
    ]
