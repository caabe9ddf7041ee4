"""The node's per-packet data path in one process: TCP over WireGuard, sans-IO (a benchmark).

    python bench/datapath.py [--mib 64] [--mtu 1280] [--rounds 3]

A sender (our TCP/IP stack + WireGuard Device) streams ``--mib`` MiB to a receiver (the same),
with no sockets, no reactor and a simulated clock: each loop the sender's stack flushes, its
packets are sealed in one ``send_packets`` call, the receiver opens them in batches of 64 and
hands them to its stack, and its ACKs go back the same way. The CPU time of each side's calls
is what is measured, in µs per data packet: the sender's (TCP segments out, sealing, ACKs
in) is what a node spends per packet of a download, the receiver's what the relay spends.
The timers' ticks are left out of those figures (timing each of the many small loop steps
would cost more than the ticks do); the instruction count under callgrind includes them.

Run twice in one invocation, with the C extensions (checksum, TCP packet, transport seal/open,
when built) and with ``FUNNEL_TW_PURE_PYTHON=1`` (in a child process), beside the reference:
the bare AEAD of the same packets (ChaCha20-Poly1305 seal + open through ``cryptography``),
the floor no implementation of the protocol can go below on this machine. Each run is bounded
by its byte count and a step limit. Process CPU time is steadier than end-to-end rates on a
shared machine, which is why per-packet changes are judged here first (docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from ipaddress import IPv4Address, ip_network
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from bench._pure_python import run_pure_python
from funnel_tw import keys
from funnel_tw.netstack import checksum, tcp
from funnel_tw.netstack.stack import Stack
from funnel_tw.wireguard import transport_key
from funnel_tw.wireguard.device import Device

A, B = "10.9.0.1", "10.9.0.2"
PORT = 443
CHUNK = 64 * 1024
BATCH = 64  # datagrams a receive batch (the UDP socket's recvmmsg/GRO batches)
STEP = 0.0002  # simulated seconds per loop: pacing and timers see time pass
MAX_STEPS = 2_000_000


class Side:
    """One end: a stack, a device, and the CPU time spent in their calls."""

    def __init__(self, address: str, mtu: int, seed: int) -> None:
        self.text = address
        self.address = IPv4Address(address).packed
        self.stack = Stack([self.address], mtu=mtu, rng=random.Random(seed))
        self.device = Device(keys.generate_private_key(), mtu=mtu, rng=random.Random(seed))
        self.cpu = 0.0

    def add_peer(self, other: Side) -> None:
        self.device.add_peer(
            other.device.public_key,
            name=other.text,
            allowed_ips=(ip_network(other.text + "/32"),),
            endpoint=(other.text, 1),
        )

    def tick(self, now: float) -> None:
        deadline = self.stack.next_deadline()
        if deadline is not None and deadline <= now:
            self.stack.tick(now)
        deadline = self.device.next_deadline()
        if deadline is not None and deadline <= now:
            self.device.tick(now)


def _deliver(src: Side, dst: Side, now: float) -> int:
    """``src``'s datagrams into ``dst``'s device and stack; returns how many."""
    out, src.device.outgoing = src.device.outgoing, []
    t0 = time.process_time()
    datagrams = [(d, ("peer", 1)) for d, _ in out]
    for i in range(0, len(datagrams), BATCH):
        dst.device.receive_batch(datagrams[i : i + BATCH], now)
    incoming, dst.device.incoming = dst.device.incoming, []
    for packet, _peer in incoming:
        dst.stack.receive(packet, now)
    dst.cpu += time.process_time() - t0
    return len(out)


def _send(side: Side, now: float) -> None:
    t0 = time.process_time()
    side.stack.flush(now)
    packets, side.stack.outgoing = side.stack.outgoing, []
    if packets:
        side.device.send_packets(packets, now)
    side.cpu += time.process_time() - t0


def run(mib: int, mtu: int) -> dict[str, float]:
    now = 1_700_000_000.0
    a = Side(A, mtu, 1)
    b = Side(B, mtu, 2)
    a.add_peer(b)
    b.add_peer(a)
    b.stack.listen(PORT)
    conn = a.stack.connect(a.address, b.address, PORT, now)
    total = mib << 20
    data = os.urandom(CHUNK)
    written = received = packets = 0
    steps = 0
    while received < total:
        steps += 1
        if steps > MAX_STEPS:
            raise RuntimeError(f"stalled: {received} of {total} bytes after {steps} steps")
        now += STEP
        a.tick(now)
        b.tick(now)
        if conn.state is tcp.State.ESTABLISHED:
            while written < total and conn.send_buffered < conn.send_limit:
                conn.send(data)
                written += CHUNK
        _send(a, now)
        packets += _deliver(a, b, now)
        for kind, _conn, payload in b.stack.events:
            if kind == tcp.DATA:
                received += len(payload)
        b.stack.events.clear()
        a.stack.events.clear()
        _send(b, now)
        _deliver(b, a, now)
    return {
        "sender_us": a.cpu / packets * 1e6,
        "receiver_us": b.cpu / packets * 1e6,
        "packets": packets,
        "mb_per_cpu_s": total / 1e6 / (a.cpu + b.cpu),
    }


def aead_floor(packets: int, size: int) -> float:
    """µs per packet to seal and open ``size`` bytes with ChaCha20-Poly1305, nothing else."""
    aead = ChaCha20Poly1305(os.urandom(32))
    payload = os.urandom(size)
    nonce = bytes(12)
    t0 = time.process_time()
    for _ in range(packets):
        aead.decrypt(nonce, aead.encrypt(nonce, payload, None), None)
    return (time.process_time() - t0) / packets * 1e6


def best_of(rounds: int, mib: int, mtu: int) -> dict[str, float]:
    results = [run(mib, mtu) for _ in range(rounds)]
    return {
        "sender_us": min(r["sender_us"] for r in results),
        "receiver_us": min(r["receiver_us"] for r in results),
        "packets": results[0]["packets"],
        "mb_per_cpu_s": max(r["mb_per_cpu_s"] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mib", type=int, default=64, help="bytes per run, MiB (64)")
    parser.add_argument("--mtu", type=int, default=1280, help="overlay MTU (1280)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each; the best (3)")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.mib = max(1, min(args.mib, 1024))
    args.rounds = max(1, min(args.rounds, 10))
    if args.json:
        print(json.dumps(best_of(args.rounds, args.mib, args.mtu)))
        return
    print(
        f"funnel-tw data path in one process: {args.mib} MiB over TCP over WireGuard, "
        f"MTU {args.mtu}, best of {args.rounds}"
    )
    compiled = best_of(args.rounds, args.mib, args.mtu)
    pure = run_pure_python(
        __file__,
        ["--json", "--mib", str(args.mib), "--mtu", str(args.mtu), "--rounds", str(args.rounds)],
        timeout=900,
    )
    floor = aead_floor(int(compiled["packets"]), args.mtu - 40)
    print(
        f"  checksum: {checksum.IMPLEMENTATION}; "
        f"WireGuard transport: {transport_key.IMPLEMENTATION}"
    )
    for label, r in (("compiled", compiled), ("pure Python", pure)):
        print(
            f"  {label:>11}: sender {r['sender_us']:6.2f} µs/packet, receiver "
            f"{r['receiver_us']:6.2f} µs/packet, {r['mb_per_cpu_s']:6.1f} MB per CPU second "
            f"({int(r['packets']):,} data-path datagrams)"
        )
    print(f"  reference, bare AEAD seal + open: {floor:6.2f} µs/packet")
    print(
        f"  ratios: sender compiled / pure {compiled['sender_us'] / pure['sender_us']:.2f}, "
        f"receiver {compiled['receiver_us'] / pure['receiver_us']:.2f}; "
        f"(sender + receiver) / AEAD floor "
        f"{(compiled['sender_us'] + compiled['receiver_us']) / floor:.1f}"
    )


if __name__ == "__main__":
    main()
