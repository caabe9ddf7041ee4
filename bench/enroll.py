"""What enrollment costs (a benchmark, not a test).

    python bench/enroll.py [--nodes 100,1000]

Enrollment is not on the data path: an enrolled node is a RelayNode like a [node NAME]
section, so routing a public connection (``Routes.lookup``) costs the same whichever way the
node came; the first figure shows it, side by side. The second is what an invite and a join cost
the relay (token check, address assignment, two 0600 JSON writes, the plan and its application to
the running relay), against the reference a join replaces: adding a [node NAME] section to
relay.ini and reloading (reading the file, the plan, applying it). A join writes its two
files with fsync; a reload writes nothing. Milliseconds per operation,
best of 3, with N nodes already there.
"""

from __future__ import annotations

import argparse
import base64
import shutil
import sys
import tempfile
import time
from ipaddress import ip_interface
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from twisted.internet import task  # noqa: E402

from funnel_tw.config import load_relay_config  # noqa: E402
from funnel_tw.config.enrolled import enrolled_node_record  # noqa: E402
from funnel_tw.config.plan import relay_plan  # noqa: E402
from funnel_tw.keys import encode_key, generate_private_key, public_key  # noqa: E402
from funnel_tw.relay.enroll.live import attach_enroll  # noqa: E402
from funnel_tw.relay.reload import apply_relay_plan  # noqa: E402
from funnel_tw.relay.routes import Routes  # noqa: E402
from funnel_tw.relay.service import RelayService  # noqa: E402

RELAY = """[relay]
private-key = {key}
address = 100.64.0.1/32
public-ports = 443
state-dir = state
enroll-port = 41643
public-endpoint = relay.example.net:41641
node-addresses = 100.64.0.0/16
"""


def section(i: int) -> str:
    return (
        f"[node n{i}]\npublic-key = {encode_key(public_key(generate_private_key()))}\n"
        f"allowed-ips = 100.65.{i // 250}.{i % 250 + 1}/32\nhostnames = n{i}.example.com\n"
        f"peerapi = 100.65.{i // 250}.{i % 250 + 1}:41642\n\n"
    )


def relay(folder: Path, nodes: int, static: bool) -> RelayService:
    text = RELAY.format(key=encode_key(generate_private_key()))
    if static:
        text += "".join(section(i) for i in range(nodes))
    (folder / "relay.ini").write_text(text)
    service = RelayService(load_relay_config(folder / "relay.ini"), reactor=task.Clock())
    return service


def enroll_once(service: RelayService, enroll: object, i: int) -> None:
    live = enroll  # EnrollService
    token = live.invite({"hostnames": f"e{i}.example.com"})["token"]  # type: ignore[attr-defined]
    from funnel_tw.daemon.enroll import parse_token

    secret = parse_token(token).secret
    live.enroll(  # type: ignore[attr-defined]
        {
            "secret": base64.urlsafe_b64encode(secret).decode(),
            "public_key": encode_key(public_key(generate_private_key())),
        },
        "bench",
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", default="100,1000")
    args = parser.parse_args()
    for n in (int(x) for x in args.nodes.split(",")):
        folder = Path(tempfile.mkdtemp(prefix="ftw-bench-enroll-"))
        try:
            # routing: N static sections vs N enrolled nodes
            static = relay(folder, n, static=True)
            enrolled_routes = Routes(static.config.nodes)  # the same RelayNode objects
            names = [f"n{i}.example.com" for i in range(n)]
            timings = []
            for routes in (static.routes, enrolled_routes, static.routes, enrolled_routes):
                start = time.perf_counter()
                for _ in range(20):
                    for name in names:
                        routes.lookup(name)
                timings.append((time.perf_counter() - start) / (20 * n) * 1e9)
            timings = timings[2:]  # the first pass warms up

            # one join vs one reload that adds a section, with n nodes there
            joins, reloads = [], []
            for rnd in range(3):
                sub = folder / f"j{rnd}"
                sub.mkdir()
                service = relay(sub, 0, static=False)
                live = attach_enroll(service)
                live.store.load()
                live.pin = bytes(32)
                live.store.nodes = [
                    enrolled_node_record(
                        f"e{i}",
                        public_key(generate_private_key()),
                        (ip_interface(f"100.64.{i // 250}.{i % 250 + 2}/32"),),
                        (f"e{i}.example.com",),
                        41642,
                        0.0,
                    )
                    for i in range(n)
                ]
                live.apply()
                start = time.perf_counter()
                enroll_once(service, live, n)
                joins.append(time.perf_counter() - start)

                sub = folder / f"r{rnd}"
                sub.mkdir()
                service = relay(sub, n, static=True)
                with open(sub / "relay.ini", "a") as f:
                    f.write(section(n + 1))
                start = time.perf_counter()
                new = load_relay_config(sub / "relay.ini")
                apply_relay_plan(service, new, relay_plan(service.config, new))
                reloads.append(time.perf_counter() - start)
            print(
                f"{n:5d} nodes: Routes.lookup static {timings[0]:.0f} ns, enrolled "
                f"{timings[1]:.0f} ns | invite+join {min(joins) * 1e3:.1f} ms, "
                f"reference reload adding a [node] {min(reloads) * 1e3:.1f} ms "
                f"(ratio {min(joins) / min(reloads):.2f})"
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
