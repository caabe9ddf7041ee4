"""What the request inspector's capture costs per request, on and off (a benchmark, not a test).

    python bench/inspector.py [--requests 20000] [--rounds 5]
    python bench/inspector.py --stack [--seconds 5] [--rounds 2]

In one process, without sockets or TLS: HTTP/1.1 keep-alive requests are fed to one node HTTPS
site (ServeSite: request parsing, MountRouter, a mount's resource, the response written to an
in-memory transport), built as the dispatcher builds it, side by side in the same run:

- off: the site's request class is serve's StreamingRequest (what a node without
  ``inspect-listen`` runs: the capture code is never entered);
- on: the capturing request class (head copied, bodies copied up to the limit, the entry
  filed in a ring of 500), with no page open;
- on + page: the same with one live page open (each entry's summary made as JSON twice, when
  it starts and when it ends, as the live events send it).

Loads: GET of a 96-byte ``text:`` mount; GET of a 16 KiB answer; POST of a 4 KiB body. Rounds
alternate off and on so that drift on a shared machine hits both; the best round of each is
printed, with the difference per request. A full request through TLS and the proxy costs
some hundreds of microseconds here (bench/node.py), for scale.

With ``--stack``: the whole node instead, twice in one run, each in a process of its own
(bench/_node_stack.py: test front, peerAPI, TLS, the reverse proxy, the sample backend), one
without and one with ``inspect-listen``; wrk (HTTP/1.1 keep-alive, 64 connections) and h2load
(HTTP/2, 32 connections x 10 streams) load each in turn, ``--rounds`` times, alternating.
Needs wrk and h2load.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from twisted.internet import task  # noqa: E402
from twisted.web import resource  # noqa: E402

from funnel_tw import keys  # noqa: E402
from funnel_tw.config import load_node_config  # noqa: E402
from funnel_tw.flow import Flow  # noqa: E402
from funnel_tw.inspect.capture import Capturer  # noqa: E402
from funnel_tw.inspect.render import entry_json  # noqa: E402
from funnel_tw.inspect.replay import ReplayTransport  # noqa: E402
from funnel_tw.inspect.store import Store  # noqa: E402
from funnel_tw.serve.model import ServeConfig  # noqa: E402
from funnel_tw.serve.streaming import StreamingRequest  # noqa: E402
from funnel_tw.serve.web import MountRouter, ServeSite  # noqa: E402

SMALL = "Hello from the backend: a small response body of about one hundred bytes, as an API."
BIG = b"x" * 16384


class Answer(resource.Resource):
    """Stands in for a proxy mount: reads the body, answers 16 KiB (no backend, no sockets)."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.content.read()
        request.setHeader(b"content-type", b"application/octet-stream")
        return BIG


def site(serve: ServeConfig, clock: task.Clock, factory: Any) -> tuple[Any, ReplayTransport]:
    flow = Flow(("198.51.100.7", 40000), "node.example.com", 443, True, "relay")
    router = MountRouter(serve, 443, flow, lambda *a: Answer())
    s = ServeSite(router, clock)
    s.requestFactory = factory
    s.flow = flow
    channel = s.buildProtocol(None)
    transport = ReplayTransport(clock, flow.client, "")
    transport.protocol = channel
    channel.makeConnection(transport)
    return channel, transport


def per_request(channel: Any, transport: ReplayTransport, data: bytes, n: int) -> float:
    before = transport.written
    start = time.perf_counter()
    for _ in range(n):
        channel.dataReceived(data)
    elapsed = time.perf_counter() - start
    assert transport.written - before >= n * 100, "no answers"
    return elapsed / n * 1e6


def stack(args: argparse.Namespace) -> None:
    import json
    import subprocess

    from node import run_h2load, run_wrk  # bench/node.py: the same load runners

    load = argparse.Namespace(connections=32, streams=10, wrk_connections=64)
    stacks: dict[str, tuple[subprocess.Popen[str], dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for mode, extra in (("off", []), ("on", ["--inspect"])):
                child = subprocess.Popen(
                    [sys.executable, str(HERE / "_node_stack.py"), "--sample-backend", *extra],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                assert child.stdout is not None
                stacks[mode] = (child, json.loads(child.stdout.readline()))
            results: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for _ in range(args.rounds):
                for mode, (_, info) in stacks.items():
                    url = f"https://localhost:{info['front']}/small"
                    results.setdefault(("wrk HTTP/1.1", mode), []).append(
                        run_wrk(url, load, args.seconds)
                    )
                    results.setdefault(("h2load HTTP/2", mode), []).append(
                        run_h2load(url, load, Path(tmp) / "h2load.log", args.seconds)
                    )
        finally:
            for child, _ in stacks.values():
                child.terminate()
                child.wait(timeout=10)
    print(f"inspector capture, whole node (best of {args.rounds} runs of {args.seconds:g} s)")
    print(
        f"  {'load':16}{'off req/s':>12}{'on req/s':>12}{'on/off':>8}{'p50 off':>10}{'p50 on':>10}"
    )
    for title in ("wrk HTTP/1.1", "h2load HTTP/2"):
        off = max(results[(title, "off")], key=lambda r: r["rps"])
        on = max(results[(title, "on")], key=lambda r: r["rps"])
        errors = off["errors"] + on["errors"]
        print(
            f"  {title:16}{off['rps']:12.0f}{on['rps']:12.0f}{on['rps'] / off['rps']:8.2f}"
            f"{off['p50_ms']:8.1f}ms{on['p50_ms']:8.1f}ms"
            + (f"  errors {errors}" if errors else "")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stack", action="store_true", help="the whole node, wrk and h2load")
    parser.add_argument("--seconds", type=float, default=5.0, help="per load run (--stack)")
    args = parser.parse_args()
    if args.stack:
        stack(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        ini = Path(tmp) / "node.ini"
        ini.write_text(
            f"""[node]
private-key = {keys.encode_key(keys.generate_private_key())}
address = 100.64.0.2/32
hostname = node.example.com
state-dir = {tmp}/state

[serve 443]
funnel = yes
/ = text:{SMALL}
/api/ = http://127.0.0.1:1
"""
        )
        serve = ServeConfig.from_node_config(load_node_config(ini))
    clock = task.Clock()
    store = Store(500)
    capturer = Capturer(store, clock, 65536)
    watched = Store(500)
    watched.listeners.append(lambda what, e: e is not None and entry_json(e, False, full=False))
    page = Capturer(watched, clock, 65536)
    head = b"Host: node.example.com\r\nUser-Agent: bench\r\nAccept: */*\r\n"
    loads = [
        ("GET 96 B text", b"GET /hello HTTP/1.1\r\n" + head + b"\r\n"),
        ("GET 16 KiB", b"GET /api/x HTTP/1.1\r\n" + head + b"\r\n"),
        (
            "POST 4 KiB body",
            b"POST /api/x HTTP/1.1\r\n" + head + b"Content-Length: 4096\r\n\r\n" + b"y" * 4096,
        ),
    ]
    print(f"inspector capture, per request ({args.requests} requests, best of {args.rounds})")
    modes = ("off", "on", "on + page")
    print(f"  {'load':18}" + "".join(f"{m:>12}" for m in modes) + "   cost (on, on + page)")
    for title, data in loads:
        best = dict.fromkeys(modes, float("inf"))
        ends = {
            "off": site(serve, clock, StreamingRequest),
            "on": site(serve, clock, capturer.request_factory),
            "on + page": site(serve, clock, page.request_factory),
        }
        for _ in range(args.rounds):
            for mode in modes:
                channel, transport = ends[mode]
                per_request(channel, transport, data, 200)  # warm
                best[mode] = min(best[mode], per_request(channel, transport, data, args.requests))
        off, on, watched_on = (best[m] for m in modes)
        print(
            f"  {title:18}{off:9.1f} us{on:9.1f} us{watched_on:9.1f} us"
            f"   {on - off:+6.1f} us, {watched_on - off:+6.1f} us"
        )
    print(f"  ring: {len(store)} entries kept, {store.evicted} evicted")


if __name__ == "__main__":
    main()
