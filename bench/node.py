"""The node's HTTPS reverse proxy under load, beside Caddy (a benchmark, not a test).

    python bench/node.py [--seconds 10] [--connections 32] [--streams 10]
                         [--wrk-connections 64] [--size-mib 256]
                         [--profile [--profile-dir DIR]] [--node-pool N]

Two servers in front of the same backend, measured with the same load in one invocation:

- node: client -> test front (loopback TCP, the relay's part: ``POST /v0/ingress``, 101,
  splice) -> peerAPI -> node TLS -> reverse proxy -> backend. The node, its peerAPI and the
  front run in their own process (bench/_node_stack.py), never in the load generator's.
- reference: Caddy (Debian's 2.6) as a TLS reverse proxy with the node's own certificate.
- backend (shared): a second Caddy speaking plain HTTP/1.1 on loopback: ``/small`` answers
  96 bytes with ``respond``, ``/big`` is a file served with ``file_server``.

Loads: h2load over HTTP/2 and wrk over HTTP/1.1 keep-alive on ``/small`` (request rate,
latency percentiles), curl over HTTP/1.1 and HTTP/2 on ``/big`` (MB/s). Each run is bounded
by --seconds (at most 15); the CPU used meanwhile by the server, the backend and the load
generator is read from /proc and getrusage. With --profile, py-spy samples the node process
during one more h2load, wrk and HTTP/2 download run and the hot spots are printed.
--node-pool N overrides the node's backend keep-alive pool size, to try a change before making
it. Every process started here is stopped when the run ends, whatever happens.

Needs: caddy, h2load (nghttp2-client), wrk, curl; py-spy for --profile.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
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
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests._support import free_port  # noqa: E402

SMALL_BODY = (
    "Hello from the backend: a small response body of about one hundred bytes, "
    "as an API might send."
)
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- processes ---------------------------------------------------------------------------------


class Processes:
    """Every child started by the benchmark; all stopped on exit, however it ends."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.children: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self, name: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        log = open(self.directory / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop_all
        child = subprocess.Popen(argv, stderr=log, **kwargs)
        self.children.append((name, child, log))
        return child

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.directory / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop_all(self) -> None:
        for _, child, _ in reversed(self.children):
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + 5
        for _, child, log in reversed(self.children):
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            log.close()
        self.children = []


def wait_listening(
    port: int, child: subprocess.Popen[bytes], what: str, timeout: float = 10
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"{what} exited with {child.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} does not listen on {port} after {timeout} s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_cpu_seconds() -> float:
    """CPU time of this process's reaped children (the load generators, once they exit)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def cpu_meter(server: int, backend: int) -> Iterator[dict[str, float]]:
    """Cores used during the block by the server, the backend and the load generator."""
    result: dict[str, float] = {}
    s0, b0, c0 = cpu_seconds(server), cpu_seconds(backend), children_cpu_seconds()
    t0 = time.monotonic()
    yield result
    wall = time.monotonic() - t0
    result["server_cpu"] = (cpu_seconds(server) - s0) / wall
    result["backend_cpu"] = (cpu_seconds(backend) - b0) / wall
    result["client_cpu"] = (children_cpu_seconds() - c0) / wall


def caddy_env(directory: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(HOME=str(directory), XDG_DATA_HOME=str(directory), XDG_CONFIG_HOME=str(directory))
    return env


def start_caddy(procs: Processes, name: str, caddyfile: str, port: int) -> subprocess.Popen[bytes]:
    path = procs.directory / f"{name}.caddyfile"
    path.write_text(caddyfile)
    child = procs.start(
        name,
        ["caddy", "run", "--config", str(path), "--adapter", "caddyfile"],
        env=caddy_env(procs.directory / name),
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_listening(port, child, name)
    except RuntimeError:
        print(procs.log_tail(name), file=sys.stderr)
        raise
    return child


CADDY_GLOBALS = """{{
	admin off
	auto_https disable_redirects
	skip_install_trust
	storage file_system {storage}
	servers {{
		protocols h1 h2
	}}
}}
"""


def backend_caddyfile(port: int, www: Path, storage: Path) -> str:
    return (
        CADDY_GLOBALS.format(storage=storage)
        + f"""
http://:{port} {{
	handle /small {{
		respond "{SMALL_BODY}
" 200
	}}
	handle {{
		root * {www}
		file_server
	}}
}}
"""
    )


def reference_caddyfile(port: int, hostname: str, cert: str, backend: int, storage: Path) -> str:
    return (
        CADDY_GLOBALS.format(storage=storage)
        + f"""
https://{hostname}:{port} {{
	tls {cert} {cert}
	reverse_proxy 127.0.0.1:{backend}
}}
"""
    )


# --- loads -------------------------------------------------------------------------------------


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def run_h2load(
    url: str, args: argparse.Namespace, log_file: Path, seconds: float
) -> dict[str, Any]:
    """HTTP/2 request rate; latencies from h2load's per-request log (microseconds)."""
    log_file.unlink(missing_ok=True)
    argv = [
        "h2load",
        "-t",
        "1",
        "-c",
        str(args.connections),
        "-m",
        str(args.streams),
        "-D",
        str(int(seconds)),
        "--warm-up-time=1",
        f"--log-file={log_file}",
        url,
    ]
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 30, check=False
    ).stdout
    done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", out)
    failed = re.search(r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    rate = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    if done is None or rate is None:
        raise RuntimeError(f"h2load said:\n{out}")
    micros: list[float] = []
    if log_file.exists():
        for line in log_file.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1].startswith("2"):
                micros.append(float(parts[2]))
    micros.sort()
    return {
        "rps": float(rate.group(3)),
        "ok": int(done.group(3)),
        "errors": sum(int(x) for x in failed.groups()) if failed else 0,
        "p50_ms": _percentile(micros, 0.50) / 1000,
        "p99_ms": _percentile(micros, 0.99) / 1000,
    }


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def run_wrk(url: str, args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    """HTTP/1.1 keep-alive request rate and wrk's latency percentiles."""
    argv = [
        "wrk",
        "-t",
        "1",
        "-c",
        str(args.wrk_connections),
        "-d",
        f"{int(seconds)}s",
        "--latency",
        url,
    ]
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 30, check=False
    ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rate is None:
        raise RuntimeError(f"wrk said:\n{out}")
    latency = {
        q: float(v) * _UNITS[u]
        for q, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    }
    errors = 0
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if socket_errors:
        errors += sum(int(x) for x in socket_errors.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    return {
        "rps": float(rate.group(1)),
        "errors": errors,
        "p50_ms": latency.get("50", float("nan")),
        "p99_ms": latency.get("99", float("nan")),
    }


def run_curl(url: str, version: str, ca: str, size: int, seconds: float) -> dict[str, Any]:
    """One large download to /dev/null: MB/s as curl measured it."""
    argv = [
        "curl",
        "-sS",
        version,
        "--cacert",
        ca,
        "--max-time",
        str(int(seconds)),
        "-o",
        "/dev/null",
        "-w",
        "%{size_download} %{time_total} %{http_version}",
        url,
    ]
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 10, env=env)
    got, total, http_version = done.stdout.split()
    if done.returncode != 0 or int(got) != size:
        raise RuntimeError(f"curl {version} {url}: {done.returncode} {got}/{size} {done.stderr}")
    return {"mbps": size / float(total) / 1e6, "seconds": float(total), "http": http_version}


# --- profile -----------------------------------------------------------------------------------

_PLUMBING = re.compile(
    r"^(<module>|main|ReactorBase\.(run|mainLoop|runUntilCurrent)|EPollReactor\.doPoll|"
    r"callWithLogger|callWithContext|\w*ContextTracker\.callWithContext|"
    r"_PollLikeMixin\._doReadOrWrite) "
)
_PACKAGES = [
    ("pyOpenSSL / OpenSSL (TLS records, handshakes)", ("OpenSSL/", "cryptography/")),
    ("h2 / hpack / hyperframe (HTTP/2 framing)", ("h2/", "hpack/", "hyperframe/")),
    ("twisted.web HTTP/2 channel", ("twisted/web/_http2.py",)),
    ("twisted.web server (HTTP/1.1, Request, Site)", ("twisted/web/http.py", "twisted/web/server")),
    ("twisted.web client (Agent, pool, parser)", ("twisted/web/client.py", "twisted/web/_newc")),
    ("twisted.web headers", ("twisted/web/http_headers.py",)),
    ("twisted TLS protocol (memory BIO)", ("twisted/protocols/tls.py",)),
    ("twisted reactor, TCP, Deferreds", ("twisted/internet/", "twisted/python/")),
    ("zope.interface", ("interface/",)),
    ("funnel_tw", ("funnel_tw/",)),
]


_CATEGORIES = [
    (
        "opening backend connections (pool misses: HostnameEndpoint, getaddrinfo in the "
        "thread pool, connect)",
        (
            "HTTPConnectionPool._newConnection",
            "GAIResolver",
            "HostnameEndpoint",
            "BaseClient.",
            "ThreadPool.",
            "_team.py",
        ),
    ),
    ("closing connections (connectionLost, socket close)", ("connectionLost", "_SocketCloser")),
    ("the test front's splice (the relay's part)", ("splice.py", "harness.py")),
]


def summarise_profile(raw: Path, seconds: float, rate: int, top: int = 18) -> str:
    """py-spy's raw (folded) stacks of the reactor thread -> self-time, packages, inclusive."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    categories: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "ReactorBase.run " not in stack:
            continue  # threads other than the reactor's (the resolver pool)
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            if not _PLUMBING.match(frame):
                inclusive[frame] += n
        for label, markers in _CATEGORIES:
            if any(m in frame for frame in frames for m in markers):
                categories[label] += n
                break
        leaf = frames[-1]
        for label, markers in _PACKAGES:
            if any(m in leaf for m in markers):
                packages[label] += n
                break
        else:
            packages["other (stdlib, ...)"] += n
    if not total:
        return "    (no samples)"
    possible = seconds * rate
    lines = [
        f"    reactor thread busy in {total} of ~{possible:.0f} samples "
        f"({100 * total / possible:.0f}% of one core)",
        "    inclusive time of some activities:",
    ]
    lines += [f"      {100 * categories[name] / total:5.1f}%  {name}" for name, _ in _CATEGORIES]
    lines.append("    self time by package:")
    lines += [f"      {100 * n / total:5.1f}%  {name}" for name, n in packages.most_common()]
    lines.append("    self time, top functions:")
    lines += [f"      {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines.append("    inclusive time, top frames below the reactor loop:")
    lines += [
        f"      {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top + 12)
    ]
    return "\n".join(lines)


def profiled(pid: int, raw: Path, rate: int) -> subprocess.Popen[bytes]:
    """py-spy on ``pid`` until it is sent SIGINT; raw (folded) stacks into ``raw``."""
    return subprocess.Popen(
        [
            *("py-spy", "record", "--pid", str(pid), "--format", "raw"),
            *("--rate", str(rate), "--output", str(raw)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# --- main --------------------------------------------------------------------------------------


def fmt_ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="per load run (max 15)")
    parser.add_argument("--connections", type=int, default=32, help="h2load connections")
    parser.add_argument("--streams", type=int, default=10, help="h2load streams per connection")
    parser.add_argument("--wrk-connections", type=int, default=64)
    parser.add_argument("--size-mib", type=int, default=256, help="the large download")
    parser.add_argument("--profile", action="store_true", help="py-spy the node as well")
    parser.add_argument("--profile-dir", type=Path, help="keep py-spy's raw stacks here")
    parser.add_argument(
        "--node-pool",
        type=int,
        help="experiment: the node's backend keep-alive connections per host (default: its own)",
    )
    args = parser.parse_args()
    args.seconds = max(2.0, min(args.seconds, 15.0))
    missing = [t for t in ("caddy", "h2load", "wrk", "curl") if shutil.which(t) is None]
    if args.profile and shutil.which("py-spy") is None:
        missing.append("py-spy")
    if missing:
        raise SystemExit(f"bench/node.py needs {', '.join(missing)} on PATH")

    started = time.monotonic()
    directory = Path(tempfile.mkdtemp(prefix="funnel-bench-node-"))
    procs = Processes(directory)
    try:
        run(args, directory, procs)
    finally:
        procs.stop_all()
        shutil.rmtree(directory, ignore_errors=True)
    load = os.getloadavg()[0]
    print(f"total time: {time.monotonic() - started:.0f} s; load average (1 min) now {load:.2f}")


def run(args: argparse.Namespace, directory: Path, procs: Processes) -> None:
    www = directory / "www"
    www.mkdir()
    block = os.urandom(1 << 20)
    with open(www / "big", "wb") as f:
        for _ in range(args.size_mib):
            f.write(block)

    backend_port = free_port()
    backend = start_caddy(
        procs, "backend", backend_caddyfile(backend_port, www, directory / "s1"), backend_port
    )

    node = procs.start(
        "node",
        [
            sys.executable,
            str(HERE / "_node_stack.py"),
            "--backend",
            f"http://127.0.0.1:{backend_port}",
            "--dir",
            str(directory / "node"),
        ]
        + ([] if args.node_pool is None else ["--max-persistent-per-host", str(args.node_pool)]),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert node.stdout is not None
    first = node.stdout.readline()
    if not first:
        raise RuntimeError(f"the node stack did not start:\n{procs.log_tail('node')}")
    info = json.loads(first)
    hostname = info["hostname"]

    ref_port = free_port()
    caddy = start_caddy(
        procs,
        "reference",
        reference_caddyfile(ref_port, hostname, info["cert"], backend_port, directory / "s2"),
        ref_port,
    )
    servers = {
        "node": (f"https://{hostname}:{info['front']}", info["pid"]),
        "caddy": (f"https://{hostname}:{ref_port}", caddy.pid),
    }

    print(
        f"funnel-tw node vs Caddy {caddy_version()}: TLS reverse proxy to one Caddy backend, "
        f"loopback, {os.cpu_count()} CPUs, load average (1 min) {os.getloadavg()[0]:.2f}"
    )
    print(
        f"  h2load: HTTP/2, {args.connections} connections x {args.streams} streams, "
        f"{args.seconds:.0f} s (+1 s warm-up); wrk: HTTP/1.1 keep-alive, "
        f"{args.wrk_connections} connections, {args.seconds:.0f} s; curl: {args.size_mib} MiB"
    )
    results: dict[str, dict[str, Any]] = {name: {} for name in servers}
    for name, (url, pid) in servers.items():
        # check the path end to end before loading it
        run_curl(f"{url}/small", "--http1.1", info["ca"], len(SMALL_BODY) + 1, 10)
        for key, load in loads(args, url, info["ca"], directory).items():
            with cpu_meter(pid, backend.pid) as cpu:
                results[name][key] = load()
            results[name][key].update(cpu)

    node_r, ref = results["node"], results["caddy"]
    print()
    print(f"  {'':40}{'node':>10}{'Caddy':>10}{'node/Caddy':>12}")
    for key, title in (
        ("h2", "HTTP/2 small"),
        ("h1", "HTTP/1.1 small"),
        ("dl1", f"HTTP/1.1 {args.size_mib} MiB download"),
        ("dl2", f"HTTP/2 {args.size_mib} MiB download"),
    ):
        rows = (
            [("MB/s", "mbps", "{:,.0f}")]
            if key.startswith("dl")
            else [
                ("requests/s", "rps", "{:,.0f}"),
                ("p50 latency ms", "p50_ms", "{:.1f}"),
                ("p99 latency ms", "p99_ms", "{:.1f}"),
            ]
        )
        rows += [
            ("CPU, server (cores)", "server_cpu", "{:.2f}"),
            ("CPU, backend (cores)", "backend_cpu", "{:.2f}"),
            ("CPU, client (cores)", "client_cpu", "{:.2f}"),
        ]
        for what, field, form in rows:
            a, b = node_r[key][field], ref[key][field]
            label = f"{title}, {what}"
            print(f"  {label:46}{form.format(a):>10}{form.format(b):>10}{fmt_ratio(a, b):>12}")
    for name, r in results.items():
        for key in ("h2", "h1"):
            if r[key]["errors"]:
                print(f"  warning: {name} {key}: {r[key]['errors']} failed requests")
    print(
        f"  target: node request rate >= 0.5 x Caddy's: HTTP/2 "
        f"{fmt_ratio(node_r['h2']['rps'], ref['h2']['rps'])}, HTTP/1.1 "
        f"{fmt_ratio(node_r['h1']['rps'], ref['h1']['rps'])}"
    )

    if args.profile:
        url, pid = servers["node"]
        rate = 100
        short = argparse.Namespace(**{**vars(args), "seconds": min(args.seconds, 8.0)})
        for key, load in loads(short, url, info["ca"], directory).items():
            if key == "dl1":
                continue  # near Caddy's figure; the others are the ones far off
            raw = directory / f"profile-{key}.raw"
            spy = profiled(pid, raw, rate)
            t0 = time.monotonic()
            try:
                time.sleep(0.3)
                r = load()
                seconds = time.monotonic() - t0
            finally:
                spy.send_signal(signal.SIGINT)  # py-spy writes what it has and exits
                try:
                    spy.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait()
            figure = f"{r['mbps']:,.0f} MB/s" if "mbps" in r else f"{r['rps']:,.0f} requests/s"
            print()
            print(f"  profile of the node process, {LOAD_LABELS[key]}: {figure} under py-spy")
            print(summarise_profile(raw, seconds, rate) if raw.exists() else "    (no profile)")
            if args.profile_dir is not None and raw.exists():
                args.profile_dir.mkdir(parents=True, exist_ok=True)
                shutil.copy(raw, args.profile_dir / raw.name)


LOAD_LABELS = {
    "h2": "h2load, HTTP/2 small",
    "h1": "wrk, HTTP/1.1 small",
    "dl1": "curl, HTTP/1.1 download",
    "dl2": "curl, HTTP/2 download",
}


def loads(args: argparse.Namespace, url: str, ca: str, directory: Path) -> dict[str, Any]:
    """The measurements, in order, each a callable returning its figures."""
    size = args.size_mib << 20
    log = directory / "h2load.log"
    return {
        "h2": lambda: run_h2load(f"{url}/small", args, log, args.seconds),
        "h1": lambda: run_wrk(f"{url}/small", args, args.seconds),
        "dl1": lambda: run_curl(f"{url}/big", "--http1.1", ca, size, 15),
        "dl2": lambda: run_curl(f"{url}/big", "--http2", ca, size, 15),
    }


def caddy_version() -> str:
    out = subprocess.run(["caddy", "version"], capture_output=True, text=True, check=False)
    return out.stdout.split()[0] if out.stdout else "?"


if __name__ == "__main__":
    main()
