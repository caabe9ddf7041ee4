"""The human summary ``funnel-tw status`` prints from the status document."""

from __future__ import annotations

import datetime
import json
from typing import Any

from ...daemon.localapi.text import format_age, format_bytes, format_tcp_buffers
from ...daemon.localapi.text import table as _table
from .address import _EXPIRY_WARNING


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}{'' if n == 1 else 'S'}"


def format_expiry(expires_in: float) -> str:
    """``in 89 days``; under 7 days, in capitals so it is seen."""
    if expires_in <= 0:
        ago = -expires_in
        if ago < 86400:
            return f"EXPIRED {_plural(int(ago // 3600), 'HOUR')} AGO"
        return f"EXPIRED {_plural(int(ago // 86400), 'DAY')} AGO"
    if expires_in < 86400:
        return f"EXPIRES IN {_plural(int(expires_in // 3600), 'HOUR')}"
    days = int(expires_in // 86400)
    if expires_in < _EXPIRY_WARNING:
        return f"EXPIRES IN {_plural(days, 'DAY')}"
    return f"in {days} days"


def _mount_text(handler: dict[str, Any]) -> str:
    access = f" (access {handler['Access']})" if "Access" in handler else ""
    if "Proxy" in handler:
        return f"proxy {handler['Proxy']}{access}"
    if "Path" in handler:
        return f"files {handler['Path']}{access}"
    return f"text {json.dumps(handler.get('Text', ''))}{access}"


def _port_text(entry: dict[str, Any]) -> str:
    kind = entry.get("kind", "?")
    if kind in ("tcp-forward", "tls-terminated-tcp"):
        text = f"{kind} -> {entry.get('target')}"
    elif kind == "handler":
        text = f"handler {entry.get('handler')}"
    else:
        text = kind
    if entry.get("proxy_protocol"):
        text += f", PROXY protocol v{entry['proxy_protocol']}"
    if entry.get("access"):
        text += f", access {entry['access']}"
    return text


def _port_label(entry: dict[str, Any]) -> str:
    """``443`` for [serve 443], ``blog.example.com:443`` for [serve blog.example.com:443]."""
    host = entry.get("host")
    return f"{host}:{entry['port']}" if host else str(entry["port"])


_SUMMARY_COUNTERS = ("handshakes", "rx_datagrams", "tcp_connections", "app_errors", "stack_errors")


def format_status(doc: dict[str, Any]) -> str:
    """The readable ``funnel-tw status`` summary of a ``/v0/status`` document."""
    lines: list[str] = []
    names = ", ".join(doc.get("hostnames") or []) or "(no hostname)"
    lines.append(f"funnel-tw {doc.get('version', '?')} node {names}")
    udp = doc.get("listen_port")
    lines.append(
        f"  overlay {', '.join(doc.get('addresses') or [])} ({doc.get('network')}), "
        f"WireGuard UDP port {udp if udp is not None else '(not listening)'}, "
        f"peerAPI port {doc.get('peerapi_port')}"
    )
    lines += format_tcp_buffers(doc.get("tcp"))
    if doc.get("joined"):
        lines.append(f"  joined a relay by token: addresses and relay peer from {doc['joined']}")

    lines += ["", "peers:"]
    peers = doc.get("peers") or []
    if not peers:
        lines.append("  (none)")
    else:
        rows = []
        for p in peers:
            age = p.get("last_handshake_age")
            rows.append(
                [
                    p["name"],
                    p.get("endpoint") or "(no endpoint)",
                    "handshake " + ("never" if age is None else f"{format_age(age)} ago"),
                    f"rx {format_bytes(p.get('rx_bytes', 0))}",
                    f"tx {format_bytes(p.get('tx_bytes', 0))}",
                    _relay_state(p) if p.get("funnel_ingress") else "",
                ]
            )
        lines += _table(rows)

    lines += ["", "serve:"]
    ports = doc.get("ports") or []
    if not ports:
        lines.append("  (nothing)")
    else:
        width = max(len(_port_label(e)) for e in ports)
        for e in ports:
            reach = ("funnel" if e.get("funnel") else "tailnet only").ljust(12)
            lines.append(f"  {_port_label(e).ljust(width)}  {reach}  {_port_text(e)}")
            mounts = e.get("mounts") or {}
            if mounts:
                path_width = max(len(p) for p in mounts)
                for path, handler in mounts.items():
                    lines.append(
                        f"  {' ' * width}    {path.ljust(path_width)}  {_mount_text(handler)}"
                    )

    lines += ["", "certificates:"]
    certs = doc.get("certificates") or []
    if not certs:
        lines.append("  (no hostnames)")
    else:
        rows = []
        for c in certs:
            if c.get("not_after") is None:
                rows.append([c["hostname"], "NO CERTIFICATE", ""])
                continue
            until = datetime.datetime.fromisoformat(c["not_after"]).astimezone(datetime.UTC)
            rows.append(
                [
                    c["hostname"],
                    f"expires {until:%Y-%m-%d %H:%M} UTC ({format_expiry(c['expires_in'])})",
                    c.get("source") or "",
                ]
            )
        lines += _table(rows)
    renewal = doc.get("renewal") or {}
    if renewal.get("failures"):
        next_in = renewal.get("next_check_in")
        lines.append(
            f"  RENEWAL FAILING ({_plural(int(renewal['failures']), 'ATTEMPT')}): "
            f"{renewal.get('last_error') or 'unknown error'}"
            + (f"; next try in {next_in:.0f} s" if next_in is not None else "")
        )

    open_ingress = (doc.get("ingress") or {}).get("open")
    lines += ["", "ingress:"]
    lines.append(
        "  open connections: "
        + ("unknown (the kernel owns TCP)" if open_ingress is None else str(open_ingress))
    )

    counters = doc.get("counters") or {}
    shown: list[tuple[str, int]] = []
    for group in ("ingress", "serve", "tls"):
        shown += sorted((counters.get(group) or {}).items())
    shown += [(f"access_{k}", v) for k, v in sorted((counters.get("access") or {}).items())]
    overlay = counters.get("overlay") or {}
    shown += [(k, overlay[k]) for k in _SUMMARY_COUNTERS if k in overlay]
    drops = sum(v for k, v in overlay.items() if k.startswith("drop_"))
    shown.append(("overlay_drops", drops))
    lines += ["", "counters:"]
    lines += _table([[k, str(v)] for k, v in shown])
    lines += _plugin_lines(doc.get("plugins") or {})
    return "\n".join(lines) + "\n"


def _plugin_lines(plugins: dict[str, Any]) -> list[str]:
    """One block per plugin section: its counters, gauges and refusals by reason."""
    if not plugins:
        return []
    rows = []
    for key, entry in plugins.items():
        where = f"{entry.get('plugin', '?')} [serve {key}]"
        values = [(k, v) for k, v in sorted((entry.get("counters") or {}).items())]
        values += [(k, v) for k, v in sorted((entry.get("gauges") or {}).items())]
        values += [(f"refused {r}", n) for r, n in sorted((entry.get("refused") or {}).items())]
        rows += [[where, k, f"{v:g}" if isinstance(v, float) else str(v)] for k, v in values]
        if not values:
            rows.append([where, "-", ""])
    return ["", "plugins:", *_table(rows)]


def _relay_state(peer: dict[str, Any]) -> str:
    """A relay's state as the node sees it: with several relays, each is listed so."""
    age = peer.get("last_handshake_age")
    up = age is not None and age < 180.0  # WireGuard's Reject-After-Time
    return "funnel-ingress, " + ("session up" if up else "NO SESSION")
