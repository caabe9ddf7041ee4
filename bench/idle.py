"""Memory per idle funnel connection, relay and node, beside Caddy's (a benchmark, not a test).

    python bench/idle.py [--connections 10000] [--step 2500]

A relay and a node (``twistd``, their own processes; configs from ``funnel_tw.demo``) in front
of a Caddy backend, and Caddy as a TLS reverse proxy to the same backend as the reference.
The client opens ``--connections`` HTTPS connections to each, in steps of ``--step``: each
completes TLS (SNI, the node's or Caddy's CA), sends one HTTP/1.1 keep-alive GET, reads the
answer, then stays open and idle. The connections come from many loopback source addresses
(127.0.1.1, 127.0.1.2, ...; at most 200 each) because the relay limits connections per address.
After each step: the resident memory (VmRSS) of the relay, the node and Caddy, per connection
over the baseline; and the latency of a fresh request made meanwhile (does the node still answer
in milliseconds with all of them held?).

``--tracemalloc``: the relay and the node run with ``tracemalloc`` and write a snapshot on
SIGUSR2 (a ``sitecustomize`` put on their path); after the last step the Python allocations
that grew, per connection and by line, are printed for each (OpenSSL's own memory is not in
them: it is the rest of VmRSS).

``--profile``: after the last step, py-spy samples the relay and the node for 8 s while
fresh requests run one after another; their latency and the hot spots are printed.

Loopback only; every run is bounded (``--budget`` seconds), and every process and socket is
closed however the run ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from funnel import CADDY_HOST, Bench, report_profile, wait_for

from funnel_tw.demo import HOSTNAME

PER_SOURCE = 200
SNAPSHOT_HOOK = """
import os, signal, time, tracemalloc
if os.environ.get("FUNNEL_TW_SNAPSHOT_DIR"):
    tracemalloc.start(int(os.environ.get("FUNNEL_TW_SNAPSHOT_FRAMES", "1")))
    def _snapshot(signum, frame):
        path = f"{os.environ['FUNNEL_TW_SNAPSHOT_DIR']}/{os.getpid()}-{time.time_ns()}"
        tracemalloc.take_snapshot().dump(path + ".tmp")
        os.rename(path + ".tmp", path + ".snap")  # whole, or not there
    signal.signal(signal.SIGUSR2, _snapshot)
"""


def rss_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else 0


def source(i: int) -> str:
    n = i // PER_SOURCE + 1
    return f"127.0.{1 + n // 250}.{1 + n % 250}"


class Idle:
    """Idle keep-alive connections to one HTTPS endpoint."""

    def __init__(self, port: int, name: str, ca: Path, path: str = "/") -> None:
        self.port = port
        self.name = name
        self.path = path  # what each held connection asks for once
        self.context = ssl.create_default_context(cafile=str(ca))
        self.held: list[asyncio.StreamWriter] = []
        self.failed = 0

    async def open_one(self, i: int, gate: asyncio.Semaphore) -> None:
        async with gate:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        "127.0.0.1",
                        self.port,
                        ssl=self.context,
                        server_hostname=self.name,
                        local_addr=(source(i), 0),
                    ),
                    30,
                )
                writer.write(f"GET {self.path} HTTP/1.1\r\nHost: {self.name}\r\n\r\n".encode())
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                length = re.search(rb"(?i)content-length:\s*(\d+)", head)
                if length:
                    await asyncio.wait_for(reader.readexactly(int(length.group(1))), 30)
                self.held.append(writer)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ssl.SSLError):
                self.failed += 1

    async def grow(self, total: int, concurrency: int = 64) -> None:
        gate = asyncio.Semaphore(concurrency)
        start = len(self.held) + self.failed
        await asyncio.gather(*(self.open_one(i, gate) for i in range(start, total)))

    async def request_ms(self) -> float:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=self.context, server_hostname=self.name
        )
        writer.write(f"GET / HTTP/1.1\r\nHost: {self.name}\r\nConnection: close\r\n\r\n".encode())
        await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return (time.monotonic() - started) * 1000

    def close(self) -> None:
        for writer in self.held:
            writer.transport.abort()
        self.held = []


def snapshot(pid: int, folder: Path) -> tracemalloc.Snapshot:
    """Ask a daemon for a tracemalloc snapshot (SIGUSR2) and load it."""
    before = set(folder.glob(f"{pid}-*.snap"))
    os.kill(pid, signal.SIGUSR2)
    wait_for(lambda: bool(set(folder.glob(f"{pid}-*.snap")) - before), "a snapshot", 60)
    (path,) = set(folder.glob(f"{pid}-*.snap")) - before
    return tracemalloc.Snapshot.load(str(path))


def report_growth(
    name: str, base: tracemalloc.Snapshot, now: tracemalloc.Snapshot, n: int, top: int = 25
) -> None:
    """Python allocations that grew between two snapshots, per connection, by line."""
    stats = now.compare_to(base, "lineno")
    grown = sum(s.size_diff for s in stats)
    print(f"\n{name}: Python allocations grew {grown / max(n, 1) / 1024:.1f} KiB/conn; top lines:")
    for stat in stats[:top]:
        frame = stat.traceback[0]
        path = frame.filename.split("site-packages/")[-1].split("/funnel_tw/")[-1]
        print(
            f"  {stat.size_diff / max(n, 1):8.0f} B/conn {stat.count_diff / max(n, 1):6.2f} "
            f"blocks/conn  {path}:{frame.lineno}"
        )
    if now.traceback_limit > 1:  # --tracemalloc-frames: where from
        for stat in now.compare_to(base, "traceback")[:5]:
            print(f"  {stat.size_diff / max(n, 1):8.0f} B/conn, allocated at:")
            for line in stat.traceback.format(most_recent_first=True)[::2][:10]:
                print(f"      {line.strip()}")


async def profile_requests(bench: Bench, idle: Idle, seconds: int = 8) -> None:
    """py-spy the relay and the node while fresh requests run one after another beside the
    idle connections: where does a request's time go when thousands are held?"""
    if not shutil.which("py-spy"):
        print("  py-spy not found: no profile")
        return
    spies = {}
    for name in ("relay", "node"):
        out = bench.folder / f"{name}-idle.pyspy.txt"
        argv = ["py-spy", "record", "--format", "raw", "-d", str(seconds), "--idle"]
        argv += ["--nonblocking", "-p", str(bench.procs[name].pid), "-o", str(out)]
        spies[name] = (subprocess.Popen(argv, stdout=subprocess.DEVNULL), out)
    times = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        times.append(await idle.request_ms())
    times.sort()
    print(
        f"\n  {len(times)} requests while sampling: p50 {times[len(times) // 2]:.1f} ms, "
        f"max {times[-1]:.1f} ms"
    )
    for name, (spy, out) in spies.items():
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
        if out.exists():
            report_profile(name, out)


async def run(bench: Bench, args: argparse.Namespace) -> None:
    backend = bench.start_backend()
    funnel_port, funnel_ca = start_funnel(bench, backend, args.connections)
    caddy_port, caddy_root = bench.start_caddy_proxy(backend)
    cases = {
        "funnel": (Idle(funnel_port, HOSTNAME, funnel_ca, args.path), ["relay", "node"]),
        "caddy": (Idle(caddy_port, CADDY_HOST, caddy_root, args.path), ["caddy-proxy"]),
    }
    deadline = time.monotonic() + args.budget
    snaps = args.snapshot_dir
    for label, (idle, procs) in cases.items():
        await idle.request_ms()  # warm: code paths loaded before the baseline
        base = {p: rss_kib(bench.procs[p].pid) for p in procs}
        traced = [p for p in procs if snaps and p in ("relay", "node")]
        base_snaps = {p: snapshot(bench.procs[p].pid, snaps) for p in traced}
        print(f"\n{label}: baseline " + ", ".join(f"{p} {base[p] / 1024:.0f} MiB" for p in procs))
        target = 0
        try:
            while target < args.connections and time.monotonic() < deadline:
                target = min(args.connections, target + args.step)
                started = time.monotonic()
                await asyncio.wait_for(idle.grow(target), max(1, deadline - time.monotonic()))
                took = time.monotonic() - started
                await asyncio.sleep(2)  # let buffers settle
                n = len(idle.held)
                per = {p: (rss_kib(bench.procs[p].pid) - base[p]) / max(n, 1) for p in procs}
                latency = sorted([await idle.request_ms() for _ in range(5)])[2]
                print(
                    f"  {n:6d} idle ({idle.failed} failed, opened in {took:.1f} s): "
                    + ", ".join(f"{p} {per[p]:.1f} KiB/conn" for p in procs)
                    + f"; a new request meanwhile {latency:.1f} ms (median of 5)"
                )
            for p in traced:
                report_growth(p, base_snaps[p], snapshot(bench.procs[p].pid, snaps), n)
            if args.profile and label == "funnel":
                await profile_requests(bench, idle)
        except TimeoutError:
            print(f"  budget of {args.budget:.0f} s spent")
        finally:
            idle.close()


def start_funnel(bench: Bench, backend: int, connections: int) -> tuple[int, Path]:
    """bench/funnel.py's funnel; then room for the connections in the relay's limits, by a
    live reload (max-connections applies without a restart)."""
    port, ca = bench.start_funnel(backend)
    relay_ini = bench.folder / "funnel" / "relay.ini"
    limits = f"[relay]\nmax-connections = {connections + 1000}\n"
    relay_ini.write_text(relay_ini.read_text().replace("[relay]\n", limits, 1))
    bench.procs["relay"].send_signal(signal.SIGHUP)
    wait_for(
        lambda: "reload: 1 changes applied" in bench.log_text("relay"), "the relay's reload", 10
    )
    return port, ca


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--step", type=int, default=2500)
    parser.add_argument("--budget", type=float, default=300.0)
    parser.add_argument("--tracemalloc", action="store_true", help=__doc__.split("\n\n")[2])
    parser.add_argument("--profile", action="store_true", help=__doc__.split("\n\n")[3])
    parser.add_argument("--tracemalloc-frames", type=int, default=1, help="frames per trace")
    parser.add_argument(
        "--path",
        default="/",
        help="what each held connection GETs before it idles: / (a few bytes, the default) "
        "or /big.bin (1 MiB: what a connection that once moved data keeps)",
    )
    args = parser.parse_args()
    args.size_mib = 1  # the backend's big file is not used here
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 4 * args.connections + 4096)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))  # the daemons inherit it
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        args.snapshot_dir = None
        if args.tracemalloc:  # the daemons inherit the environment (bench/funnel.py)
            hook = Path(tmp) / "hook"
            hook.mkdir()
            (hook / "sitecustomize.py").write_text(SNAPSHOT_HOOK)
            args.snapshot_dir = Path(tmp) / "snapshots"
            args.snapshot_dir.mkdir()
            os.environ["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(hook), os.environ.get("PYTHONPATH")])
            )
            os.environ["FUNNEL_TW_SNAPSHOT_DIR"] = str(args.snapshot_dir)
            os.environ["FUNNEL_TW_SNAPSHOT_FRAMES"] = str(args.tracemalloc_frames)
        bench = Bench(stack, Path(tmp), args)
        print(f"bench/idle.py: {args.connections} connections, {os.cpu_count()} cores")
        asyncio.run(run(bench, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
