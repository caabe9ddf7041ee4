"""Our WireGuard side for the interop tests, run inside a test namespace.

    python -m tests.interop.ourpeer --config node.ini [--ping ADDR ...] [--count N]
        [--interval S] [--timeout S] [--duration S] [--rekey-after S]

Brings up funnel-tw's userspace WireGuard from node.ini with ICMP echo on its addresses, and
prints JSON lines: ready, handshake, pong/lost per ping, and stats at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from ipaddress import ip_address
from typing import Any

from twisted.internet import defer, task

from funnel_tw.config import load_node_config
from funnel_tw.overlay.interface import OverlayInterface, PingTimeout
from funnel_tw.wireguard.constants import DEFAULT, Constants
from funnel_tw.wireguard.device import Peer


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def run(reactor: Any, options: argparse.Namespace) -> None:
    config = load_node_config(options.config)
    constants = Constants.shortened(options.rekey_after) if options.rekey_after else DEFAULT
    overlay = OverlayInterface(
        reactor,
        private_key=config.private_key,
        addresses=config.addresses,
        peers=config.peers,
        listen_port=config.listen_port,
        mtu=config.mtu,
        constants=constants,
    )
    overlay.start()
    assert overlay.tunnel is not None

    def on_event(kind: str, peer: Peer, initiator: bool) -> None:
        if kind == "handshake-complete":
            emit(event="handshake", peer=peer.name, initiator=initiator)

    overlay.tunnel.event_handlers.append(on_event)
    done: defer.Deferred[None] = defer.Deferred()
    reported: list[bool] = []

    def report_stats() -> None:
        if not reported:
            reported.append(True)
            emit(event="stats", counters=overlay.stats())

    # SIGTERM/SIGINT stop the reactor; the stats still go out on the way down.
    reactor.addSystemEventTrigger("before", "shutdown", report_stats)
    emit(event="ready", port=overlay.port)

    async def ping_all(target: str) -> None:
        dst = ip_address(target)
        pending = []
        for seq in range(options.count):
            d = overlay.ping(dst, seq, timeout=options.timeout)

            def report(rtt: float, seq: int = seq) -> None:
                emit(event="pong", dst=target, seq=seq, rtt=rtt)

            def lost(failure: Any, seq: int = seq) -> None:
                failure.trap(PingTimeout)
                emit(event="lost", dst=target, seq=seq)

            d.addCallbacks(report, lost)
            pending.append(d)
            await task.deferLater(reactor, options.interval, lambda: None)
        await defer.gatherResults(pending)

    if options.ping:
        pings = defer.gatherResults(
            [defer.Deferred.fromCoroutine(ping_all(t)) for t in options.ping]
        )
        if options.duration is None:
            pings.addBoth(lambda _: _finish(done))
    if options.duration is not None:
        reactor.callLater(options.duration, _finish, done)
    await done
    report_stats()
    overlay.stop()


def _finish(done: defer.Deferred[None]) -> None:
    if not done.called:
        done.callback(None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--ping", action="append", default=[])
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--rekey-after", type=float, default=None)
    options = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor, options)))


if __name__ == "__main__":
    main()
