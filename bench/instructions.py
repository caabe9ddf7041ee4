"""Instructions per request in the node and the relay, counted by callgrind (a benchmark).

    python bench/instructions.py [--requests 2000] [--side node|relay] [--no-h2]

The end-to-end rates of bench/funnel.py move by ±15 % between runs on a shared machine, more
than most single changes to the request path save. This runs the same funnel (Caddy backend,
``twistd funnel-relay``, ``twistd funnel``: bench/funnel.py's setup) with one of the two
daemons under ``valgrind --tool=callgrind``, sends a warm-up, then zeroes the counters
(``callgrind_control -z``), sends ``--requests`` small requests with h2load (HTTP/1.1 over 32
connections, then HTTP/2 over 32 connections of 10 streams), dumps the counters
(``callgrind_control -d``) and divides: instructions per request in that daemon, its kernel
calls not included. Deterministic where the rates are not, so two trees can be compared by
running this on each (the daemon under callgrind is ~50x slower, so its turns batch more
requests than at full speed: compare trees, not this figure with a CPU time).

Loopback only; every process is stopped at the end (bench/funnel.py's Bench). Needs valgrind,
caddy, h2load.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.funnel import Bench, say, signals_raise
from funnel_tw.demo import HOSTNAME

WARM_UP = 300  # requests before the counters are zeroed
STARTUP = 300.0  # seconds for a daemon under callgrind to start and finish its handshake


class CountingBench(Bench):
    """bench/funnel.py's setup, one daemon started under callgrind."""

    HANDSHAKE_TIMEOUT = STARTUP

    def __init__(self, stack: contextlib.ExitStack, folder: Path, args: argparse.Namespace):
        super().__init__(stack, folder, args)
        self.counted = args.side

    def spawn(
        self, name: str, argv: list[str], cwd: Path, env: dict[str, str] | None = None
    ) -> None:
        if name == self.counted:
            out = self.folder / "callgrind.out"
            argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", *argv]
        super().spawn(name, argv, cwd, env)

    def control(self, flag: str) -> None:
        pid = str(self.procs[self.counted].pid)
        subprocess.run(["callgrind_control", flag, pid], capture_output=True, timeout=120)

    def dumped(self) -> int:
        """Instructions in the newest dump of the counted daemon."""
        dumps = sorted(self.folder.glob("callgrind.out.*"), key=lambda p: p.stat().st_mtime_ns)
        for line in reversed(dumps[-1].read_text(errors="replace").splitlines()):
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
        raise RuntimeError(f"no totals in {dumps[-1]}")


def h2load(url: str, port: int, requests: int, h1: bool) -> str:
    argv = ["h2load", "-n", str(requests), "-c", "32", "-t", "1"]
    argv += ["--h1"] if h1 else ["-m", "10"]
    argv += ["--connect-to", f"127.0.0.1:{port}", url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=900).stdout
    done = re.search(r"requests: .*?(\d+) succeeded", out)
    if done is None or int(done.group(1)) != requests:
        raise RuntimeError(f"h2load did not complete its {requests} requests:\n{out[-2000:]}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="counted, per protocol")
    parser.add_argument("--side", choices=("node", "relay"), default="node")
    parser.add_argument("--no-h2", action="store_true", help="HTTP/1.1 only")
    args = parser.parse_args()
    args.requests = max(200, min(args.requests, 20000))
    args.size_mib = 1
    for tool in ("valgrind", "callgrind_control", "caddy", "h2load"):
        if not shutil.which(tool):
            say(
                f"{tool} not found (apt-get install --no-install-recommends valgrind caddy "
                "nghttp2-client)"
            )
            return 2
    t0 = time.monotonic()
    with signals_raise(), contextlib.ExitStack() as stack:
        folder = Path(tempfile.mkdtemp(prefix="funnel-instructions-"))
        stack.callback(shutil.rmtree, folder, True)
        bench = CountingBench(stack, folder, args)
        backend = bench.start_backend()
        public, _ca = bench.start_funnel(backend)
        url = f"https://{HOSTNAME}:{public}/"
        say(f"{args.side} under callgrind; setup {time.monotonic() - t0:.0f} s")
        for h1 in (True, False)[: 1 if args.no_h2 else 2]:
            h2load(url, public, WARM_UP, h1)
            bench.control("-z")
            h2load(url, public, args.requests, h1)
            bench.control("-d")
            per = bench.dumped() / args.requests
            kind = "HTTP/1.1, 32 connections" if h1 else "HTTP/2, 32 connections x 10 streams"
            say(f"  {kind}: {per:,.0f} instructions per request in the {args.side}")
    say(f"total {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
