"""What a loopback send costs the sender when it wakes the receiver (a benchmark, not a test).

    python bench/wakeup.py [--rounds 2000] [--segments 12]

The funnel passes each request through more processes than a reverse proxy does (client ->
relay -> node -> backend and back), and every send to a process that sleeps in ``epoll_wait``
wakes it. The sender pays for that wakeup in its own system time, and on a virtual machine a
cross-CPU wakeup can cost several times the send itself. This measures, in one invocation,
the CPU time of the sending process per call (``time.process_time``):

- a 272-byte UDP ``sendto`` (the size of a small response's WireGuard datagram) to a receiver
  that is always busy (it never sleeps: the reference), and to one that sleeps in
  ``epoll_wait`` between datagrams (the sender pauses 0.5 ms after each send, so it does);
- the same with ``--segments`` datagrams in one GSO ``sendmsg`` (``UDP_SEGMENT``), as the
  node's tunnel sends a turn's datagrams, and as that many ``sendto`` calls;
- the pause alone (``time.sleep(0.0005)``), subtracted from the sleeping cases.

Loopback only (``::1``); the receiver is a child process, stopped at the end whatever
happens. Figures for docs/performance.md ("What a wakeup costs on this machine").
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import struct
import time
from collections.abc import Callable

UDP_SEGMENT = 103  # linux/udp.h
SIZE = 272
PAUSE = 0.0005


def receiver(sock: socket.socket, busy: bool) -> None:
    """Drain ``sock`` until killed: spinning (busy), or sleeping in epoll between datagrams."""
    sock.setblocking(False)
    poller = select.epoll()
    poller.register(sock, select.EPOLLIN)
    while True:
        if not busy:
            poller.poll(1.0)
        try:
            while True:
                sock.recv(65536)
        except BlockingIOError:
            pass


def cpu_per_call(call: Callable[[], object], rounds: int, pause: bool) -> float:
    """Microseconds of this process's CPU per ``call`` (and pause, if asked)."""
    t0 = time.process_time()
    for _ in range(rounds):
        call()
        if pause:
            time.sleep(PAUSE)
    return (time.process_time() - t0) / rounds * 1e6


def measure(rounds: int, segments: int, busy: bool) -> dict[str, float]:
    rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    rx.bind(("::1", 0))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    address = rx.getsockname()
    child = os.fork()
    if child == 0:  # pragma: no cover - the receiving process
        try:
            receiver(rx, busy)
        finally:
            os._exit(0)
    rx.close()
    tx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    datagram = os.urandom(SIZE)
    batch = datagram * segments
    size = struct.pack("H", SIZE)
    try:
        time.sleep(0.2)
        pause = not busy
        out = {
            "sendto": cpu_per_call(lambda: tx.sendto(datagram, address), rounds, pause),
            "gso": cpu_per_call(
                lambda: tx.sendmsg([batch], [(socket.SOL_UDP, UDP_SEGMENT, size)], 0, address),
                rounds,
                pause,
            ),
            "singles": cpu_per_call(
                lambda: [tx.sendto(datagram, address) for _ in range(segments)], rounds, pause
            ),
        }
        if pause:
            alone = cpu_per_call(lambda: None, rounds, True)
            out = {k: v - alone for k, v in out.items()} | {"pause": alone}
        return out
    finally:
        tx.close()
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--segments", type=int, default=12)
    args = parser.parse_args()
    rounds = max(100, min(args.rounds, 20000))
    segments = max(2, min(args.segments, 64))
    busy = measure(rounds, segments, busy=True)
    asleep = measure(rounds, segments, busy=False)
    print(f"sender CPU per call, {SIZE}-byte UDP datagrams over loopback, {rounds} rounds:")
    print(f"{'':36} {'receiver busy':>14} {'receiver asleep':>16} {'ratio':>6}")
    for key, label in (
        ("sendto", "one sendto"),
        ("gso", f"one GSO sendmsg of {segments}"),
        ("singles", f"{segments} sendto"),
    ):
        ratio = asleep[key] / busy[key] if busy[key] > 0 else float("nan")
        print(f"{label:36} {busy[key]:11.1f} us {asleep[key]:13.1f} us {ratio:6.1f}")
    print(f"(the {PAUSE * 1e3:.1f} ms pause alone cost {asleep['pause']:.1f} us, subtracted)")


if __name__ == "__main__":
    main()
