"""Our WireGuard side for the interop tests, run inside a test namespace.

    python -m tests.interop.ourpeer --config node.ini [--ping ADDR ...] [--count N]
        [--interval S] [--timeout S] [--duration S] [--rekey-after S]
        [--tcp-sink PORT] [--tcp-source PORT --bytes N]
        [--tcp-send HOST:PORT --bytes N [--connections K]] [--tcp-fetch HOST:PORT]

Brings up funnel-tw's userspace WireGuard and TCP/IP stack from node.ini (ICMP echo on its
addresses) and prints JSON lines: ready, handshake, pong/lost per ping, the TCP results, and
stats at the end. TCP modes:

- ``--tcp-sink PORT``: accept; read to EOF; answer "<bytes> <sha256>\n"; close.
  Prints {"event": "sink", "bytes", "sha256", "seconds"} per connection.
- ``--tcp-source PORT --bytes N``: accept; send N random bytes; close.
  Prints {"event": "source", "bytes", "sha256", "seconds"}.
- ``--tcp-send HOST:PORT --bytes N [--connections K]``: K connections, each sends N random
  bytes, half-closes and reads the answer to EOF. Prints {"event": "sent", "bytes", "sha256",
  "reply", "seconds"} per connection (or {"event": "tcp-error", "error"}), then finishes.
- ``--tcp-fetch HOST:PORT``: connect, read to EOF. Prints {"event": "fetched", "bytes",
  "sha256", "seconds"}, then finishes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from ipaddress import ip_address
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.internet.interfaces import IHalfCloseableProtocol
from zope.interface import implementer

from funnel_tw.config import load_node_config
from funnel_tw.overlay.factory import build_overlay
from funnel_tw.overlay.interface import PingTimeout
from funnel_tw.wireguard.constants import DEFAULT, Constants
from funnel_tw.wireguard.device import Peer


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


_CHUNK = 256 * 1024


class _Sender:
    """A push producer writing ``total`` random bytes in chunks, honouring backpressure."""

    def __init__(self, transport: Any, total: int, then: Any, reactor: Any) -> None:
        self.transport = transport
        self.left = total
        self.hash = hashlib.sha256()
        self.paused = False
        self.then = then
        transport.registerProducer(self, True)
        reactor.callLater(0, self.resumeProducing)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        while self.left > 0 and not self.paused:
            chunk = os.urandom(min(_CHUNK, self.left))
            self.left -= len(chunk)
            self.hash.update(chunk)
            self.transport.write(chunk)
        if self.left <= 0 and self.then is not None:
            then, self.then = self.then, None
            self.transport.unregisterProducer()
            then(self.hash.hexdigest())

    def stopProducing(self) -> None:
        self.left = 0
        self.then = None


@implementer(IHalfCloseableProtocol)
class _Tcp(protocol.Protocol):
    """One connection in any of the TCP modes."""

    def __init__(self, mode: str, nbytes: int, reactor: Any) -> None:
        self.mode = mode
        self.nbytes = nbytes
        self.reactor = reactor
        self.hash = hashlib.sha256()
        self.count = 0
        self.reply = b""
        self.sent_hash = ""
        self.done: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.started = self.reactor.seconds()
        if self.mode in ("source", "send"):
            _Sender(self.transport, self.nbytes, self._sent, self.reactor)

    def _sent(self, digest: str) -> None:
        self.sent_hash = digest
        if self.mode == "source":
            self.transport.loseConnection()
        else:
            self.transport.loseWriteConnection()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self.mode == "send":
            self.reply += data
        else:
            self.hash.update(data)
            self.count += len(data)

    def readConnectionLost(self) -> None:
        if self.mode == "sink":
            self.transport.write(f"{self.count} {self.hash.hexdigest()}\n".encode())
            self.transport.loseConnection()
        elif self.mode != "source":
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        seconds = self.reactor.seconds() - self.started
        if self.mode == "sink":
            emit(event="sink", bytes=self.count, sha256=self.hash.hexdigest(), seconds=seconds)
        elif self.mode == "source":
            emit(event="source", bytes=self.nbytes, sha256=self.sent_hash, seconds=seconds)
        elif self.mode == "send":
            emit(
                event="sent",
                bytes=self.nbytes,
                sha256=self.sent_hash,
                reply=self.reply.decode(errors="replace").strip(),
                seconds=seconds,
                ended=type(reason.value).__name__ if reason is not None else "",
            )
        else:
            emit(event="fetched", bytes=self.count, sha256=self.hash.hexdigest(), seconds=seconds)
        if not self.done.called:
            self.done.callback(None)


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


async def run(reactor: Any, options: argparse.Namespace) -> None:
    config = load_node_config(options.config)
    constants = Constants.shortened(options.rekey_after) if options.rekey_after else DEFAULT
    overlay = build_overlay(
        reactor,
        network=config.network,
        private_key=config.private_key,
        addresses=config.addresses,
        peers=config.peers,
        listen_port=config.listen_port,
        mtu=config.mtu,
        constants=constants,
        restricted={
            p.name: frozenset({config.peerapi_port}) for p in config.peers if p.funnel_ingress
        },
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

    for mode, port in (("sink", options.tcp_sink), ("source", options.tcp_source)):
        if port:
            factory = protocol.Factory.forProtocol(
                lambda mode=mode: _Tcp(mode, options.bytes, reactor)
            )
            await overlay.server_endpoint(port).listen(factory)

    async def client(mode: str, target: str) -> None:
        host, port = _host_port(target)
        conn = _Tcp(mode, options.bytes, reactor)
        try:
            await overlay.client_endpoint(host, port, timeout=options.timeout * 5).connect(
                protocol.Factory.forProtocol(lambda: conn)
            )
        except Exception as e:
            emit(event="tcp-error", error=repr(e))
            return
        await conn.done

    clients = []
    if options.tcp_send:
        clients = [client("send", options.tcp_send) for _ in range(options.connections)]
    elif options.tcp_fetch:
        clients = [client("fetch", options.tcp_fetch)]
    if clients:
        runs = defer.gatherResults([defer.Deferred.fromCoroutine(c) for c in clients])
        if options.duration is None:
            runs.addBoth(lambda _: _finish(done))

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
    parser.add_argument("--tcp-sink", type=int, default=0)
    parser.add_argument("--tcp-source", type=int, default=0)
    parser.add_argument("--tcp-send", default="")
    parser.add_argument("--tcp-fetch", default="")
    parser.add_argument("--bytes", type=int, default=1 << 20)
    parser.add_argument("--connections", type=int, default=1)
    options = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor, options)))


if __name__ == "__main__":
    main()
