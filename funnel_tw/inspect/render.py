"""Entries as ngrok's agent API shows captured requests (``/api/requests/http``), with secrets
masked unless the node is told to show them. No Twisted here.

ngrok's fields are kept as they are (``uri``, ``id``, ``tunnel_name``, ``remote_addr``,
``start``, ``duration`` in nanoseconds, ``request`` and ``response`` with ``method``/``status``,
``proto``, ``headers`` as lists of values, ``uri``, ``raw`` as base64 of the HTTP message);
ours are added beside them, as ngrok's API promises clients to tolerate: ``client``, ``host``,
``port``, ``mount``, ``funnel``, ``user``, ``error``, ``replay_of``, and a ``body`` object with
the size, the captured length and whether it was truncated.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from ..web.hostport import format_host_port
from .store import Body, Entry, Headers

MASK = "[masked]"
SECRET_HEADERS = frozenset({b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"})
API = "/api/requests/http"


def mask_value(name: bytes, value: bytes) -> bytes:
    """The shown form of a secret header's value: the scheme of a credential, the names of
    cookies (the node's OIDC session cookie among them) and a Set-Cookie's attributes stay."""
    lower = name.lower()
    if lower in (b"authorization", b"proxy-authorization"):
        scheme, space, _ = value.strip().partition(b" ")
        return scheme + b" " + MASK.encode() if space else MASK.encode()
    if lower == b"cookie":
        return b"; ".join(
            part.strip().partition(b"=")[0] + b"=" + MASK.encode()
            for part in value.split(b";")
            if part.strip()
        )
    if lower == b"set-cookie":
        first, semi, attributes = value.partition(b";")
        return first.partition(b"=")[0].strip() + b"=" + MASK.encode() + semi + attributes
    return value


def shown_headers(headers: Headers, show_secrets: bool) -> Headers:
    if show_secrets:
        return headers
    return [
        (name, [mask_value(name, v) for v in values] if name.lower() in SECRET_HEADERS else values)
        for name, values in headers
    ]


def _headers_json(headers: Headers) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, values in headers:
        out.setdefault(name.decode("latin-1"), []).extend(v.decode("latin-1") for v in values)
    return out


def _head_bytes(first_line: bytes, headers: Headers) -> bytes:
    lines = [first_line]
    lines += [name + b": " + value for name, values in headers for value in values]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def request_raw(entry: Entry, show_secrets: bool) -> bytes:
    """The request as an HTTP/1.1-style message (an HTTP/2 one keeps its proto in the line)."""
    line = b"%s %s %s" % (entry.method, entry.uri, entry.proto)
    return _head_bytes(line, shown_headers(entry.request_headers, show_secrets)) + bytes(
        entry.request_body.data
    )


def response_raw(entry: Entry, show_secrets: bool) -> bytes:
    line = b"%s %d %s" % (entry.proto, entry.status or 0, entry.reason)
    return _head_bytes(line, shown_headers(entry.response_headers, show_secrets)) + bytes(
        entry.response_body.data
    )


def _body_json(body: Body, with_data: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "size": body.size,
        "captured": len(body.data),
        "truncated": body.truncated,
    }
    if with_data:
        out["data"] = base64.b64encode(body.data).decode("ascii")
    return out


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).astimezone().isoformat(timespec="milliseconds")


def entry_json(entry: Entry, show_secrets: bool, full: bool = True) -> dict[str, Any]:
    """One captured request; ``full=False`` leaves out the headers, the raw messages and the
    body data (the page's list and live events: what a row shows)."""
    request: dict[str, Any] = {
        "method": entry.method.decode("latin-1"),
        "proto": entry.proto.decode("latin-1"),
        "uri": entry.uri.decode("latin-1"),
        "body": _body_json(entry.request_body, full),
    }
    if full:
        request["headers"] = _headers_json(shown_headers(entry.request_headers, show_secrets))
        request["raw"] = base64.b64encode(request_raw(entry, show_secrets)).decode("ascii")
    response: dict[str, Any] | None = None
    if entry.status is not None:
        response = {
            "status": f"{entry.status} {entry.reason.decode('latin-1')}".strip(),
            "status_code": entry.status,
            "proto": entry.proto.decode("latin-1"),
            "body": _body_json(entry.response_body, full),
        }
        if full:
            response["headers"] = _headers_json(shown_headers(entry.response_headers, show_secrets))
            response["raw"] = base64.b64encode(response_raw(entry, show_secrets)).decode("ascii")
    return {
        "uri": f"{API}/{entry.id}",
        "id": entry.id,
        "tunnel_name": entry.mount,
        "remote_addr": entry.client[0],
        "start": rfc3339(entry.start),
        "duration": round((entry.duration or 0.0) * 1e9),
        "request": request,
        "response": response,
        "client": format_host_port(*entry.client),
        "host": entry.host,
        "port": entry.port,
        "mount": entry.mount,
        "funnel": entry.funnel,
        "user": entry.user,
        "error": entry.error,
        "replay_of": entry.replay_of,
        "replayable": replay_refusal(entry) is None,
    }


def replay_refusal(entry: Entry) -> str | None:
    """Why this entry cannot be sent again as it is, or None."""
    if entry.upgrade:
        return "an Upgrade (WebSocket) request cannot be replayed"
    if entry.request_body.truncated:
        return (
            f"its body was truncated ({len(entry.request_body.data)} of"
            f" {entry.request_body.size} bytes kept): raise inspect-body-limit"
        )
    return None
