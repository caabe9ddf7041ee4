"""End-to-end funnel benchmark: the whole funnel beside Caddy and direct loopback (not a test).

    python bench/funnel.py [--size-mib 256] [--seconds 8] [--clients 32] [--profile]
                           [--no-download] [--no-upload] [--no-h2] [--rates 1000,5000]
                           [--nodes 2] [--mtu 1420] [--node-network tun]

One backend for every case: Caddy 2.6 on plain HTTP (``127.0.0.1`` only), its own process,
answering ``/`` with a short fixed body (``respond``) and ``/big.bin`` (random bytes, 256 MiB by
default) with ``file_server``, and passing ``/upload`` on to an upload sink
(``bench/_upload_sink.py``, its own process: reads the body, answers with its length). Three
ways to reach it:

(a) funnel: HTTPS to the relay's public port with SNI ``demo.funnel.test`` -> relay
    (``twistd -n funnel-relay``, its own process) -> WireGuard over loopback UDP -> node
    (``twistd -n funnel``, its own process, our TCP/IP stack) -> TLS -> reverse proxy -> backend;
    configs from ``funnel_tw.demo.write_configs``; with ``--nodes N``, N node processes, a pool
    for the name (the relay hands each new connection to the next);
(b) reference: Caddy alone (a second Caddy process) as a TLS reverse proxy to the same
    backend (``tls internal``, SNI ``caddy.funnel.test``);
(c) reference: plain HTTP straight to the backend.

For each: large download and upload (the same file, ``curl -T``) in MB/s (curl, HTTP/1.1, best
of up to 3 runs each), small-request rate and p50/p99 latency (h2load, HTTP/1.1 keep-alive,
``--clients`` connections, one load thread, a 1 s warm-up then ``--seconds`` of measurement;
latencies from h2load's per-request log), then the ratios (a)/(b) and (a)/(c). Also an HTTP/2
small-request run for (a) and (b), and the CPU each process on the path used during the best
download, the best upload and during each load run (in cores, and in microseconds per request:
the figure a busy machine changes least). With ``--profile``, py-spy samples the relay and the
node for 10 s during more funnel downloads, then 10 s during small requests over HTTP/1.1 and
10 s over HTTP/2, and the hottest functions of each are printed
(``--profile-dir`` keeps py-spy's raw output). With ``--rates``, HTTP/1.1 latency at each fixed
rate (h2load ``--rps``, 10 connections), funnel and Caddy: what a user waits below saturation.

Loopback only. Every download and load run is bounded in time, no new measurement starts after
``BUDGET`` seconds, and every process started here is stopped (and the temporary folder with the
big file deleted) however the run ends.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from funnel_tw import keys
from funnel_tw.demo import HOSTNAME, write_configs
from tests._support import free_port

ROOT = Path(__file__).resolve().parent.parent

CADDY_HOST = "caddy.funnel.test"
SMALL_BODY = "hello from the funnel-tw bench backend"
BUDGET = 140.0  # seconds: no new measurement starts after this
DOWNLOAD_RUNS = 3
DOWNLOAD_MAX = 20.0  # seconds: one curl download at most
DOWNLOAD_CASE_MAX = 25.0  # seconds: no further download run of a case after this
PROFILE_SECONDS = 10
RATE_CLIENTS = 10  # connections of the fixed-rate runs (--rates)
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def wait_for(check: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


@dataclass
class Case:
    name: str
    label: str
    url: str  # what the client asks for (the small page; the big file is url + "big.bin")
    connect_port: int
    curl_tls: list[str] = field(default_factory=list)
    servers: tuple[str, ...] = ()  # the processes on its path, for the CPU figures
    download: dict[str, float] = field(default_factory=dict)
    upload: dict[str, float] = field(default_factory=dict)
    load: dict[str, float] = field(default_factory=dict)
    load_h2: dict[str, float] = field(default_factory=dict)
    rates: dict[int, dict[str, float]] = field(default_factory=dict)  # fixed rate -> figures


class Bench:
    HANDSHAKE_TIMEOUT = 30.0  # seconds; longer for a daemon under valgrind (bench/instructions.py)

    def __init__(self, stack: contextlib.ExitStack, folder: Path, args: argparse.Namespace):
        self.stack = stack
        self.folder = folder
        # the funnel's shape, for the other benches that build a Bench with fewer options
        for option, default in (("nodes", 1), ("mtu", 0), ("node_network", "userspace")):
            if not hasattr(args, option):
                setattr(args, option, default)
        self.args = args
        self.started = time.monotonic()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        # each fixed-rate run (2 cases) gets its time on top of the budget
        rates = getattr(args, "rates", [])
        self.budget = BUDGET + len(rates) * 2 * (getattr(args, "seconds", 0) + 3)

    # --- processes -----------------------------------------------------------------------

    def spawn(
        self, name: str, argv: list[str], cwd: Path, env: dict[str, str] | None = None
    ) -> None:
        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 (closed by the stack)
        self.stack.callback(log.close)
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        self.procs[name] = proc
        self.stack.callback(self.stop, name, proc)

    @staticmethod
    def stop(name: str, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log_text(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def alive(self, name: str) -> bool:
        if self.procs[name].poll() is not None:
            raise RuntimeError(f"{name} exited early:\n{self.log_text(name)[-3000:]}")
        return True

    def caddy(self, name: str, caddyfile: str) -> None:
        path = self.folder / f"{name}.Caddyfile"
        path.write_text(caddyfile)
        home = self.folder / f"{name}-home"
        home.mkdir()
        env = dict(os.environ, HOME=str(home), XDG_DATA_HOME=str(home), XDG_CONFIG_HOME=str(home))
        argv = ["caddy", "run", "--config", str(path), "--adapter", "caddyfile"]
        self.spawn(name, argv, self.folder, env)

    def start_backend(self) -> int:
        big = self.folder / "www" / "big.bin"
        big.parent.mkdir()
        with big.open("wb") as f:
            for _ in range(self.args.size_mib):
                f.write(os.urandom(1 << 20))
        sink = free_port()
        self.spawn(
            "sink", [sys.executable, str(ROOT / "bench" / "_upload_sink.py"), str(sink)], ROOT
        )
        wait_for(lambda: self.alive("sink") and port_open(sink), "the upload sink", 15)
        port = free_port()
        self.caddy(
            "backend",
            f"""{{
	admin off
	auto_https off
}}
:{port} {{
	bind 127.0.0.1
	handle /big.bin {{
		root * {big.parent}
		file_server
	}}
	handle /upload {{
		reverse_proxy 127.0.0.1:{sink}
	}}
	handle {{
		respond "{SMALL_BODY}" 200
	}}
}}
""",
        )
        wait_for(lambda: self.alive("backend") and port_open(port), "the backend", 15)
        return port

    def start_caddy_proxy(self, backend: int) -> tuple[int, Path]:
        port = free_port()
        self.caddy(
            "caddy-proxy",
            f"""{{
	admin off
	local_certs
	skip_install_trust
	auto_https disable_redirects
	servers {{
		protocols h1 h2
	}}
}}
https://{CADDY_HOST}:{port} {{
	bind 127.0.0.1
	tls internal
	reverse_proxy 127.0.0.1:{backend}
}}
""",
        )
        root = self.folder / "caddy-proxy-home" / "caddy" / "pki" / "authorities" / "local"
        root /= "root.crt"
        wait_for(
            lambda: self.alive("caddy-proxy") and root.exists() and port_open(port),
            "Caddy's TLS proxy",
            20,
        )
        return port, root

    def start_funnel(self, backend: int) -> tuple[int, Path]:
        """The relay and ``--nodes`` node processes, a pool for the one name when more than
        one (each its own key and overlay address, certificates from the first node's CA)."""
        cfg = self.folder / "funnel"
        relay_ini, node_ini, public = write_configs(cfg, backend)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        settings = [(node_ini, "[node]\n", f"network = {self.args.node_network}\n")]
        if self.args.mtu:
            for ini, section in ((relay_ini, "[relay]\n"), (node_ini, "[node]\n")):
                settings.append((ini, section, f"mtu = {self.args.mtu}\n"))
        for ini, section, line in settings:
            ini.write_text(ini.read_text().replace(section, section + line, 1))
        extra = [pool_member(cfg, relay_ini, node_ini, i) for i in range(2, self.args.nodes + 1)]
        self.spawn("relay", [*TWISTD, "funnel-relay", "--config", str(relay_ini)], cfg, env)
        self.spawn("node", [*TWISTD, "funnel", "--config", str(node_ini)], cfg, env)
        self.wait_handshake("node")
        ca = cfg / "state" / "tls" / "ca.pem"
        wait_for(lambda: ca.exists() and port_open(public), "the node's CA and the relay", 15)
        for i, ini in enumerate(extra, start=2):
            tls = cfg / f"state{i}" / "tls"
            tls.mkdir(parents=True, mode=0o700)
            for name in ("ca.key", "ca.pem"):
                shutil.copy2(cfg / "state" / "tls" / name, tls / name)
            self.spawn(f"node{i}", [*TWISTD, "funnel", "--config", str(ini)], cfg, env)
            self.wait_handshake(f"node{i}")
        return public, ca

    def wait_handshake(self, node: str) -> None:
        handshake = re.compile(r"handshake with .* complete")
        wait_for(
            lambda: (
                self.alive("relay")
                and self.alive(node)
                and bool(handshake.search(self.log_text(node)))
                and bool(handshake.search(self.log_text("relay")))
            ),
            f'the WireGuard "handshake with" lines in the relay and {node} logs',
            self.HANDSHAKE_TIMEOUT,
        )

    def nodes(self) -> tuple[str, ...]:
        return ("node", *(f"node{i}" for i in range(2, self.args.nodes + 1)))

    # --- measurements ----------------------------------------------------------------------

    def over_budget(self) -> bool:
        return time.monotonic() - self.started > self.budget

    def curl(
        self, case: Case, path: str, max_time: float, upload: Path | None = None
    ) -> tuple[int, int, float]:
        """One GET, or with ``upload`` a PUT of that file; (HTTP status, bytes moved, seconds).
        An upload counts only if the sink answered with its whole length."""
        answer = self.folder / "curl-answer"
        argv = ["curl", "-sS", "--http1.1", "-o", str(answer), "--max-time", f"{max_time:.0f}"]
        size = "%{size_upload}" if upload else "%{size_download}"
        argv += ["-w", f"%{{http_code}} {size} %{{time_total}}", *case.curl_tls]
        if upload:
            argv += ["-T", str(upload)]
        out = subprocess.run(
            [*argv, case.url + path], capture_output=True, text=True, timeout=max_time + 10
        )
        status, moved, seconds = out.stdout.split()
        if upload and answer.read_bytes() != f"received {moved}\n".encode():
            status = "0"
        return int(status), int(moved), float(seconds)

    def check(self, case: Case) -> None:
        status, size, _ = self.curl(case, "", 10)
        if status != 200 or size != len(SMALL_BODY):
            raise RuntimeError(f"{case.label}: GET / gave HTTP {status}, {size} bytes")

    def cpu_seconds(self, name: str) -> float:
        """User + system CPU time of a started process so far (Linux /proc)."""
        try:
            fields = Path(f"/proc/{self.procs[name].pid}/stat").read_text().rsplit(")", 1)[1]
        except OSError:
            return float("nan")
        utime, stime = fields.split()[11:13]
        return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")

    def measure_transfer(self, case: Case, upload: bool = False) -> None:
        """The big file down (GET) or up (PUT to the sink), best of DOWNLOAD_RUNS."""
        expected = self.args.size_mib << 20
        big = self.folder / "www" / "big.bin"
        best = 0.0
        best_cpu = ""
        runs: list[str] = []
        spent = 0.0
        for _ in range(DOWNLOAD_RUNS):
            if self.over_budget() or spent > DOWNLOAD_CASE_MAX:
                break
            before = {name: self.cpu_seconds(name) for name in case.servers}
            curl_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            path = "upload" if upload else "big.bin"
            status, size, seconds = self.curl(case, path, DOWNLOAD_MAX, big if upload else None)
            curl_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            spent += seconds
            rate = size / seconds / 1e6 if seconds > 0 else 0.0
            complete = status == 200 and size == expected
            runs.append(f"{rate:.1f}" + ("" if complete else f" (partial: {size >> 20} MiB)"))
            if rate > best:
                best = rate
                busy = {n: (self.cpu_seconds(n) - before[n]) / seconds for n in case.servers}
                busy["curl"] = (
                    curl_after.ru_utime
                    + curl_after.ru_stime
                    - curl_before.ru_utime
                    - curl_before.ru_stime
                ) / seconds
                best_cpu = ", ".join(f"{n} {c:.2f}" for n, c in busy.items())
        what = "upload" if upload else "download"
        setattr(case, what, {"mbps": best})
        say(f"  {case.label:<10} {what + ':':<9} best {best:8.1f} MB/s   runs: {', '.join(runs)}")
        say(f"  {'':<10} CPU cores busy during the best run: {best_cpu}")

    def h2load(self, case: Case, h1: bool, seconds: int = 0, rate: int = 0) -> dict[str, float]:
        """Small requests for ``seconds``: as fast as they go over ``--clients`` connections,
        or with ``rate`` at that many a second over RATE_CLIENTS connections."""
        seconds = seconds or self.args.seconds
        logfile = self.folder / f"h2load-{case.name}-{'h1' if h1 else 'h2'}.tsv"
        clients = RATE_CLIENTS if rate else self.args.clients
        argv = ["h2load", "-c", str(clients), "-t", "1", "--warm-up-time", "1"]
        argv += ["-D", str(seconds), "--log-file", str(logfile)]
        if rate:
            argv.append(f"--rps={rate / clients:g}")
        if h1:
            argv.append("--h1")
        else:
            argv += ["-m", "10"]
        argv += ["--connect-to", f"127.0.0.1:{case.connect_port}", case.url]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 20).stdout
        rps = re.search(r"finished in [^,]+, ([\d.]+) req/s", out)
        counts = re.search(r"requests: .*?(\d+) succeeded, (\d+) failed, (\d+) errored", out)
        if rps is None or counts is None:
            raise RuntimeError(f"{case.label}: unexpected h2load output:\n{out}")
        latencies = sorted(
            int(cols[2])
            for line in logfile.read_text().splitlines()
            if len(cols := line.split("\t")) == 3 and cols[1] == "200"
        )
        logfile.unlink()

        def pct(p: float) -> float:
            return latencies[min(len(latencies) - 1, int(p * len(latencies)))] / 1000.0

        return {
            "rps": float(rps.group(1)),
            "ok": float(counts.group(1)),
            "bad": float(counts.group(2)) + float(counts.group(3)),
            "p50": pct(0.50) if latencies else float("nan"),
            "p99": pct(0.99) if latencies else float("nan"),
        }

    def measure_rates(self, cases: list[Case], rates: list[int]) -> None:
        """Latency at fixed rates (HTTP/1.1): below saturation, what a user waits."""
        for rate in rates:
            for case in cases:
                if time.monotonic() - self.started > self.budget:
                    say(f"  {case.label:<10} at {rate:,} req/s: skipped (over the time budget)")
                    continue
                r = self.h2load(case, True, rate=rate)
                case.rates[rate] = r
                failed = f", {r['bad']:.0f} failed" if r["bad"] else ""
                say(
                    f"  {case.label:<10} at {rate:>6,} req/s: got {r['rps']:7,.0f}   "
                    f"p50 {r['p50']:7.2f} ms   p99 {r['p99']:7.2f} ms{failed}"
                )

    def measure_load(self, case: Case, h1: bool = True) -> None:
        if self.over_budget():
            say(f"  {case.label:<10} small requests: skipped (over the time budget)")
            return
        before = {name: self.cpu_seconds(name) for name in case.servers}
        t0 = time.monotonic()
        r = self.h2load(case, h1)
        wall = time.monotonic() - t0
        if h1:
            case.load = r
        else:
            case.load_h2 = r
        kind = "HTTP/1.1" if h1 else "HTTP/2, 10 streams/conn"
        failed = f", {r['bad']:.0f} failed" if r["bad"] else ""
        say(
            f"  {case.label:<10} small requests ({kind}): {r['rps']:9,.0f} req/s   "
            f"p50 {r['p50']:7.2f} ms   p99 {r['p99']:7.2f} ms   ({r['ok']:,.0f} ok{failed})"
        )
        # CPU per request: what a busy machine changes least (the rate falls, this does not)
        busy = {n: (self.cpu_seconds(n) - before[n]) / wall for n in case.servers}
        say(
            f"  {'':<10} CPU: "
            + ", ".join(
                f"{n} {c:.2f} cores, {c / r['rps'] * 1e6:.0f} us/request" if r["rps"] else n
                for n, c in busy.items()
            )
        )

    def profile(self, case: Case, what: str) -> None:
        """py-spy the relay and the node for 10 s of downloads or small requests (``what``);
        print the hot spots."""
        if not shutil.which("py-spy"):
            say("  py-spy not found: no profile")
            return
        out_dir = self.args.profile_dir or self.folder
        out_dir.mkdir(parents=True, exist_ok=True)
        spies: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        for name in ("relay", "node"):
            out = out_dir / f"{name}-{what}.pyspy.txt"
            argv = ["py-spy", "record", "--format", "raw", "-d", str(PROFILE_SECONDS)]
            argv += ["--idle", "--threads", "--nonblocking", "-p", str(self.procs[name].pid)]
            spy = subprocess.Popen(
                [*argv, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            self.stack.callback(self.stop, f"py-spy {name}", spy)
            spies[name] = (spy, out)
        # keep the funnel busy for the whole sampling window
        if what == "download":
            end = time.monotonic() + PROFILE_SECONDS + 0.5
            moved = 0
            t0 = time.monotonic()
            while (left := end - time.monotonic()) > 1:
                moved += self.curl(case, "big.bin", max(1, int(left)))[1]
            rate = f"{moved / (time.monotonic() - t0) / 1e6:.1f} MB/s"
        else:
            h1 = what == "requests"
            rate = f"{self.h2load(case, h1, PROFILE_SECONDS - 1)['rps']:,.0f} req/s"
        say(f"  {what} while sampling: {rate}")
        for name, (spy, out) in spies.items():
            try:
                _, err = spy.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
                _, err = spy.communicate()
            if not out.exists():
                say(f"  py-spy {name}: no profile ({err.decode(errors='replace').strip()[-300:]})")
                continue
            report_profile(name, out)
        if self.args.profile_dir:
            say(f"  raw py-spy output in {out_dir}")


def report_profile(name: str, path: Path, top: int = 12) -> None:
    """Summarize py-spy's raw (folded) output: the main thread's own and inclusive time."""
    own: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        threads[frames[0]] += int(count)
    if not threads:
        say(f"  py-spy {name}: no samples")
        return
    # the reactor runs in the main thread (py-spy --threads: "thread (TID): MainThread")
    main_thread = next(
        (t for t in threads if t.endswith(": MainThread")), threads.most_common(1)[0][0]
    )
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not count.isdigit() or frames[0] != main_thread:
            continue
        n = int(count)
        total += n
        names = [_short_frame(f) for f in frames[1:]]
        leaf = names[-1] if names else "?"
        caller = names[-2].rsplit(":", 1)[-1] if len(names) > 1 else ""
        own[f"{leaf}  <- {caller}" if caller else leaf] += n
        by_file[leaf.rsplit(":", 1)[0]] += n
        for f in set(names):
            if f.startswith("funnel_tw/") or f.startswith("OpenSSL/"):
                inclusive[f] += n
    others = sum(threads.values()) - threads[main_thread]
    say(
        f"  py-spy {name}: {total} samples of the reactor thread"
        + (f" ({others} more of other threads left out)" if others else "")
    )
    say("    own time (the function on top of the stack  <- its caller):")
    for f, n in own.most_common(top):
        say(f"      {n / total:6.1%}  {f}")
    say("    own time by file:")
    say("      " + ", ".join(f"{f} {n / total:.1%}" for f, n in by_file.most_common(8)))
    say("    inclusive, funnel_tw and OpenSSL functions (the function and what it calls):")
    for f, n in inclusive.most_common(top):
        say(f"      {n / total:6.1%}  {f}")


def _short_frame(frame: str) -> str:
    """py-spy's ``function (path/to/file.py:line)`` as ``file.py:function``, paths trimmed."""
    m = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame
    func, path = m.groups()
    for marker in ("/funnel_tw/", "/twisted/", "/OpenSSL/", "/site-packages/", "/lib/python3.11/"):
        if marker in path:
            top = marker.strip("/")
            prefix = "" if top in ("site-packages", "lib/python3.11") else top + "/"
            path = prefix + path.split(marker, 1)[1]
            break
    return f"{path}:{func}"


def pool_member(cfg: Path, relay_ini: Path, node_ini: Path, i: int) -> Path:
    """node{i}.ini: the demo node's config with its own key, overlay address and state-dir,
    and its ``[node demo{i}]`` section added to relay.ini (the same name: a pool)."""
    key = keys.generate_private_key()
    key_file = cfg / f"node{i}.key"
    key_file.write_text(keys.encode_key(key) + "\n")
    key_file.chmod(0o600)
    v4, v6 = f"100.64.0.{i + 1}", f"fd7a:115c:a1e0::{i + 1:x}"
    text = node_ini.read_text()
    for old, new in (
        ("private-key-file = node.key", f"private-key-file = node{i}.key"),
        ("100.64.0.2/32, fd7a:115c:a1e0::2/128", f"{v4}/32, {v6}/128"),
        ("state-dir = state", f"state-dir = state{i}"),
    ):
        assert old in text, old
        text = text.replace(old, new)
    ini = cfg / f"node{i}.ini"
    ini.write_text(text)
    with relay_ini.open("a") as relay:
        relay.write(
            f"\n[node demo{i}]\npublic-key = {keys.encode_key(keys.public_key(key))}\n"
            f"allowed-ips = {v4}/32, {v6}/128\nhostnames = {HOSTNAME}\npeerapi = {v4}:41642\n"
        )
    return ini


def busy_cores(seconds: float = 1.0) -> float:
    """How many cores other work keeps busy right now (from /proc/stat; NaN elsewhere)."""

    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values[:8]) - idle, sum(values[:8])

    try:
        busy0, total0 = sample()
        time.sleep(seconds)
        busy1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return float("nan")
    cpus = os.cpu_count() or 1
    return (busy1 - busy0) / max(1, total1 - total0) * cpus


def quiet_check() -> str:
    """Other work on the machine skews every figure here: say how much there was."""
    busy = busy_cores()
    note = f"before the start: {busy:.2f} of {os.cpu_count()} cores busy with other work"
    if busy > 0.25:
        note += " -- figures will be noisy; rerun on a quiet machine"
    return note


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b and a == a and b == b else "n/a"


def print_ratios(a: Case, refs: list[Case]) -> None:
    say()
    say("Ratios (funnel / reference; for latency, above 1 means the funnel is slower):")
    for ref in refs:
        parts = [
            f"{what} {ratio(getattr(a, what).get('mbps', 0), getattr(ref, what).get('mbps', 0))}"
            for what in ("download", "upload")
        ]
        if a.load and ref.load:
            parts.append(f"req/s {ratio(a.load['rps'], ref.load['rps'])}")
            parts.append(f"p50 {ratio(a.load['p50'], ref.load['p50'])}")
            parts.append(f"p99 {ratio(a.load['p99'], ref.load['p99'])}")
        if a.load_h2 and ref.load_h2:
            parts.append(f"HTTP/2 req/s {ratio(a.load_h2['rps'], ref.load_h2['rps'])}")
        say(f"  (a)/{ref.name}: " + "   ".join(parts))


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """SIGTERM/SIGHUP end the run like Ctrl-C, so the cleanup below always runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=256, help="the big file (default 256)")
    parser.add_argument(
        "--seconds", type=int, default=8, help="measured seconds of each load run, 1-9 (8)"
    )
    parser.add_argument("--clients", type=int, default=32, help="h2load connections (32)")
    parser.add_argument("--profile", action="store_true", help="py-spy relay and node (2 x 10 s)")
    parser.add_argument(
        "--profile-dir", type=Path, default=None, help="keep py-spy's raw output in this folder"
    )
    parser.add_argument("--no-h2", action="store_true", help="skip the HTTP/2 load runs")
    parser.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="node processes serving the name, a pool behind the one relay (1)",
    )
    parser.add_argument(
        "--node-network",
        choices=("userspace", "tun"),
        default="userspace",
        help="the node's overlay: our TCP/IP stack (default) or the kernel's through TUN (root)",
    )
    parser.add_argument(
        "--mtu", type=int, default=0, help="overlay MTU of relay and node (their default: 1280)"
    )
    parser.add_argument(
        "--rates",
        type=lambda text: [int(r) for r in text.split(",") if r],
        default=[],
        help="fixed request rates (e.g. 1000,3000,5000): HTTP/1.1 latency at each, "
        f"{RATE_CLIENTS} connections, funnel and Caddy",
    )
    parser.add_argument("--no-download", action="store_true", help="skip the download runs")
    parser.add_argument("--no-upload", action="store_true", help="skip the upload runs")
    args = parser.parse_args()
    if args.nodes > 1 and args.node_network == "tun":
        parser.error("--nodes > 1 needs --node-network userspace (one host: one TUN route)")
    args.seconds = max(1, min(args.seconds, 9))  # with the 1 s warm-up: at most 10 s a run
    for tool in ("caddy", "curl", "h2load"):
        if not shutil.which(tool):
            say(
                f"{tool} not found (apt-get install --no-install-recommends caddy curl "
                "nghttp2-client)"
            )
            return 2
    quiet_note = quiet_check()
    t0 = time.monotonic()
    with signals_raise(), contextlib.ExitStack() as stack:
        folder = Path(tempfile.mkdtemp(prefix="funnel-bench-"))
        stack.callback(shutil.rmtree, folder, True)
        bench = Bench(stack, folder, args)
        try:
            backend = bench.start_backend()
            caddy_port, caddy_root = bench.start_caddy_proxy(backend)
            public, ca = bench.start_funnel(backend)
        except RuntimeError as e:
            say(f"setup failed: {e}")
            return 1
        version = subprocess.run(["caddy", "version"], capture_output=True, text=True).stdout
        say(
            f"funnel-tw end-to-end benchmark: {args.size_mib} MiB download, small requests with "
            f"{args.clients} connections for {args.seconds} s (+1 s warm-up); "
            f"{os.cpu_count()} CPUs; Caddy {version.split()[0] if version else '?'}"
        )
        say(
            f"setup took {time.monotonic() - t0:.1f} s (big file, Caddy x2, relay, node, handshake)"
        )
        say(quiet_note)
        funnel = Case(
            "(a)",
            "(a) funnel",
            f"https://{HOSTNAME}:{public}/",
            public,
            ["--cacert", str(ca), "--resolve", f"{HOSTNAME}:{public}:127.0.0.1"],
            ("relay", *bench.nodes(), "backend"),
        )
        caddy = Case(
            "(b)",
            "(b) Caddy",
            f"https://{CADDY_HOST}:{caddy_port}/",
            caddy_port,
            ["--cacert", str(caddy_root), "--resolve", f"{CADDY_HOST}:{caddy_port}:127.0.0.1"],
            ("caddy-proxy", "backend"),
        )
        direct = Case(
            "(c)", "(c) direct", f"http://127.0.0.1:{backend}/", backend, [], ("backend",)
        )
        cases = [funnel, caddy, direct]
        try:
            for case in cases:
                bench.check(case)
            say()
            if not args.no_download:
                say("Large download (curl --http1.1, best of runs):")
                for case in cases:
                    bench.measure_transfer(case)
            if not args.no_upload:
                say("Large upload (curl --http1.1 -T, best of runs):")
                for case in cases:
                    bench.measure_transfer(case, upload=True)
            say()
            say(f"Small requests (h2load, {args.clients} connections, 1 thread):")
            for case in cases:
                bench.measure_load(case)
            if not args.no_h2:
                for case in (funnel, caddy):
                    bench.measure_load(case, h1=False)
            if args.rates:
                say()
                say(f"Latency at fixed rates (h2load --rps, HTTP/1.1, {RATE_CLIENTS} connections):")
                bench.measure_rates([funnel, caddy], args.rates)
            print_ratios(funnel, [caddy, direct])
            profiled = ["requests"] if args.no_download else ["download", "requests"]
            profiled += [] if args.no_h2 else ["requests-h2"]
            for what in profiled if args.profile else ():
                if bench.over_budget():
                    break
                say()
                say(
                    f"Profile of the funnel during {what} (py-spy --idle --nonblocking, "
                    f"{PROFILE_SECONDS} s, 100 Hz; the load slows under sampling):"
                )
                bench.profile(funnel, what)
        except (RuntimeError, subprocess.SubprocessError, ValueError) as e:
            say(f"benchmark failed: {e}")
            for name in ("relay", *bench.nodes()):
                say(f"--- {name} log (tail) ---\n{bench.log_text(name)[-2000:]}")
            return 1
    say()
    say(f"total time {time.monotonic() - t0:.0f} s; all processes stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
