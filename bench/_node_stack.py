"""A node's serve stack in a process of its own, for benchmarks and the big-transfer test.

    python bench/_node_stack.py --backend http://127.0.0.1:PORT [--hostname NAME] [--dir DIR]
    python bench/_node_stack.py --sample-backend

Starts, in this one process: a NodeService built from a generated node.ini (self-signed
certificate, ``[serve 443]`` funnel-enabled, ``/`` reverse-proxied to the backend), its peerAPI
on a loopback TCP port, and the test front that plays the relay's part (tests/serve/harness.py:
``POST /v0/ingress``, wait for the 101, splice). With ``--sample-backend`` the test backend of
tests/serve/backend.py also runs in this process and is the proxy target.
``--max-persistent-per-host N`` overrides the node's backend keep-alive pool size (experiments).
``--inspect`` turns the request inspector on (``inspect-listen`` on a free loopback port,
printed as ``inspect``), to measure what capture costs (bench/inspector.py --stack).

Prints one JSON line once everything listens -- ``pid``, ``front`` (the port clients connect
to), ``peerapi``, ``backend``, ``hostname``, ``ca`` (the CA file clients trust) and ``cert``
(key + chain PEM, usable by another server for a like-for-like comparison) -- then runs until
SIGTERM/SIGINT, until its stdin (when a pipe) closes, or until its parent dies.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import json
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import reactor as _reactor
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from funnel_tw import keys
from funnel_tw.config import load_node_config
from funnel_tw.node.service import NodeService

_PR_SET_PDEATHSIG = 1
reactor: Any = _reactor  # the global reactor, typed loosely as Twisted's interfaces are


def node_ini(hostname: str, backend: str, inspect: bool = False) -> str:
    relay_pub = keys.encode_key(keys.public_key(keys.generate_private_key()))
    return f"""[node]
private-key = {keys.encode_key(keys.generate_private_key())}
address = 100.64.0.2/32, fd7a:115c:a1e0::2/128
hostname = {hostname}
state-dir = state
{"inspect-listen = 127.0.0.1:0" if inspect else ""}

[peer relay]
public-key = {relay_pub}
allowed-ips = 100.64.0.1/32
funnel-ingress = yes

[serve 443]
funnel = yes
/ = {backend}
"""


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: rely on the stdin watch and signals


def _watch_stdin() -> None:
    """Stop when stdin, if it is a pipe, reaches end of file (the parent closed it or died)."""
    try:
        fd = sys.stdin.fileno()
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return
    except (OSError, ValueError, AttributeError):
        return

    def watch() -> None:
        try:  # the raw descriptor: a buffered reader's lock would trouble interpreter exit
            while os.read(fd, 4096):
                pass
        except OSError:
            pass
        reactor.callFromThread(_stop)

    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()


def _stop() -> None:
    if reactor.running:
        reactor.stop()


def start(
    hostname: str,
    backend: str | None,
    directory: Path,
    pool: int | None = None,
    inspect: bool = False,
) -> dict[str, Any]:
    """Build and start the stack on the (not yet running) global reactor."""
    # imported here: tests/ is not a package a deployment has, only this runner needs it
    from tests.serve.backend import backend_site
    from tests.serve.harness import Front

    backend_port = 0
    if backend is None:
        backend_listener = reactor.listenTCP(0, backend_site(), interface="127.0.0.1")
        backend_port = backend_listener.getHost().port
        backend = f"http://127.0.0.1:{backend_port}"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "node.ini").write_text(node_ini(hostname, backend, inspect))
    config = load_node_config(directory / "node.ini")
    node = NodeService(config, reactor)
    # the peerAPI on loopback: every caller is the funnel-ingress relay (as in the harness)
    node.ingress.caller_name = lambda ip: ("relay", True)
    node.certificates.start()
    if pool is not None:  # an experiment: the node's own setting otherwise
        node.backends.pool.maxPersistentPerHost = pool
    if node.inspector is not None:
        node.inspector.startService()
    peerapi = reactor.listenTCP(0, node.peerapi_site, interface="127.0.0.1")
    front = Front(peerapi.getHost().port, f"{hostname}:443")
    front_port = reactor.listenTCP(0, front, interface="127.0.0.1", backlog=1024)

    def shutdown() -> None:
        node.certificates.stop()
        node.backends.close()

    reactor.addSystemEventTrigger("before", "shutdown", shutdown)
    tls_dir = config.state_dir / "tls"
    return {
        "pid": os.getpid(),
        "front": front_port.getHost().port,
        "peerapi": peerapi.getHost().port,
        "backend": backend_port or backend,
        "hostname": hostname,
        "ca": str(tls_dir / "ca.pem"),
        "cert": str(tls_dir / f"{hostname.replace('*', '_wildcard_')}.pem"),
        "inspect": node.inspector.root.port if node.inspector is not None else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--backend", help="proxy target URL, e.g. http://127.0.0.1:8080")
    group.add_argument(
        "--sample-backend", action="store_true", help="run tests/serve/backend.py in-process"
    )
    parser.add_argument("--hostname", default="localhost")
    parser.add_argument(
        "--dir",
        type=Path,
        help="where node.ini and state go (default: a temporary directory, removed at exit)",
    )
    parser.add_argument(
        "--max-persistent-per-host",
        type=int,
        help="experiment: override the node's backend keep-alive pool size per host",
    )
    parser.add_argument("--inspect", action="store_true", help="the request inspector on")
    args = parser.parse_args()

    _die_with_parent()
    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stderr),
                [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
            )
        ],
        redirectStandardIO=False,
    )
    directory = args.dir
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="funnel-node-stack-"))
        atexit.register(shutil.rmtree, directory, True)
    backend = None if args.sample_backend else args.backend
    info = start(args.hostname, backend, directory, args.max_persistent_per_host, args.inspect)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: reactor.callFromThread(_stop))
    _watch_stdin()
    print(json.dumps(info), flush=True)
    reactor.run(installSignalHandlers=False)


if __name__ == "__main__":
    main()
