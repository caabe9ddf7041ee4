"""The human summary ``funnel-tw status --config relay.ini`` prints from the relay's document."""

from __future__ import annotations

from typing import Any

from ..daemon.localapi.text import format_age, format_bytes, format_tcp_buffers, table


def format_relay_status(doc: dict[str, Any]) -> str:
    lines: list[str] = []
    lines.append(f"funnel-tw {doc.get('version', '?')} relay")
    udp = doc.get("listen_port")
    ports = ", ".join(str(p) for p in doc.get("public_ports") or [])
    lines.append(
        f"  overlay {', '.join(doc.get('addresses') or [])}, "
        f"WireGuard UDP port {udp if udp is not None else '(not listening)'}, "
        f"public {doc.get('public_address')} ports {ports}"
    )
    lines += format_tcp_buffers(doc.get("tcp"))
    lines += ["", "nodes:"]
    nodes = doc.get("nodes") or []
    if not nodes:
        lines.append("  (none)")
    else:
        rows = []
        for n in nodes:
            age = n.get("last_handshake_age")
            health = n.get("health") or {}
            if not health:
                state = "?"
            elif health.get("up"):
                state = "in service"
            else:
                state = f"OUT ({health.get('reason') or '?'})"
            rows.append(
                [
                    n["name"] + (" (enrolled)" if n.get("enrolled") else ""),
                    n.get("endpoint") or "(no endpoint)",
                    "handshake " + ("never" if age is None else f"{format_age(age)} ago"),
                    "session up" if n.get("session") else "NO SESSION",
                    state,
                    f"rx {format_bytes(n.get('rx_bytes', 0))}",
                    f"tx {format_bytes(n.get('tx_bytes', 0))}",
                    f"{n.get('open_connections', 0)} open",
                    ", ".join(n.get("hostnames") or []),
                ]
            )
        lines += table(rows)
    pools = doc.get("pools") or []
    if pools:
        lines += ["", "pools:"]
        lines += table(
            [
                [
                    p["name"],
                    p.get("balance", "?"),
                    f"{len(p.get('in_service') or [])} of {len(p.get('nodes') or [])} in service",
                    ", ".join(p.get("nodes") or []),
                ]
                for p in pools
            ]
        )
    connections = doc.get("connections") or {}
    lines += ["", "connections:"]
    lines.append(
        f"  open {connections.get('open', 0)} of at most {connections.get('max', '?')}"
        f" ({connections.get('waiting_for_node', 0)} not yet with a node)"
    )
    links = (doc.get("tcp_fallback") or {}).get("links")
    if links:
        lines += ["", "TCP fallback links (nodes whose UDP is blocked):"]
        lines += [f"  {link}" for link in links]
    counters = doc.get("counters") or {}
    shown = sorted((counters.get("public") or {}).items())
    overlay = counters.get("overlay") or {}
    summary = ("handshakes", "rx_datagrams", "app_errors", "stack_errors")
    shown += [(k, overlay[k]) for k in summary if k in overlay]
    shown.append(("overlay_drops", sum(v for k, v in overlay.items() if k.startswith("drop_"))))
    lines += ["", "counters:"]
    lines += table([[k, str(v)] for k, v in shown])
    return "\n".join(lines) + "\n"


def format_nodes(doc: dict[str, Any]) -> str:
    """``funnel-tw nodes``: one row per node, static and enrolled."""
    rows = [["NAME", "KIND", "KEY", "ADDRESSES", "HANDSHAKE", "ENDPOINT", "HOSTNAMES"]]
    for n in doc.get("nodes") or []:
        age = n.get("last_handshake_age")
        rows.append(
            [
                n["name"],
                n.get("kind", "?"),
                (n.get("public_key") or "")[:8] + "...",
                ", ".join(n.get("addresses") or []),
                "never" if age is None else f"{format_age(age)} ago",
                n.get("endpoint") or "-",
                ", ".join(n.get("hostnames") or []),
            ]
        )
    lines = table(rows, indent="")
    if len(rows) == 1:
        lines.append("(no nodes)")
    refusals = doc.get("enroll") or {}
    if doc.get("enroll_address"):
        shown = ", ".join(f"{k} {v}" for k, v in sorted(refusals.items())) or "none yet"
        lines += ["", f"enroll listener {doc['enroll_address']}: {shown}"]
    return "\n".join(lines) + "\n"
