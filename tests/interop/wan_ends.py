"""The two ends of the TCP-over-distance transfers (tests/interop/wan.py), run in a namespace.

    python -m tests.interop.wan_ends kernel [--cc cubic] --port P --seconds D
    python -m tests.interop.wan_ends ours --config node.ini --port P --seconds D

``kernel`` uses the Linux kernel's TCP (behind wireguard-go's TUN device); ``ours`` brings up
funnel-tw's userspace WireGuard and TCP/IP stack from node.ini. Both do the same thing:

- a sink on TCP port P: it takes one connection at a time, counts what arrives during the D
  seconds after the first byte, prints {"event": "result", "bytes", "seconds", "early"} and
  resets the connection (so the sender stops at once);
- commands, one a line on stdin:
  ``send HOST PORT BOUND``: connect and send as fast as the connection takes it until the
  peer resets it (or BOUND seconds pass); prints {"event": "sent", "bytes", "seconds",
  "error", "info"} where ``info`` is the sender's own view (kernel: TCP_INFO; ours: the change
  in the stack's counters);
  ``ping HOST``: (ours only) echo HOST until it answers, {"event": "pong"} or {"event": "lost"};
  ``trace PATH`` / ``trace -``: (ours only) start / stop the stack's sender event log
  (funnel_tw/netstack/trace.py) into PATH;
  ``quit``.

Prints {"event": "ready"} once listening. Bounded: it exits after ``--duration`` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import threading
import time
from typing import IO, Any

_CHUNK = 256 * 1024
_PATTERN = os.urandom(4 << 20)  # what senders send, over and over: no CPU spent on randomness
_LOCK = threading.Lock()


def emit(**fields: Any) -> None:
    with _LOCK:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()


# =========================================================================== kernel TCP

# struct tcp_info (linux/tcp.h): the fields reported, by byte offset
_TCP_INFO = {
    "options": (5, "B"),  # TCPI_OPT_TIMESTAMPS 1, _SACK 2, _WSCALE 4
    "rto_us": (8, "I"),
    "snd_mss": (16, "I"),
    "rtt_us": (68, "I"),
    "rttvar_us": (72, "I"),
    "snd_ssthresh": (76, "I"),
    "snd_cwnd": (80, "I"),
    "reordering": (88, "I"),
    "total_retrans": (100, "I"),
    "pacing_rate": (104, "Q"),
    "min_rtt_us": (148, "I"),
    "data_segs_out": (156, "I"),
    "delivery_rate": (160, "Q"),
    "busy_time_us": (168, "Q"),
    "rwnd_limited_us": (176, "Q"),
    "sndbuf_limited_us": (184, "Q"),
    "bytes_retrans": (208, "Q"),
    "dsack_dups": (216, "I"),
    "reord_seen": (220, "I"),
}


def tcp_info(sock: socket.socket) -> dict[str, int]:
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return {
        name: struct.unpack_from(fmt, raw, at)[0]
        for name, (at, fmt) in _TCP_INFO.items()
        if at + struct.calcsize(fmt) <= len(raw)
    }


def kernel_sink(port: int, seconds: float) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(8)
    emit(event="ready", port=port)
    buffer = bytearray(1 << 20)
    while True:
        conn, _ = listener.accept()
        count, early = 0, False
        conn.settimeout(30)
        try:
            n = conn.recv_into(buffer)
            started = time.monotonic()
            count = n
            deadline = started + seconds
            while n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                conn.settimeout(left)
                try:
                    n = conn.recv_into(buffer)
                except TimeoutError:
                    break
                if time.monotonic() <= deadline:
                    count += n
            else:
                early = True
            elapsed = min(time.monotonic(), deadline) - started
        except OSError as e:
            emit(event="result", bytes=count, seconds=0.0, early=True, error=repr(e))
            conn.close()
            continue
        emit(event="result", bytes=count, seconds=elapsed, early=early)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # with unread data and linger 0: a reset, the sender stops


def kernel_send(host: str, port: int, bound: float, cc: str) -> None:
    started = time.monotonic()
    sent, error, info = 0, "", {}
    view = memoryview(_PATTERN)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # per socket: a namespace may only choose among tcp_allowed_congestion_control
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
        sock.settimeout(10)
        sock.connect((host, port))
    except OSError as e:
        sock.close()
        emit(event="sent", bytes=0, seconds=0.0, error=repr(e), info={})
        return
    sock.settimeout(1.0)
    offset = 0
    try:
        while time.monotonic() - started < bound:
            try:
                n = sock.send(view[offset : offset + _CHUNK])
            except TimeoutError:
                continue
            sent += n
            offset = (offset + n) % (len(view) - _CHUNK)
            info = tcp_info(sock)
    except OSError as e:
        error = type(e).__name__
    sock.close()
    emit(event="sent", bytes=sent, seconds=time.monotonic() - started, error=error, info=info)


def _watchdog(seconds: float) -> None:
    time.sleep(seconds)
    emit(event="timeout", seconds=seconds)
    os._exit(1)


def kernel_main(options: argparse.Namespace) -> int:
    threading.Thread(target=kernel_sink, args=(options.port, options.seconds), daemon=True).start()
    threading.Thread(target=_watchdog, args=(options.duration,), daemon=True).start()
    stdin: IO[str] = sys.stdin
    for line in stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "send" and len(words) == 4:
            args = (words[1], int(words[2]), float(words[3]), options.cc)
            threading.Thread(target=kernel_send, args=args, daemon=True).start()
        elif words[0] == "quit":
            break
        else:
            emit(event="error", error=f"unknown command {line.strip()!r}")
    return 0


# =========================================================================== our TCP


def ours_main(options: argparse.Namespace) -> int:
    from ipaddress import ip_address

    from twisted.internet import defer, protocol, stdio
    from twisted.internet import reactor as the_reactor
    from twisted.protocols.basic import LineReceiver

    from funnel_tw.config import load_node_config
    from funnel_tw.netstack.trace import TcpTrace
    from funnel_tw.overlay.factory import build_overlay
    from funnel_tw.overlay.interface import PingTimeout
    from funnel_tw.overlay.userspace import UserspaceOverlayInterface

    reactor: Any = the_reactor
    config = load_node_config(options.config)
    overlay = build_overlay(
        reactor,
        network=config.network,
        private_key=config.private_key,
        addresses=config.addresses,
        peers=config.peers,
        listen_port=config.listen_port,
        mtu=config.mtu,
        caps=config.tcp,  # the tcp-* keys of node.ini (WanPairs' node_keys)
    )
    assert isinstance(overlay, UserspaceOverlayInterface)
    overlay.start()
    trace_file: list[IO[str]] = []

    def counters() -> dict[str, int]:
        return {k: v for k, v in overlay.stats().items() if k.startswith(("tcp_", "udp_"))}

    class Sink(protocol.Protocol):
        count = 0
        started = 0.0
        done = False
        before: dict[str, int] = {}

        def dataReceived(self, data: bytes) -> None:
            if self.done:
                return
            if not self.started:
                self.started = reactor.seconds()
                self.before = counters()
                reactor.callLater(options.seconds, self.finish)
            self.count += len(data)

        def finish(self, early: bool = False) -> None:
            if self.done:
                return
            self.done = True
            elapsed = reactor.seconds() - self.started
            now = counters()
            moved = {k: v - self.before.get(k, 0) for k, v in now.items()}
            emit(
                event="result",
                bytes=self.count,
                seconds=elapsed,
                early=early,
                counters={k: v for k, v in moved.items() if v},  # the receiving stack's
            )
            transport: Any = self.transport
            if transport is not None and not early:
                transport.abortConnection()

        def connectionLost(self, reason: Any = None) -> None:
            if self.started:
                self.finish(early=True)
            else:
                emit(event="result", bytes=0, seconds=0.0, early=True)

    class Sender(protocol.Protocol):
        def __init__(self, bound: float) -> None:
            self.bound = bound
            self.sent = 0
            self.paused = False
            self.offset = 0
            self.before = counters()

        def connectionMade(self) -> None:
            self.started = reactor.seconds()
            assert self.transport is not None
            transport: Any = self.transport
            transport.registerProducer(self, True)
            self.timeout = reactor.callLater(self.bound, transport.abortConnection)
            reactor.callLater(0, self.resumeProducing)

        def pauseProducing(self) -> None:
            self.paused = True

        def resumeProducing(self) -> None:
            self.paused = False
            transport: Any = self.transport
            while not self.paused and transport is not None and transport.connected:
                chunk = _PATTERN[self.offset : self.offset + _CHUNK]
                self.offset = (self.offset + _CHUNK) % (len(_PATTERN) - _CHUNK)
                self.sent += len(chunk)
                transport.write(chunk)

        def stopProducing(self) -> None:
            self.paused = True

        def connectionLost(self, reason: Any = None) -> None:
            if self.timeout.active():
                self.timeout.cancel()
            after = counters()
            delta = {k: v - self.before.get(k, 0) for k, v in after.items()}
            emit(
                event="sent",
                bytes=self.sent,
                seconds=reactor.seconds() - self.started,
                error=reason.getErrorMessage() if reason is not None else "",
                info={k: v for k, v in delta.items() if v},
            )

    async def send(host: str, port: int, bound: float) -> None:
        try:
            await overlay.client_endpoint(host, port, timeout=10).connect(
                protocol.Factory.forProtocol(lambda: Sender(bound))
            )
        except Exception as e:
            emit(event="sent", bytes=0, seconds=0.0, error=repr(e), info={})

    async def ping(host: str) -> None:
        for seq in range(10):
            try:
                rtt = await overlay.ping(ip_address(host), seq, timeout=1.0)
            except PingTimeout:
                continue
            emit(event="pong", rtt=rtt)
            return
        emit(event="lost")

    def set_trace(path: str) -> None:
        for f in trace_file:
            f.close()
        trace_file.clear()
        overlay.stack.trace = None
        if path != "-":
            f = open(path, "w", buffering=1 << 20, encoding="utf-8")  # noqa: SIM115
            trace_file.append(f)
            overlay.stack.trace = TcpTrace(f.write, overlay.stack.counters)
        emit(event="traced", path=path)

    class Commands(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            words = line.decode().split()
            if not words:
                return
            if words[0] == "send" and len(words) == 4:
                coro = send(words[1], int(words[2]), float(words[3]))
                defer.Deferred.fromCoroutine(coro)
            elif words[0] == "ping" and len(words) == 2:
                defer.Deferred.fromCoroutine(ping(words[1]))
            elif words[0] == "trace" and len(words) == 2:
                set_trace(words[1])
            elif words[0] == "quit":
                stop()
            else:
                emit(event="error", error=f"unknown command {line!r}")

        def connectionLost(self, reason: Any = None) -> None:
            stop()

    def stop() -> None:
        if reactor.running:
            reactor.stop()

    async def listen() -> None:
        await overlay.server_endpoint(options.port).listen(protocol.Factory.forProtocol(Sink))
        emit(event="ready", port=overlay.port)

    def shutdown() -> None:
        set_trace("-")
        emit(event="stats", counters=overlay.stats())
        overlay.stop()

    reactor.addSystemEventTrigger("before", "shutdown", shutdown)
    stdio.StandardIO(Commands())  # type: ignore[no-untyped-call]
    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(listen()))
    reactor.callLater(options.duration, stop)
    reactor.run()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["kernel", "ours"])
    parser.add_argument("--config", default="", help="ours: node.ini")
    parser.add_argument("--cc", default="cubic", help="kernel: the sender's congestion control")
    parser.add_argument("--port", type=int, required=True, help="the sink's TCP port")
    parser.add_argument("--seconds", type=float, required=True, help="measured per transfer")
    parser.add_argument("--duration", type=float, default=1800.0, help="hard bound, seconds")
    options = parser.parse_args()
    if options.kind == "kernel":
        return kernel_main(options)
    return ours_main(options)


if __name__ == "__main__":
    sys.exit(main())
