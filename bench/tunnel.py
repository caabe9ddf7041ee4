"""Tunnel throughput benchmark: bulk TCP through WireGuard, three ways (root; not a test).

    sudo python bench/tunnel.py [--seconds S] [--mtu 1420]

Side by side, each between two network namespaces joined by a veth (10.232.24x.0/24), MTU
1420 everywhere, one TCP connection moving random bytes from X to Y:

(a) userspace: two ``tests.interop.ourpeer`` processes, each funnel-tw's WireGuard plus our own
    TCP/IP stack (``--tcp-send`` in X, ``--tcp-sink`` in Y);
(b) the same with ``network = tun`` in Y: Y's WireGuard hands packets to a kernel TUN device
    and ``--tcp-sink`` listens on the kernel's TCP (X stays userspace);
(c) reference: two wireguard-go instances with iperf3 over their TUN devices.

Prints Mbit/s for each and the ratios (a)/(c), (b)/(c). For (a) and (b) a 16 MiB warm-up
measures the rate, then a transfer sized to last about ``--seconds`` is the figure. Every
process is bounded in time, the whole run stops starting cases after two minutes, and the
namespaces (with everything in them) are deleted however the run ends.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.interop import netns as h
from tests.interop.kernel_tcp import NodeIni, write_tcp_node_ini

X4, X6 = "100.64.0.2", "fd7a:115c:a1e0::2"
Y4, Y6 = "100.64.0.1", "fd7a:115c:a1e0::1"
X_NETS = (f"{X4}/32", f"{X6}/128")
Y_NETS = (f"{Y4}/32", f"{Y6}/128")
PORT_X, PORT_Y = 51820, 51821
SINK_PORT = 5001
WARMUP = 16 << 20
MIN_BYTES, MAX_BYTES = 16 << 20, 1 << 30
BUDGET = 110.0  # seconds: no new case starts after this


class Skipped(Exception):
    """A case that cannot run here; the message says why."""


def mbit(nbytes: int, seconds: float) -> float:
    return nbytes * 8 / max(seconds, 1e-9) / 1e6


class Bench:
    def __init__(self, stack: contextlib.ExitStack, seconds: float, mtu: int) -> None:
        self.stack = stack
        self.seconds = seconds
        self.mtu = mtu
        self.tmp = h.make_tempdir(stack.callback)
        self.subnet = 240

    def pair(self) -> tuple[h.Namespace, h.Namespace, str, str]:
        """Fresh namespaces X and Y on their own /24; deleted when the run ends."""
        self.subnet += 1
        x = h.Namespace("bx")
        self.stack.callback(x.delete)
        y = h.Namespace("by")
        self.stack.callback(y.delete)
        ip_x, ip_y = f"10.232.{self.subnet}.1", f"10.232.{self.subnet}.2"
        h.veth_pair(x, y, f"{ip_x}/24", f"{ip_y}/24")
        return x, y, ip_x, ip_y

    # ------------------------------------------------------------------ (a) and (b)

    def ours(self, y_network: str) -> tuple[float, dict[str, Any]]:
        """Our sender in X to our sink in Y (``network = y_network``); returns Mbit/s."""
        x, y, _, ip_y = self.pair()
        kx, ky = h.gen_keypair(), h.gen_keypair()
        work = self.tmp / f"ours-{self.subnet}"
        work.mkdir()
        ini_y = write_tcp_node_ini(
            work, ky.private, Y_NETS, "x", kx.public, X_NETS,
            listen_port=PORT_Y, extra=NodeIni(mtu=self.mtu, network=y_network),
            filename="y.ini",
        )  # fmt: skip
        ini_x = write_tcp_node_ini(
            work, kx.private, X_NETS, "y", ky.public, Y_NETS,
            listen_port=PORT_X, endpoint=f"{ip_y}:{PORT_Y}", extra=NodeIni(mtu=self.mtu),
            filename="x.ini",
        )  # fmt: skip
        sink = h.run_our_peer(
            self.stack.callback, y, work, ini_y, "--tcp-sink", str(SINK_PORT), "--duration", "90"
        )
        sink.wait_for("ready", 20)

        def transfer(nbytes: int) -> tuple[float, dict[str, int]]:
            # --duration keeps the sender up after its connection closes, so the sink's FIN
            # is acknowledged before we stop it (ourpeer exiting at once would leave the sink
            # in LAST-ACK: UserspaceOverlayInterface.stop() does not flush owed ACKs).
            sender = h.run_our_peer(
                self.stack.callback, x, work, ini_x,
                "--tcp-send", f"{Y4}:{SINK_PORT}", "--bytes", str(nbytes), "--timeout", "4",
                "--duration", "60",
            )  # fmt: skip
            sent = sender.wait_for("sent", 60)
            if sent["reply"] != f"{nbytes} {sent['sha256']}" or sender.stop() != 0:
                raise h.InteropError(f"transfer failed: {sender.describe()}")
            got = sink.wait_for("sink", 10)
            if got["bytes"] != nbytes or got["sha256"] != sent["sha256"]:
                raise h.InteropError(f"sink got {got}, sender sent {sent}")
            return float(got["seconds"]), sender.stats()

        warmup, _ = transfer(WARMUP)
        rate = mbit(WARMUP, warmup)
        nbytes = int(min(max(rate * 1e6 / 8 * self.seconds, MIN_BYTES), MAX_BYTES))
        seconds, sender_stats = transfer(nbytes)
        if sink.stop() != 0:
            raise h.InteropError(f"sink exited badly: {sink.describe()}")

        def tcp(stats: dict[str, int]) -> dict[str, int]:
            return {k: v for k, v in stats.items() if k.startswith(("tcp_", "drop_", "tun_"))}

        return mbit(nbytes, seconds), {
            "bytes": nbytes,
            "seconds": round(seconds, 2),
            "sender": tcp(sender_stats),
            "sink": tcp(sink.stats()),
        }

    def userspace(self) -> tuple[float, dict[str, Any]]:
        return self.ours("userspace")

    def tun(self) -> tuple[float, dict[str, Any]]:
        if importlib.util.find_spec("funnel_tw.overlay.tun") is None:
            raise Skipped("tun mode not available")
        module = importlib.import_module("funnel_tw.overlay.tun")
        if not hasattr(module, "TunOverlayInterface"):
            raise Skipped("tun mode not available")
        return self.ours("tun")

    # ------------------------------------------------------------------ (c)

    def wireguard_go(self) -> tuple[float, dict[str, Any]]:
        if shutil.which("iperf3") is None:
            raise Skipped("iperf3 not installed")
        x, y, ip_x, ip_y = self.pair()
        work = self.tmp / f"wggo-{self.subnet}"
        work.mkdir()
        wx = h.start_wireguard_go(self.stack.callback, x, work)
        wy = h.start_wireguard_go(self.stack.callback, y, work)
        wx.configure(PORT_X, [h.WgPeer(wy.keys.public, Y_NETS, f"{ip_y}:{PORT_Y}")], X_NETS)
        wy.configure(PORT_Y, [h.WgPeer(wx.keys.public, X_NETS, f"{ip_x}:{PORT_X}")], Y_NETS)
        for ns, wg, nets in ((x, wx, Y_NETS), (y, wy, X_NETS)):
            ns.run(["ip", "link", "set", wg.name, "mtu", str(self.mtu)])
            for net in nets:
                family = ["-6"] if ":" in net else []
                ns.run(["ip", *family, "route", "add", net, "dev", wg.name])
        server = y.popen(
            ["iperf3", "-s", "-1", "-B", Y4, "-p", str(SINK_PORT)],
            stdout=open(os.devnull, "wb"),  # noqa: SIM115 (the child owns it)
            stderr=open(os.devnull, "wb"),  # noqa: SIM115
        )
        self.stack.callback(h.kill_group, server)
        deadline = time.monotonic() + 10
        while f":{SINK_PORT} " not in y.run(["ss", "-tlnH"]).stdout:
            if time.monotonic() > deadline:
                raise h.InteropError("iperf3 server did not start")
            time.sleep(0.05)
        duration = max(round(self.seconds), 1)
        result = x.run(
            ["iperf3", "-c", Y4, "-p", str(SINK_PORT), "-t", str(duration), "-J"],
            timeout=duration + 20,
        )
        report = json.loads(result.stdout)
        received = report["end"]["sum_received"]
        rate = float(received["bits_per_second"]) / 1e6
        sent = report["end"]["sum_sent"]
        return rate, {
            "bytes": int(received["bytes"]),
            "seconds": round(float(received["seconds"]), 2),
            "retransmits": sent.get("retransmits"),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each transfer")
    parser.add_argument("--mtu", type=int, default=1420)
    options = parser.parse_args()
    reason = h.interop_unavailable_reason()
    if reason is not None:
        print(f"cannot run: {reason}")
        return 2

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds the ExitStack: everything is cleaned up

    signal.signal(signal.SIGTERM, terminate)
    started = time.monotonic()
    results: dict[str, float | None] = {}
    with contextlib.ExitStack() as stack:
        bench = Bench(stack, options.seconds, options.mtu)
        cases: list[tuple[str, str, Callable[[], tuple[float, dict[str, Any]]]]] = [
            ("a", "userspace: ourpeer <-> ourpeer (our WireGuard + our TCP)", bench.userspace),
            ("b", "tun: ourpeer -> ourpeer with network = tun (kernel TCP)", bench.tun),
            ("c", "reference: wireguard-go <-> wireguard-go, iperf3", bench.wireguard_go),
        ]
        for key, title, run in cases:
            results[key] = None
            if time.monotonic() - started > BUDGET:
                print(f"({key}) {title}: skipped: time budget spent", flush=True)
                continue
            try:
                rate, detail = run()
            except Skipped as e:
                print(f"({key}) {title}: skipped: {e}", flush=True)
                continue
            except h.InteropError as e:
                print(f"({key}) {title}: FAILED: {str(e)[:2000]}", flush=True)
                continue
            results[key] = rate
            print(f"({key}) {title}: {rate:.0f} Mbit/s  {json.dumps(detail)}", flush=True)
    reference = results.get("c")
    for key in ("a", "b"):
        value = results.get(key)
        if value is not None and reference:
            print(f"({key})/(c) = {value / reference:.3f}")
        else:
            print(f"({key})/(c) = n/a")
    print(f"total {time.monotonic() - started:.1f} s, mtu {options.mtu}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
