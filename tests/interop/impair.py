"""A seeded UDP impairment relay: delay, reordering and loss between two UDP endpoints.

    python -m tests.interop.impair --listen HOST:PORT --forward HOST:PORT --seed S
        [--delay-ms D] [--reorder-pct R] [--reorder-ms E] [--loss-pct L] [--duration S]
        [--slack-ms K]

Datagrams arriving on ``--listen`` go to ``--forward`` from a second socket; answers coming
back to that socket go to whoever last sent to ``--listen``. So a WireGuard peer whose endpoint
is the relay talks to the forward address, and the other peer sees the relay's second socket
as its endpoint (WireGuard roams to it).

Each datagram, in each direction, is dropped with probability L %; otherwise it is sent D ms
after it arrived, and with probability R % it is held back E ms more, so the datagrams behind
it overtake it. The decisions come from ``random.Random`` seeded with (S, direction), drawn in
arrival order: the n-th datagram of a direction meets the same fate on every run with the same
seed, so a failing run can be repeated.

The relay reads with UDP GRO and writes runs of due, same-sized datagrams of one direction with
UDP GSO (one datagram at a time where the kernel has neither), so that it costs a quarter of a
core, not half of one, while a funnel download runs through it on a two-core machine: the
instrument must not take the CPU of what it measures. Each datagram of a run still meets its own
fate, in arrival order. For the same reason it sleeps until the first held datagram has been due
for ``--slack-ms`` (0.5 ms), as a kernel timer has slack, then sends all that are due: on a
delayed path it would otherwise wake for nearly every datagram, and take half as much CPU
again per byte at 50 ms as at 0 ms. A datagram may so arrive up to the slack late, never out of
its turn.

Prints {"event": "ready", "listen", "upstream"} when both sockets are bound, and
{"event": "stats", "up": {...}, "down": {...}} when it ends (SIGTERM/SIGINT or ``--duration``).
"up" is listen -> forward, "down" is forward -> listen.
"""

from __future__ import annotations

import argparse
import collections
import heapq
import json
import random
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

_BUFFER = 8 << 20
_MAX_QUEUE = 100_000  # datagrams held at once; beyond this, drop (and count) rather than grow
# Linux's UDP batching (linux/udp.h), so the relay's own CPU stays small beside what it measures:
# a read returns a run of same-sized datagrams (GRO), a write sends one (GSO)
UDP_SEGMENT, UDP_GRO = 103, 104
_GSO_MAX = 64  # datagrams in one write
_GSO_BYTES = 65000
_INT = struct.Struct("=i")
_U16 = struct.Struct("=H")


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass
class Impairment:
    delay: float = 0.0  # seconds
    reorder: float = 0.0  # probability
    reorder_extra: float = 0.0  # seconds
    loss: float = 0.0  # probability


@dataclass
class Direction:
    """One direction's seeded decisions and counters."""

    name: str
    seed: int
    impairment: Impairment
    rng: random.Random = field(init=False)
    counters: dict[str, int] = field(
        default_factory=lambda: {"received": 0, "sent": 0, "lost": 0, "reordered": 0, "full": 0}
    )

    def __post_init__(self) -> None:
        self.rng = random.Random(f"{self.seed}/{self.name}")

    def fate(self) -> float | None:
        """Extra time to hold the next datagram, or None to drop it (three draws each)."""
        i = self.impairment
        self.counters["received"] += 1
        lost = self.rng.random() < i.loss
        reordered = self.rng.random() < i.reorder
        self.rng.random()  # reserved, keeps the draw count fixed per datagram
        if lost:
            self.counters["lost"] += 1
            return None
        if reordered:
            self.counters["reordered"] += 1
            return i.delay + i.reorder_extra
        return i.delay


class Relay:
    def __init__(
        self,
        listen: tuple[str, int],
        forward: tuple[str, int],
        seed: int,
        impairment: Impairment,
        slack: float = 0.0,
    ) -> None:
        self.slack = slack
        family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
        self.outer = socket.socket(family, socket.SOCK_DGRAM)
        self.outer.bind(listen)
        forward_family = socket.AF_INET6 if ":" in forward[0] else socket.AF_INET
        self.inner = socket.socket(forward_family, socket.SOCK_DGRAM)
        self.inner.connect(forward)
        for s in (self.outer, self.inner):
            s.setblocking(False)
            for option, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):  # *FORCE
                try:  # root ignores net.core.*mem_max: the relay must not be the bottleneck
                    s.setsockopt(socket.SOL_SOCKET, force, _BUFFER)
                except OSError:
                    s.setsockopt(socket.SOL_SOCKET, option, _BUFFER)
        self.gro = self.gso = True
        for s in (self.outer, self.inner):
            try:
                s.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
            except OSError:
                self.gro = False
        self.client: Any = None
        self.up = Direction("up", seed, impairment)
        self.down = Direction("down", seed, impairment)
        # (due, n, upward, datagram): those held the path's delay, in arrival order (so in due
        # order: a deque, not a heap, whose pops cost a microsecond each with thousands held at
        # 50 ms), and those held longer (reordered), in a heap
        self.fifo: collections.deque[tuple[float, int, bool, bytes]] = collections.deque()
        self.held: list[tuple[float, int, bool, bytes]] = []
        self.delay = impairment.delay
        self.n = 0
        self.running = True

    def _take(self, sock: socket.socket, upward: bool) -> None:
        direction = self.up if upward else self.down
        space = socket.CMSG_SPACE(_INT.size)
        for _ in range(256):
            try:
                if self.gro:
                    data, ancdata, _, address = sock.recvmsg(65535, space)
                else:
                    data, address = sock.recvfrom(65535)
                    ancdata = []
            except (BlockingIOError, ConnectionRefusedError):
                return
            if upward:
                self.client = address
            size = len(data)
            for level, kind, value in ancdata:
                if level == socket.SOL_UDP and kind == UDP_GRO:
                    size = _INT.unpack(value[: _INT.size])[0] or size
            now = time.monotonic()
            for offset in range(0, len(data), size):  # each datagram of a run meets its own fate
                hold = direction.fate()
                if hold is None:
                    continue
                if len(self.fifo) + len(self.held) >= _MAX_QUEUE:
                    direction.counters["full"] += 1
                    continue
                self.n += 1
                item = (now + hold, self.n, upward, data[offset : offset + size])
                if hold == self.delay:
                    self.fifo.append(item)
                else:
                    heapq.heappush(self.held, item)

    def _first_due(self) -> float | None:
        fifo, held = self.fifo, self.held
        if fifo and held:
            return min(fifo[0][0], held[0][0])
        if fifo:
            return fifo[0][0]
        return held[0][0] if held else None

    def _pop_due(self, now: float) -> tuple[float, int, bool, bytes] | None:
        """The next datagram to send (the earliest due, then the first to arrive), if due."""
        fifo, held = self.fifo, self.held
        if held and (not fifo or held[0] < fifo[0]):
            return heapq.heappop(held) if held[0][0] <= now else None
        if fifo and fifo[0][0] <= now:
            return fifo.popleft()
        return None

    def _send_due(self) -> None:
        """Send what is due in order; a run of due datagrams of one direction and one size
        (the last may be shorter) in one GSO write."""
        now = time.monotonic()
        item = self._pop_due(now)
        while item is not None:
            upward, data = item[2], item[3]
            run = [data]
            size = len(data)
            total = size
            item = self._pop_due(now)
            while (
                self.gso
                and item is not None
                and item[2] == upward
                and len(run) < _GSO_MAX
                and len(item[3]) <= size
                and total + size <= _GSO_BYTES
                and len(run[-1]) == size
            ):
                run.append(item[3])
                total += len(item[3])
                item = self._pop_due(now)
            self._send_run(run, upward)

    def _send_run(self, run: list[bytes], upward: bool) -> None:
        if not upward and self.client is None:
            return
        try:
            if len(run) == 1:
                if upward:
                    self.inner.send(run[0])
                else:
                    self.outer.sendto(run[0], self.client)
            else:
                cmsg = [(socket.SOL_UDP, UDP_SEGMENT, _U16.pack(len(run[0])))]
                if upward:
                    self.inner.sendmsg([b"".join(run)], cmsg)
                else:
                    self.outer.sendmsg([b"".join(run)], cmsg, 0, self.client)
        except (BlockingIOError, ConnectionRefusedError):
            return  # a full socket buffer is loss too; the counters show it
        except OSError:
            if len(run) == 1:
                return
            self.gso = False  # no GSO here: one datagram at a time from now on
            for data in run:
                self._send_run([data], upward)
            return
        (self.up if upward else self.down).counters["sent"] += len(run)

    def run(self, duration: float) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.outer, selectors.EVENT_READ, True)
        selector.register(self.inner, selectors.EVENT_READ, False)
        end = time.monotonic() + duration
        emit(
            event="ready",
            listen=list(self.outer.getsockname()[:2]),
            upstream=list(self.inner.getsockname()[:2]),
        )
        while self.running:
            now = time.monotonic()
            if now >= end:
                break
            timeout = min(end - now, 0.2)  # notice a signal soon
            due = self._first_due()
            if due is not None:
                timeout = min(timeout, max(due + self.slack - now, 0.0))
            for key, _ in selector.select(timeout):
                self._take(key.fileobj, key.data)  # type: ignore[arg-type]
            self._send_due()
        selector.close()
        held = len(self.fifo) + len(self.held)
        emit(event="stats", up=self.up.counters, down=self.down.counters, held=held)

    def stop(self, *_: Any) -> None:
        self.running = False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT the near peer sends to")
    parser.add_argument("--forward", required=True, help="HOST:PORT of the far peer")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added each way")
    parser.add_argument("--reorder-pct", type=float, default=0.0)
    parser.add_argument("--reorder-ms", type=float, default=5.0, help="extra hold when reordered")
    parser.add_argument("--loss-pct", type=float, default=0.0)
    parser.add_argument("--duration", type=float, default=120.0, help="hard bound, seconds")
    parser.add_argument(
        "--slack-ms", type=float, default=0.5, help="how late a due datagram may leave, at most"
    )
    options = parser.parse_args(argv)
    impairment = Impairment(
        delay=options.delay_ms / 1000,
        reorder=options.reorder_pct / 100,
        reorder_extra=options.reorder_ms / 1000,
        loss=options.loss_pct / 100,
    )
    relay = Relay(
        _host_port(options.listen),
        _host_port(options.forward),
        options.seed,
        impairment,
        options.slack_ms / 1000,
    )
    signal.signal(signal.SIGTERM, relay.stop)
    signal.signal(signal.SIGINT, relay.stop)
    relay.run(options.duration)
    return 0


if __name__ == "__main__":
    sys.exit(main())
