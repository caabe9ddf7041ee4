"""What observability costs on the node's data path (a benchmark, not a test).

    python bench/ops.py [--n 200000]

Measured in one process, side by side:

- per chunk: a flow's ``dataReceived`` through :class:`TrackedFlow` (what every flow gets when
  metrics or an access log are on) against the same inner protocol called directly;
- per request: ``NodeObserver.http_request`` (counters and histogram only; then with a JSON and
  a combined access log line written to /dev/null) against twisted.web's own per-request
  logging (``combinedLogFormatter`` into a file), the reference any twisted.web site pays;
- per scrape: generating the node's /metrics text for 20 peers and 100 mount/code pairs.

Numbers are microseconds per operation (best of 5 runs).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from prometheus_client.exposition import generate_latest  # noqa: E402
from twisted.internet.protocol import Protocol  # noqa: E402
from twisted.web.http import combinedLogFormatter  # noqa: E402
from twisted.web.test.requesthelper import DummyRequest  # noqa: E402

from funnel_tw.config.model import OpsConfig  # noqa: E402
from funnel_tw.daemon.accesslog import AccessLog  # noqa: E402
from funnel_tw.flow import Flow  # noqa: E402
from funnel_tw.node.observe import NodeObserver, TrackedFlow  # noqa: E402
from funnel_tw.serve.web import request_notes  # noqa: E402


def best(n: int, run: Callable[[], None], rounds: int = 5) -> float:
    """Microseconds per call of ``run`` (called n times per round), best round."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            run()
        times.append(time.perf_counter() - start)
    return min(times) / n * 1e6


class Sink(Protocol):
    def dataReceived(self, data: bytes) -> None:
        pass


class Clock:
    def seconds(self) -> float:
        return time.time()


def fake_node(peers: int) -> Any:
    peer_list = [
        SimpleNamespace(name=f"peer{i}", last_handshake=time.time(), rx_bytes=10**9, tx_bytes=10**9)
        for i in range(peers)
    ]
    overlay = SimpleNamespace(
        device=SimpleNamespace(peers=peer_list),
        stats=lambda: {"drop_replay": 3, "drop_filtered": 1, "handshakes": 7},
    )
    counters = {
        "ingress": {"ingress_accepted": 100, "ingress_403": 2},
        "serve": {"flows": 100},
        "tls": {"handshakes": 100},
        "overlay": overlay.stats(),
    }
    return SimpleNamespace(
        reactor=Clock(),
        config=SimpleNamespace(ops=OpsConfig(), path="node.ini"),
        overlay=overlay,
        store=SimpleNamespace(hostnames=("a.example.com",), certificates=dict),
        peers_by_name={},
        counters=lambda: counters,
    )


def request() -> DummyRequest:
    r = DummyRequest([b""])
    r.uri = b"/api/items?page=2"
    r.code = 200
    r.sentLength = 1234
    r.clientproto = b"HTTP/1.1"
    r.requestHeaders.setRawHeaders(b"host", [b"app.example.com"])
    r.requestHeaders.setRawHeaders(b"user-agent", [b"curl/8"])
    request_notes(r).update(started=time.time(), mount="/api/")
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200_000)
    args = parser.parse_args()
    n = args.n
    flow = Flow(
        client=("198.51.100.7", 50000), host="app.example.com", port=443, funnel=True, peer="relay"
    )

    sink = Sink()
    tracked = TrackedFlow(NodeObserver(fake_node(1)), flow, sink, "tcp-forward")
    chunk = b"x" * 1200
    direct = best(n, lambda: sink.dataReceived(chunk))
    wrapped = best(n, lambda: tracked.dataReceived(chunk))
    print(
        f"per chunk   direct {direct:.3f} us, through TrackedFlow {wrapped:.3f} us "
        f"(+{wrapped - direct:.3f} us per ~1200-byte segment)"
    )

    observer = NodeObserver(fake_node(1))
    req = request()
    counters_only = best(n // 4, lambda: observer.http_request(req, flow))
    devnull = os.open(os.devnull, os.O_WRONLY)
    observer.access_log = AccessLog(Path(os.devnull), "json")
    observer.access_log.fd = devnull
    with_json = best(n // 4, lambda: observer.http_request(req, flow))
    observer.access_log.format = "combined"
    with_combined = best(n // 4, lambda: observer.http_request(req, flow))
    reference_file = open(os.devnull, "w")  # noqa: SIM115

    def twisted_log() -> None:
        reference_file.write(combinedLogFormatter("[01/Jan/2025:00:00:00 +0000]", req) + "\n")

    reference = best(n // 4, twisted_log)
    print(
        f"per request counters+histogram {counters_only:.2f} us; with a JSON line "
        f"{with_json:.2f} us; with a combined line {with_combined:.2f} us; "
        f"reference (twisted.web combinedLogFormatter) {reference:.2f} us "
        f"(ratio JSON/reference {with_json / reference:.2f})"
    )

    big = NodeObserver(fake_node(20))
    for i in range(100):
        big.http_requests[(f"/m{i % 20}/", str(200 + i // 20))] = i
    scrape = best(200, lambda: generate_latest(big.registry))
    print(f"per scrape (20 peers, 100 mount/code pairs) {scrape:.0f} us")


if __name__ == "__main__":
    main()
