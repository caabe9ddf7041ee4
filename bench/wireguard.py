"""WireGuard data-path benchmark (a benchmark, not a test).

    python bench/wireguard.py [--packets N] [--size BYTES] [--seconds S]

1. In-process, one core: encapsulate (one ``send_packet`` call a packet, and ``send_packets``
   with 64 a call, as the overlay hands over a reactor turn's packets) and decapsulate
   1420-byte IP packets between two Devices, beside the floor of bare ChaCha20-Poly1305 on
   the same bytes (the reference);
   once with the transport messages sealed in C (``_transport.c``, when built) and once in
   pure Python (``FUNNEL_TW_PURE_PYTHON=1``, in a child process), side by side.
2. Two processes over loopback UDP: a sender Device streams packets to a receiver Tunnel
   (reactor, GRO/GSO socket), beside the same two processes moving plain UDP datagrams of the
   same size through the same socket code (the reference).

Each run is bounded by a packet count and a time limit; child processes are always reaped.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import struct
import subprocess
import sys
import time
from ipaddress import ip_address, ip_network
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from bench._pure_python import run_pure_python
from funnel_tw import keys
from funnel_tw.wireguard import transport_key
from funnel_tw.wireguard.device import Device

A_ADDR, B_ADDR = "100.64.0.1", "100.64.0.2"
_CREDIT_EVERY = 512  # the receiver reports progress every this many packets
_WINDOW = 8192  # packets the sender may have in flight beyond the last report


def ip_packet(size: int, seq: int = 0) -> bytes:
    payload = os.urandom(size - 20)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        size,
        seq & 0xFFFF,
        0,
        64,
        17,
        0,
        ip_address(A_ADDR).packed,
        ip_address(B_ADDR).packed,
    )
    return header + payload


def device_pair(mtu: int) -> tuple[Device, Device]:
    ka, kb = keys.generate_private_key(), keys.generate_private_key()
    a = Device(ka, mtu=mtu, rng=random.Random(1))
    b = Device(kb, mtu=mtu, rng=random.Random(2))
    a.add_peer(b.public_key, name="b", allowed_ips=(ip_network(B_ADDR + "/32"),), endpoint=("b", 1))
    b.add_peer(a.public_key, name="a", allowed_ips=(ip_network(A_ADDR + "/32"),))
    return a, b


def handshake(a: Device, b: Device, now: float) -> None:
    a.send_packet(ip_packet(100), now)
    for _ in range(4):
        for x, y, name in ((a, b, "a"), (b, a, "b")):
            out, x.outgoing = x.outgoing, []
            y.receive_batch([(d, (name, 1)) for d, _ in out], now)
    a.incoming.clear()
    b.incoming.clear()


def in_process(packets: int, size: int) -> dict[str, float]:
    now = time.time()
    a, b = device_pair(mtu=size)
    handshake(a, b, now)
    packet = ip_packet(size)
    run = [packet] * 64
    packets -= packets % 64
    best_enc = best_batch = best_dec = best_ref = float("inf")
    for _ in range(3):
        a.outgoing.clear()
        t0 = time.perf_counter()
        for _ in range(packets):
            a.send_packet(packet, now)
        best_enc = min(best_enc, time.perf_counter() - t0)
        a.outgoing.clear()
        t0 = time.perf_counter()
        for _ in range(0, packets, 64):  # as the overlay hands over a reactor turn's packets
            a.send_packets(run, now)
        best_batch = min(best_batch, time.perf_counter() - t0)
        batch = [(d, ("a", 1)) for d, _ in a.outgoing]
        b.incoming.clear()
        t0 = time.perf_counter()
        for i in range(0, packets, 64):
            b.receive_batch(batch[i : i + 64], now)
        best_dec = min(best_dec, time.perf_counter() - t0)
        assert len(b.incoming) == packets, (len(b.incoming), b.drops)
        # reference: the bare AEAD work on the same datagrams, nothing else
        aead = ChaCha20Poly1305(os.urandom(32))
        nonce = bytes(12)
        sealed = aead.encrypt(nonce, packet, None)
        t0 = time.perf_counter()
        for _ in range(packets):
            aead.decrypt(nonce, sealed, None)
        best_ref = min(best_ref, time.perf_counter() - t0)
    return {
        "encap_pps": packets / best_enc,
        "encap_batch_pps": packets / best_batch,
        "decap_pps": packets / best_dec,
        "aead_only_pps": packets / best_ref,
    }


def in_process_pure_python(args: argparse.Namespace) -> dict[str, float]:
    """The in-process run in a child with FUNNEL_TW_PURE_PYTHON=1 (chosen at import)."""
    arguments = ["--in-process-json", "--packets", str(args.packets), "--size", str(args.size)]
    result: dict[str, float] = run_pure_python(__file__, arguments, timeout=300)
    return result


# --- two processes ---------------------------------------------------------------------------


def receiver_main(args: argparse.Namespace) -> None:
    """Child: receive for at most args.seconds, print a JSON line with what arrived."""
    import socket

    from twisted.internet import reactor

    from funnel_tw.overlay.tunnel import Tunnel
    from funnel_tw.overlay.udp import UDPSocket

    state = {"count": 0, "first": 0.0, "last": 0.0, "credited": 0, "stopping": 0}
    credits = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    credit_to = ("127.0.0.1", args.credit_port)

    def count(n: int) -> None:
        now = time.perf_counter()
        if not state["count"]:
            state["first"] = now
        state["count"] += n
        state["last"] = now
        if state["count"] - state["credited"] >= _CREDIT_EVERY or state["count"] >= args.packets:
            state["credited"] = state["count"]
            credits.sendto(struct.pack("!Q", state["count"]), credit_to)
        if state["count"] >= args.packets and not state["stopping"]:
            state["stopping"] = 1
            reactor.stop()

    if args.mode == "plain":
        sock = UDPSocket(reactor, lambda batch: count(len(batch)), 0, "127.0.0.1")
        port = sock.port
    else:
        device = Device(bytes.fromhex(args.key), mtu=args.size)
        device.add_peer(
            bytes.fromhex(args.peer), name="a", allowed_ips=(ip_network(A_ADDR + "/32"),)
        )
        tunnel = Tunnel(
            reactor, device, listen_host="127.0.0.1", packet_handler=lambda packet, peer: count(1)
        )
        tunnel.start()
        port = tunnel.port
    print(json.dumps({"port": port}), flush=True)

    def give_up() -> None:
        if not state["stopping"]:
            state["stopping"] = 1
            reactor.stop()

    reactor.callLater(args.seconds, give_up)
    reactor.run()
    span = state["last"] - state["first"]
    print(json.dumps({"count": state["count"], "span": span}), flush=True)


def two_process(mode: str, packets: int, size: int, seconds: float) -> dict[str, float]:
    """Stream ``packets`` datagrams to a receiver child; packets/s as the receiver saw them."""
    import socket

    from twisted.internet import selectreactor

    from funnel_tw.overlay.udp import UDPSocket

    ka, kb = keys.generate_private_key(), keys.generate_private_key()
    credits = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    credits.bind(("127.0.0.1", 0))
    credits.settimeout(1.0)
    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--receiver",
            "--mode",
            mode,
            "--packets",
            str(packets),
            "--size",
            str(size),
            "--seconds",
            str(seconds),
            "--key",
            kb.hex(),
            "--peer",
            keys.public_key(ka).hex(),
            "--credit-port",
            str(credits.getsockname()[1]),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        port = json.loads(child.stdout.readline())["port"]
        reactor = selectreactor.SelectReactor()
        sock = UDPSocket(reactor, lambda batch: None, 0, "127.0.0.1")
        endpoint = ("127.0.0.1", port)
        packet = ip_packet(size)
        if mode == "plain":
            datagram = packet + bytes(32)  # the size a WireGuard datagram would have

            def burst(n: int) -> None:
                sock.send([(datagram, endpoint)] * n)
        else:
            a = Device(ka, mtu=size)
            peer = a.add_peer(
                keys.public_key(kb),
                name="b",
                allowed_ips=(ip_network(B_ADDR + "/32"),),
                endpoint=endpoint,
            )
            sock.on_batch = lambda batch: a.receive_batch(batch, time.time())
            a.send_packet(packet, time.time())
            deadline = time.monotonic() + 5
            while peer.keypairs.current is None and time.monotonic() < deadline:
                sock.send(a.outgoing)
                a.outgoing = []
                reactor.iterate(0.05)
                sock.doRead()
            for _ in range(20):
                reactor.iterate(0.01)
                sock.doRead()
                sock.send(a.outgoing)
                a.outgoing = []

            def burst(n: int) -> None:
                now = time.time()
                for _ in range(n):
                    a.send_packet(packet, now)
                sock.send(a.outgoing)
                a.outgoing = []

        sent = acked = stalls = 0
        started = time.monotonic()
        while sent < packets and time.monotonic() - started < seconds:
            if sent - acked >= _WINDOW:
                try:
                    acked = struct.unpack("!Q", credits.recv(8))[0]
                except TimeoutError:
                    stalls += 1  # a report or its packets were lost: move on
                    acked = sent
                continue
            n = min(64, packets - sent)
            burst(n)
            sent += n
        out, _ = child.communicate(timeout=seconds + 30)
        result = json.loads(out.strip().splitlines()[-1])
        sock.close()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    pps = result["count"] / result["span"] if result["span"] > 0 else 0.0
    return {"sent": sent, "received": result["count"], "pps": pps, "stalls": stalls}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=1420)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="wireguard", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--peer", help=argparse.SUPPRESS)
    parser.add_argument("--credit-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--in-process-json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        receiver_main(args)
        return
    if args.in_process_json:
        print(json.dumps(in_process(min(args.packets, 200_000), args.size)))
        return

    size = args.size
    print(f"funnel-tw WireGuard benchmark: {size}-byte IP packets, {args.packets} per run")
    r = in_process(min(args.packets, 200_000), size)
    pure = in_process_pure_python(args)
    print(f"  transport messages sealed and opened in: {transport_key.IMPLEMENTATION}")
    for name in (
        "encap",
        "encap_batch",
        "decap",
    ):  # encapsulate (one call a packet, or 64), decapsulate
        pps = r[f"{name}_pps"]
        print(f"  in-process {name}: {pps:>10,.0f} packets/s  {1e6 / pps:6.2f} us/packet")
        if transport_key.IMPLEMENTATION.startswith("C"):
            ppps = pure[f"{name}_pps"]
            print(
                f"    pure Python {name}: {ppps:>8,.0f} packets/s  {1e6 / ppps:6.2f} us/packet"
                f"   (C / pure Python: {pps / ppps:.2f})"
            )
    print(
        f"  reference, bare AEAD decrypt: {r['aead_only_pps']:>7,.0f} packets/s  "
        f"{1e6 / r['aead_only_pps']:6.2f} us/packet"
    )
    print(
        f"  ratio decapsulate / bare AEAD: {r['decap_pps'] / r['aead_only_pps']:.2f}"
        f"   (target: decapsulate >= 150,000 packets/s)"
    )

    wg = two_process("wireguard", args.packets, size, args.seconds)
    plain = two_process("plain", args.packets, size, args.seconds)
    for label, res in (("WireGuard Device -> Tunnel", wg), ("reference, plain UDP", plain)):
        mbit = res["pps"] * size * 8 / 1e6
        print(
            f"  two processes, {label}: {res['pps']:>10,.0f} packets/s "
            f"({mbit:,.0f} Mbit/s of IP packets), {res['received']:,}/{res['sent']:,} arrived, "
            f"{1e6 / res['pps'] if res['pps'] else float('inf'):.2f} us/packet"
        )
    if plain["pps"]:
        print(f"  ratio WireGuard / plain UDP: {wg['pps'] / plain['pps']:.2f}")


if __name__ == "__main__":
    main()
