"""The inspector's own HTTP server: the page, the JSON API in ngrok's shape, live events.

It listens on its own address (``inspect-listen``), never on the overlay, so funnel and
tailnet clients cannot reach it. A browser on the machine can, so it guards against the web:

- **DNS rebinding**: the Host header must be an IP address or ``localhost``, with the port
  it listens on; a name that resolves to 127.0.0.1 (a rebinding attacker's) is refused.
- **Cross-site requests**: POST and DELETE (replay, clear) from a browser must be
  same-origin (``Origin`` equal to the page's own, or ``Sec-Fetch-Site: same-origin``). A
  script (curl, ngrok API clients) sends neither header and is let through, as ngrok does.
- **Reading**: no CORS headers, so another origin cannot read the API; the page is framed by
  nobody (``frame-ancestors 'none'``), runs only its own script (CSP), and shows captured
  bytes as text, never as markup.

Refusals are answered 403, counted and logged with the client ``ip:port``, the Host asked for
and the reason. Request bodies are capped; live event clients are capped, and one that does
not keep up is dropped from the stream (told to reload) rather than buffered without bound.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from importlib import resources
from ipaddress import ip_address
from typing import Any
from urllib.parse import parse_qs

from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.logger import Logger
from twisted.web import resource, server
from zope.interface import implementer

from ..web.hostport import format_host_port, parse_host_port
from .render import API, entry_json
from .replay import ReplayError
from .store import Entry, Store

log = Logger()

STATIC = {
    "": ("index.html", "text/html; charset=utf-8"),
    "index.html": ("index.html", "text/html; charset=utf-8"),
    "app.js": ("app.js", "text/javascript; charset=utf-8"),
    "style.css": ("style.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = {
    b"X-Content-Type-Options": b"nosniff",
    b"X-Frame-Options": b"DENY",
    b"Referrer-Policy": b"no-referrer",
    b"Cache-Control": b"no-store",
    b"Content-Security-Policy": b"default-src 'none'; script-src 'self'; style-src 'self'; "
    b"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    b"form-action 'none'",
}
MAX_EVENT_CLIENTS = 16
PING_SECONDS = 15.0


def _static(name: str) -> bytes:
    return (resources.files("funnel_tw.inspect") / "static" / name).read_bytes()


class InspectRequest(server.Request):
    """A request of the inspector's site: the body is capped (a replay carries one edited
    request, so twice the body limit and a head is plenty)."""

    max_body = 1 << 20

    def handleContentChunk(self, data: bytes) -> None:
        if self.content is not None and self.content.tell() + len(data) > self.max_body:
            self.channel._respondToBadRequestAndDisconnect()
            return
        super().handleContentChunk(data)


class InspectSite(server.Site):
    requestFactory = InspectRequest
    noisy = False

    def __init__(self, root: InspectRoot, reactor: Any, max_body: int) -> None:
        super().__init__(root, reactor=reactor, timeout=60)
        self.displayTracebacks = False
        capped: Any = type("InspectRequest", (InspectRequest,), {"max_body": max_body})
        self.requestFactory = capped

    def log(self, request: Any) -> None:  # no access log lines for the local page
        pass


class InspectRoot(resource.Resource):
    """Every request passes the gate first, then goes to the page, the API or the events."""

    isLeaf = True

    def __init__(
        self,
        store: Store,
        replay: Callable[[Entry, bytes | None], None],
        show_secrets: bool,
        reactor: Any,
    ) -> None:
        super().__init__()
        self.store = store
        self.replay = replay
        self.show_secrets = show_secrets
        self.reactor = reactor
        self.port = 0  # the port it listens on, set once bound
        self.counters: dict[str, int] = {}
        self.events: list[_EventClient] = []

    # --- the gate -----------------------------------------------------------------------

    def refusal(self, request: server.Request) -> str | None:
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        if not self._own_host(host):
            return f"Host {host!r} is not this inspector's address (DNS rebinding?)"
        if request.method in (b"GET", b"HEAD"):
            return None
        origin = request.getHeader(b"origin")
        if origin is not None:
            if origin.decode("latin-1") != f"http://{host}":
                return f"Origin {origin.decode('latin-1')!r} is not this page's"
            return None
        fetch_site = request.getHeader(b"sec-fetch-site")
        if fetch_site is not None and fetch_site not in (b"same-origin", b"none"):
            return f"a {fetch_site.decode('latin-1')} request from a browser"
        return None

    def _own_host(self, host: str) -> bool:
        parsed = parse_host_port(host)
        if parsed is None:
            name, port = host, 80  # a browser leaves out :80
        else:
            name, port = parsed
        if port != self.port:
            return False
        if name.lower() == "localhost":
            return True
        try:
            ip_address(name)
        except ValueError:
            return False
        return True

    def render(self, request: server.Request) -> bytes | int:
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        why = self.refusal(request)
        if why is not None:
            self.counters["refused"] = self.counters.get("refused", 0) + 1
            peer = request.getClientAddress()
            log.info(
                "inspector refused {client} for {host}: {why}",
                client=format_host_port(getattr(peer, "host", "?"), getattr(peer, "port", 0)),
                host=(request.getHeader(b"host") or b"").decode("latin-1"),
                why=why,
            )
            return _json(request, {"error": why}, 403)
        path = request.path.decode("latin-1")
        if path == API:
            return self._requests(request)
        if path.startswith(API + "/"):
            return self._one(request, path[len(API) + 1 :])
        if path == "/api/events":
            return self._events(request)
        if path in ("/api", "/api/"):
            return _json(request, {"uri": "/api/", "requests": API, "events": "/api/events"})
        static = STATIC.get(path.lstrip("/"))
        if static is not None and request.method in (b"GET", b"HEAD"):
            request.setHeader(b"content-type", static[1].encode())
            return _static(static[0])
        return _json(request, {"error": "not found"}, 404)

    # --- the API ------------------------------------------------------------------------

    def _requests(self, request: server.Request) -> bytes:
        if request.method == b"GET":
            args = request.args or {}
            limit = _int_arg(args.get(b"limit"))
            tunnel = (args.get(b"tunnel_name") or [None])[0]
            full = (args.get(b"summary") or [b"0"])[0] in (b"0", b"no", b"false")
            entries = self.store.newest(None if tunnel else limit)
            if tunnel is not None:
                entries = [e for e in entries if e.mount == tunnel.decode("latin-1")]
                entries = entries[:limit] if limit is not None else entries
            shown = [entry_json(e, self.show_secrets, full) for e in entries]
            return _json(request, {"uri": API, "requests": shown})
        if request.method == b"DELETE":
            self.store.clear()
            request.setResponseCode(204)
            return b""
        if request.method == b"POST":
            return self._replay(request)
        request.setHeader(b"allow", b"GET, POST, DELETE")
        return _json(request, {"error": "method not allowed"}, 405)

    def _replay(self, request: server.Request) -> bytes:
        body = request.content.read() if request.content is not None else b""
        content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip()
        try:
            if content_type == b"application/x-www-form-urlencoded":
                form = parse_qs(body.decode("latin-1"))
                params: Any = {k: v[0] for k, v in form.items()}
            else:
                params = json.loads(body or b"{}")
            if not isinstance(params, dict) or not isinstance(params.get("id"), str):
                raise ValueError('send {"id": "..."} (and "raw", base64 of an edited request)')
            raw = params.get("raw")
            edited = None if raw in (None, "") else base64.b64decode(raw, validate=True)
        except (ValueError, binascii.Error, UnicodeDecodeError) as e:
            return _json(request, {"error": f"bad replay request: {e}"}, 400)
        entry = self.store.get(params["id"])
        if entry is None:
            return _json(request, {"error": f"no captured request {params['id']}"}, 404)
        try:
            self.replay(entry, edited)
        except ReplayError as e:
            return _json(request, {"error": str(e)}, 409)
        request.setResponseCode(204)
        return b""

    def _one(self, request: server.Request, entry_id: str) -> bytes:
        entry = self.store.get(entry_id)
        if request.method != b"GET":
            request.setHeader(b"allow", b"GET")
            return _json(request, {"error": "method not allowed"}, 405)
        if entry is None:
            return _json(request, {"error": f"no captured request {entry_id}"}, 404)
        return _json(request, entry_json(entry, self.show_secrets))

    # --- live events --------------------------------------------------------------------

    def _events(self, request: server.Request) -> bytes | int:
        if request.method != b"GET":
            return _json(request, {"error": "method not allowed"}, 405)
        if len(self.events) >= MAX_EVENT_CLIENTS:
            return _json(request, {"error": "too many live pages open"}, 503)
        client = _EventClient(self, request)
        self.events.append(client)
        return server.NOT_DONE_YET


@implementer(IPushProducer)
class _EventClient:
    """One page's live event stream (server-sent events). Paused by its transport when it
    does not keep up: events are then dropped and a ``resync`` sent once it drains."""

    def __init__(self, root: InspectRoot, request: server.Request) -> None:
        self.root = root
        self.request = request
        self.paused = False
        self.missed = False
        self.ping: IDelayedCall | None = None
        request.setHeader(b"content-type", b"text/event-stream")
        request.registerProducer(self, True)
        request.write(b"retry: 2000\n\n")
        root.store.listeners.append(self.heard)
        request.notifyFinish().addBoth(self.gone)
        self._schedule()

    def heard(self, what: str, entry: Entry | None) -> None:
        if self.paused:
            self.missed = True
            return
        data = {} if entry is None else entry_json(entry, self.root.show_secrets, full=False)
        self.request.write(b"event: %s\ndata: %s\n\n" % (what.encode(), json.dumps(data).encode()))

    def _schedule(self) -> None:
        self.ping = self.root.reactor.callLater(PING_SECONDS, self._ping)

    def _ping(self) -> None:
        if not self.paused:
            self.request.write(b": ping\n\n")
        self._schedule()

    def gone(self, _: object) -> None:
        if self.heard in self.root.store.listeners:
            self.root.store.listeners.remove(self.heard)
        if self in self.root.events:
            self.root.events.remove(self)
        if self.ping is not None and self.ping.active():
            self.ping.cancel()
        self.ping = None

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self.missed:
            self.missed = False
            self.root.counters["events_resync"] = self.root.counters.get("events_resync", 0) + 1
            self.request.write(b"event: resync\ndata: {}\n\n")

    def stopProducing(self) -> None:
        self.gone(None)


def _int_arg(values: list[bytes] | None) -> int | None:
    if not values:
        return None
    try:
        return max(0, int(values[0]))
    except ValueError:
        return None


def _json(request: server.Request, data: Any, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(data, indent=None).encode() + b"\n"
