"""ACME against a real server: Debian's Pebble 2.4 and pebble-challtestsrv, on loopback.

Pebble validates for real (``PEBBLE_VA_ALWAYS_VALID`` is removed from its environment), with
challtestsrv as its DNS resolver answering 127.0.0.1 for every name and holding the dns-01 TXT
records that our hook script puts there through its management API.

- tls-alpn-01 end to end: a relay and a node run in this process (as in
  tests/relay/test_public.py); Pebble's ``tlsPort`` is the relay's public port, so its validator
  connects to the relay, which routes by SNI through WireGuard to the node, which answers
  ``acme-tls/1``. Then curl, trusting only Pebble's root, fetches a page through the relay:
  the chain the node serves (leaf + Pebble's intermediate) has to verify.
- dns-01 through a hook executable, a wildcard name included.
- renewal: a renewed certificate serves new connections while a connection opened before the
  swap keeps working.
- faults: Pebble down at start, a failing dns-01 and tls-alpn-01 validation, rejected nonces.

Pebble needs no root and no namespaces. The package ships no certificates: a CA and a localhost
certificate for Pebble's own HTTPS are made here, and the CA is the node's ``acme-ca-file``.
Without pebble, pebble-challtestsrv, curl or openssl the tests skip (and fail under
FUNNEL_TW_REQUIRE_INTEROP=1).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from twisted.internet import reactor, threads
from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from funnel_tw import keys
from funnel_tw.config import load_node_config, load_relay_config
from funnel_tw.node.service import NodeService, build_acme_source
from funnel_tw.relay.service import RelayService
from funnel_tw.tls import issuer
from funnel_tw.tls.acme import ACMEError
from funnel_tw.tls.issuer import ACMESource
from funnel_tw.tls.store import CertificateStore
from tests._support import (
    ProcessResult,
    curl,
    free_port,
    free_tcp_and_udp_port,
    issue,
    make_ca,
    run_process,
    wait_until,
    wait_until_blocking,
)
from tests.interop.netns import kill_group, require_interop

NAME = "node.example.test"
OTHER = "x.apps.example.test"
WILDCARD = "*.apps.example.test"
PAGE = "hello over acme"
ISSUE_TIMEOUT = 30.0


# --------------------------------------------------------------------------- helpers


def need(test: TestCase) -> None:
    for tool in ("pebble", "pebble-challtestsrv", "curl", "openssl"):
        if shutil.which(tool) is None:
            require_interop(test, f"{tool} not installed")


async def first_check(source: ACMESource, why: Callable[[], str]) -> None:
    """Wait for the check the source scheduled at start; fail with its traceback if it crashed
    (an exception check() did not turn into last_error)."""

    def done() -> bool:
        return source._running is not None and source._running.called

    await wait_until(done, ISSUE_TIMEOUT, "the first check", interval=0.1, detail=why)
    crashed: list[str] = []
    assert source._running is not None
    source._running.addErrback(lambda f: crashed.append(f.getTraceback()))
    if crashed:
        raise AssertionError(f"the check crashed: {crashed[0]}\n{why()}")


def write_server_ca(folder: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signs for localhost/127.0.0.1: Pebble's own HTTPS."""
    ca = make_ca("funnel-tw test ACME-server CA", not_after=datetime.timedelta(days=2))
    cert = issue(
        "localhost", issuer=ca, san=("localhost", "127.0.0.1"), not_after=datetime.timedelta(days=2)
    )
    paths = folder / "server-ca.pem", folder / "server-cert.pem", folder / "server-key.pem"
    paths[0].write_bytes(ca.cert_pem())
    cert.write(paths[1], paths[2], chain=False)
    return paths


HOOK = """#!{python}
# dns-01 hook for the tests: HOOK set|clear _acme-challenge.NAME VALUE -> challtestsrv
import json, pathlib, sys, urllib.request

here = pathlib.Path({folder!r})
action, record, value = sys.argv[1:4]
with open(here / "hook.log", "a") as log:
    log.write(f"{{action}} {{record}} {{value}}\\n")
if (here / "hook-wrong").exists():
    value = "not-the-right-value"
if action == "set":
    path, body = "/set-txt", {{"host": record + ".", "value": value}}
elif action == "clear":
    path, body = "/clear-txt", {{"host": record + "."}}
else:
    sys.exit(f"unknown action {{action}}")
opener = urllib.request.build_opener(urllib.request.ProxyHandler({{}}))
request = urllib.request.Request(
    "http://127.0.0.1:{management}" + path, data=json.dumps(body).encode(), method="POST"
)
opener.open(request, timeout=10).read()
"""


class Pebble:
    """challtestsrv + Pebble, started now (Pebble optionally later), killed at cleanup."""

    def __init__(
        self,
        test: TestCase,
        folder: Path,
        *,
        tls_port: int,
        validity: int | None = None,
        nonce_reject: int = 0,
    ) -> None:
        self.folder = folder
        self.ca, cert, key = write_server_ca(folder)
        self.port, self.management = free_port(), free_port()
        self.dns, self.cts_management = free_tcp_and_udp_port(), free_port()
        config: dict[str, Any] = {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management}",
            "certificate": str(cert),
            "privateKey": str(key),
            "httpPort": free_port(),  # nobody listens: http-01 can never pass
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if validity is not None:
            config["certificateValidityPeriod"] = validity
        self.config = folder / "pebble.json"
        self.config.write_text(json.dumps({"pebble": config}))
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PEBBLE_") and not k.lower().endswith("_proxy")
        }
        # validation for real; no random sleeps; nonces rejected only where a test asks;
        # no authorization reuse, so every order is validated again
        self.env |= {
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": str(nonce_reject),
            "PEBBLE_AUTHZREUSE": "0",
        }
        self.processes: list[subprocess.Popen[bytes]] = []
        self.pebble: subprocess.Popen[bytes] | None = None
        test.addCleanup(self.close)
        self._spawn(
            "challtestsrv",
            [
                "pebble-challtestsrv",
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-dns01",
                f"127.0.0.1:{self.dns}",
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                f"127.0.0.1:{self.cts_management}",
            ],
        )

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.folder / f"{name}.log", "ab")  # noqa: SIM115 (kept for the process)
        if shutil.which("setpriv"):  # dies with this process even if cleanups never run
            argv = ["setpriv", "--pdeathsig", "KILL", "--", *argv]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.folder,
            start_new_session=True,
        )
        log.close()
        self.processes.append(proc)
        return proc

    async def start(self) -> None:
        """Start Pebble (challtestsrv runs already) and wait until both answer."""
        self.pebble = self._spawn(
            "pebble",
            ["pebble", "-config", str(self.config), "-dnsserver", f"127.0.0.1:{self.dns}"],
        )
        await threads.deferToThread(self._wait_ready)

    def _wait_ready(self) -> None:
        context = ssl.create_default_context(cafile=str(self.ca))
        last: list[OSError] = []

        def ready() -> bool:
            try:
                urllib.request.urlopen(self.directory, context=context, timeout=2).read()
                with socket.create_connection(("127.0.0.1", self.cts_management), timeout=2):
                    return True
            except OSError as e:
                last[:] = [e]
                return False

        wait_until_blocking(ready, 10, "pebble", detail=lambda: f"{last}; {self.logs()}")

    def stop_pebble(self) -> None:
        if self.pebble is not None:
            kill_group(self.pebble)
            self.pebble = None

    def close(self) -> None:
        for proc in self.processes:
            kill_group(proc)

    def logs(self) -> str:
        out = []
        for name in ("pebble", "challtestsrv"):
            path = self.folder / f"{name}.log"
            if path.exists():
                out.append(f"--- {name}.log\n" + path.read_text(errors="replace")[-3000:])
        return "\n".join(out)

    def root_pem(self) -> bytes:
        """Pebble's issuing root (made afresh at every start)."""
        context = ssl.create_default_context(cafile=str(self.ca))
        url = f"https://127.0.0.1:{self.management}/roots/0"
        return bytes(urllib.request.urlopen(url, context=context, timeout=5).read())

    def write_hook(self) -> Path:
        hook = self.folder / "hook.py"
        hook.write_text(
            HOOK.format(
                python=sys.executable, folder=str(self.folder), management=self.cts_management
            )
        )
        hook.chmod(0o755)
        return hook

    def hook_calls(self) -> list[list[str]]:
        path = self.folder / "hook.log"
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


class AcmeFunnel:
    """relay.ini + node.ini (``[tls] source = acme``, tls-alpn-01), both in this process."""

    def __init__(
        self,
        test: TestCase,
        folder: Path,
        pebble: Pebble,
        public: int,
        *,
        funnel: bool,
        hostnames: str = f"{NAME}, {OTHER}",
    ):
        self.dir = folder
        rk, nk = keys.generate_private_key(), keys.generate_private_key()
        wg = free_port(socket.SOCK_DGRAM)
        self.public = public
        (self.dir / "relay.ini").write_text(f"""[relay]
private-key = {keys.encode_key(rk)}
listen-port = {wg}
address = 100.64.0.1/32
public-address = 127.0.0.1
public-ports = {public}
state-dir = relay-state

[node n]
public-key = {keys.encode_key(keys.public_key(nk))}
allowed-ips = 100.64.0.2/32
hostnames = {NAME}, *.apps.example.test
peerapi = 100.64.0.2:41642
""")
        (self.dir / "node.ini").write_text(f"""[node]
private-key = {keys.encode_key(nk)}
listen-port = 0
address = 100.64.0.2/32
hostname = {hostnames}
state-dir = node-state

[peer relay]
public-key = {keys.encode_key(keys.public_key(rk))}
endpoint = 127.0.0.1:{wg}
allowed-ips = 100.64.0.1/32
persistent-keepalive = 25
funnel-ingress = yes

[tls]
source = acme
acme-directory = {pebble.directory}
acme-email = admin@example.test
acme-ca-file = {pebble.ca}

[serve {public}]
funnel = {"yes" if funnel else "no"}
/ = text:{PAGE}
""")
        self.relay = RelayService(load_relay_config(self.dir / "relay.ini"), reactor)
        self.node = NodeService(load_node_config(self.dir / "node.ini"), reactor)
        self.source: ACMESource = self.node.certificates
        self.relay.startService()
        self.node.startService()
        self.stopped = False
        test.addCleanup(self.stop)

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.node.stopService()
            await settle(self.source)
            await self.relay.stopService()

    async def curl(self, root: Path, name: str = NAME) -> ProcessResult:
        return await curl(name, self.public, ca_file=root, max_time=10, timeout=60)


async def settle(source: ACMESource) -> None:
    """Let a check still in flight finish, then cancel what it scheduled (test cleanup)."""
    running = source._running
    if running is not None and not running.called:
        timeout = reactor.callLater(ISSUE_TIMEOUT, running.cancel)
        with contextlib.suppress(Exception):
            await running
        if timeout.active():
            timeout.cancel()
    source.stop()


def dns_source(
    test: TestCase, folder: Path, pebble: Pebble, names: str
) -> tuple[ACMESource, CertificateStore]:
    """An ACMESource for dns-01 as node.ini configures it (build_acme_source)."""
    hook = pebble.write_hook()
    (folder / "node.ini").write_text(f"""[node]
private-key = {keys.encode_key(keys.generate_private_key())}
address = 100.64.0.2/32
hostname = {names}
state-dir = node-state

[tls]
source = acme
acme-directory = {pebble.directory}
acme-challenge = dns-01
acme-dns-hook = {hook}
acme-ca-file = {pebble.ca}
""")
    config = load_node_config(folder / "node.ini")
    store = CertificateStore(config.hostnames)
    source: ACMESource = build_acme_source(config, store, reactor)

    async def cleanup() -> None:
        source.stop()
        await settle(source)

    test.addCleanup(cleanup)
    return source, store


def status_of(source: ACMESource, pebble: Pebble) -> Callable[[], str]:
    return lambda: f"status {source.status()}\n{pebble.logs()}"


def fingerprint(der: bytes) -> str:
    return x509.load_der_x509_certificate(der).fingerprint(hashes.SHA256()).hex()


def leaf_fingerprint(cert: Any) -> str:
    return str(cert.chain[0].fingerprint(hashes.SHA256()).hex())


class KeepAlive:
    """One HTTPS connection through the relay, kept open across requests (blocking calls)."""

    def __init__(self, port: int, root: Path, name: str = NAME) -> None:
        context = ssl.create_default_context(cafile=str(root))
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.tls = context.wrap_socket(raw, server_hostname=name)
        self.name = name
        self.buffer = b""

    def peer_fingerprint(self) -> str:
        der = self.tls.getpeercert(binary_form=True)
        assert der is not None
        return fingerprint(der)

    def get(self) -> tuple[bytes, bytes]:
        self.tls.sendall(f"GET / HTTP/1.1\r\nHost: {self.name}\r\n\r\n".encode())
        while b"\r\n\r\n" not in self.buffer:
            self._more()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == b"content-length":
                length = int(value)
        while len(self.buffer) < length:
            self._more()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return head.split(b"\r\n")[0], body

    def _more(self) -> None:
        chunk = self.tls.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        self.buffer += chunk

    def close(self) -> None:
        self.tls.close()


class NonceLog:
    """Counts the client's "rejected our nonce; retrying once" log lines."""

    def __init__(self, test: TestCase) -> None:
        self.retries = 0
        globalLogPublisher.addObserver(self)
        test.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: LogEvent) -> None:
        if "rejected our nonce" in str(event.get("log_format", "")):
            self.retries += 1


def later(minutes: float) -> Callable[[], datetime.datetime]:
    """A clock for the issuer that runs ``minutes`` ahead (to make a renewal due)."""
    return lambda: datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=minutes)


# --------------------------------------------------------------------------- tests


class PebbleTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        need(self)
        self.folder = Path(self.mktemp()).absolute()
        self.folder.mkdir()

    async def pebble(self, **kwargs: Any) -> Pebble:
        pebble = Pebble(self, self.folder, **kwargs)
        await pebble.start()
        return pebble

    def root_file(self, pebble: Pebble) -> Path:
        path = self.folder / "pebble-root.pem"
        path.write_bytes(pebble.root_pem())
        return path

    async def test_tls_alpn_01_through_the_funnel(self) -> None:
        """Pebble validates through relay -> WireGuard -> node; curl verifies what is served."""
        public = free_port()
        pebble = await self.pebble(tls_port=public)
        funnel = AcmeFunnel(self, self.folder, pebble, public, funnel=True)
        source = funnel.source
        why = status_of(source, pebble)
        await first_check(source, why)
        self.assertIsNotNone(source.current, why())
        assert source.current is not None
        self.assertEqual(sorted(source.current.names), sorted([NAME, OTHER]))
        self.assertEqual(len(source.current.chain), 2, "leaf + Pebble's intermediate")
        self.assertIsNone(source.status()["last_error"])
        # both names were proven by tls-alpn-01 answered by the node, through the relay
        self.assertGreaterEqual(funnel.node.store.counters.get("tls_alpn_01_answered", 0), 2)
        self.assertGreaterEqual(funnel.relay.limits.counters.get("spliced", 0), 2)
        # the next look is an hour away (plus jitter)
        self.assertTrue(3600 <= source.status()["next_check_in"] <= 3900, source.status())

        root = self.root_file(pebble)
        for name in (NAME, OTHER):
            code, out, err = await funnel.curl(root, name)
            self.assertEqual(code, 0, err.decode(errors="replace"))
            self.assertEqual(out.decode(), PAGE)

        # stored, 0600, and what the node serves
        stored = funnel.node.config.state_dir / "acme" / f"{NAME}.pem"
        self.assertEqual(stored.stat().st_mode & 0o777, 0o600)
        self.assertEqual(
            (stored.parent / "account.key").stat().st_mode & 0o777, 0o600, "account.key mode"
        )
        served = await threads.deferToThread(lambda: KeepAlive(public, root).peer_fingerprint())
        self.assertEqual(served, leaf_fingerprint(source.current))

    async def test_a_name_added_later_gets_its_certificate(self) -> None:
        """A node with a CA-issued certificate for NAME is restarted with OTHER added: the CA's
        tls-alpn-01 validation of OTHER reaches the node (which has no certificate for it yet)
        and the new certificate covers both names."""
        public = free_port()
        pebble = await self.pebble(tls_port=public)
        first = AcmeFunnel(self, self.folder, pebble, public, funnel=True, hostnames=NAME)
        await first_check(first.source, status_of(first.source, pebble))
        assert first.source.current is not None
        self.assertEqual(sorted(first.source.current.names), [NAME])
        await first.stop()
        second = AcmeFunnel(self, self.folder, pebble, public, funnel=True)
        source = second.source
        why = status_of(source, pebble)
        await first_check(source, why)
        self.assertIsNone(source.status()["last_error"], why())
        assert source.current is not None
        self.assertEqual(sorted(source.current.names), sorted([NAME, OTHER]), why())
        self.assertGreaterEqual(second.node.store.counters.get("tls_alpn_01_answered", 0), 1)
        root = self.root_file(pebble)
        code, out, err = await second.curl(root, OTHER)
        self.assertEqual(code, 0, err.decode(errors="replace"))
        self.assertEqual(out.decode(), PAGE)

    async def test_dns_01_through_a_hook_with_a_wildcard(self) -> None:
        pebble = await self.pebble(tls_port=free_port())
        source, store = dns_source(self, self.folder, pebble, f"{NAME}, {WILDCARD}")
        source.start()
        why = status_of(source, pebble)
        await first_check(source, why)
        self.assertIsNotNone(source.current, why())
        assert source.current is not None
        self.assertEqual(sorted(source.current.names), sorted([NAME, WILDCARD]))
        # installed for both configured names, a name under the wildcard served by it too
        self.assertIs(store.lookup(NAME), source.current)
        self.assertIs(store.lookup("anything.apps.example.test"), source.current)

        # the hook set and cleared one TXT record per name, with the dns-01 value
        calls = pebble.hook_calls()
        records = {f"_acme-challenge.{NAME}", "_acme-challenge.apps.example.test"}
        self.assertEqual({c[1] for c in calls if c[0] == "set"}, records)
        self.assertEqual({c[1] for c in calls if c[0] == "clear"}, records)
        self.assertEqual(len(calls), 4, calls)

        # the stored chain verifies against Pebble's root
        root = self.root_file(pebble)
        stored = self.folder / "node-state" / "acme" / f"{NAME}.pem"
        chain = x509.load_pem_x509_certificates(stored.read_bytes())
        (self.folder / "leaf.pem").write_bytes(chain[0].public_bytes(serialization.Encoding.PEM))
        (self.folder / "rest.pem").write_bytes(
            b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain[1:])
        )
        code, out, err = await run_process(
            "openssl",
            "verify",
            "-CAfile",
            str(root),
            "-untrusted",
            str(self.folder / "rest.pem"),
            str(self.folder / "leaf.pem"),
        )
        self.assertEqual(code, 0, (out + err).decode(errors="replace"))

    async def test_renewal_swaps_for_new_connections_only(self) -> None:
        public = free_port()
        pebble = await self.pebble(tls_port=public, validity=3600)
        funnel = AcmeFunnel(self, self.folder, pebble, public, funnel=True)
        source = funnel.source
        why = status_of(source, pebble)
        await first_check(source, why)
        self.assertIsNotNone(source.current, why())
        assert source.current is not None
        first = leaf_fingerprint(source.current)
        lifetime = source.current.chain[0].not_valid_after_utc - (
            source.current.chain[0].not_valid_before_utc
        )
        self.assertLessEqual(lifetime, datetime.timedelta(hours=1, minutes=1))

        root = self.root_file(pebble)
        old = await threads.deferToThread(KeepAlive, public, root)
        self.addCleanup(old.close)
        status, body = await threads.deferToThread(old.get)
        self.assertEqual((status, body.decode()), (b"HTTP/1.1 200 OK", PAGE))
        self.assertEqual(old.peer_fingerprint(), first)

        # not due yet: a check leaves the certificate alone
        answered = funnel.node.store.counters.get("tls_alpn_01_answered", 0)
        await source.check()
        self.assertEqual(leaf_fingerprint(source.current), first)
        self.assertEqual(funnel.node.store.counters.get("tls_alpn_01_answered", 0), answered)

        # 57 minutes on: due by the 2/3 rule and past any start of Pebble's ARI window (which
        # varies between runs and must end before the certificate does)
        self.patch(issuer, "_now", later(57))
        await source.check()
        self.assertIsNone(source.status()["last_error"], why())
        second = leaf_fingerprint(source.current)
        self.assertNotEqual(second, first)
        self.assertGreater(funnel.node.store.counters.get("tls_alpn_01_answered", 0), answered)

        # the connection opened before the swap still works, with its old certificate
        status, body = await threads.deferToThread(old.get)
        self.assertEqual((status, body.decode()), (b"HTTP/1.1 200 OK", PAGE))
        # a new connection gets the new certificate
        new = await threads.deferToThread(KeepAlive, public, root)
        self.addCleanup(new.close)
        self.assertEqual(new.peer_fingerprint(), second)
        status, body = await threads.deferToThread(new.get)
        self.assertEqual(body.decode(), PAGE)
        # and the stored file is the new one
        stored = funnel.node.config.state_dir / "acme" / f"{NAME}.pem"
        self.assertEqual(
            x509.load_pem_x509_certificates(stored.read_bytes())[0]
            .fingerprint(hashes.SHA256())
            .hex(),
            second,
        )

    async def test_pebble_down_at_start_then_retry(self) -> None:
        pebble = Pebble(self, self.folder, tls_port=free_port())  # challtestsrv only
        source, store = dns_source(self, self.folder, pebble, NAME)
        source.start()
        why = status_of(source, pebble)
        await first_check(source, why)
        self.assertEqual(source.failures, 1, why())
        status = source.status()
        # a clear reason naming the directory, and a retry after the first backoff (60 s)
        self.assertIn(pebble.directory, status["last_error"])
        self.assertTrue(55 <= status["next_check_in"] <= 67, status)
        self.assertIsNone(source.current)
        # meanwhile the node serves its self-signed certificate
        serving = store.lookup(NAME)
        assert serving is not None
        self.assertTrue(serving.source.startswith("self-signed"), serving.source)

        await pebble.start()
        await source.check()  # what the scheduled retry does
        self.assertIsNone(source.status()["last_error"], why())
        self.assertIsNotNone(source.current)
        self.assertIs(store.lookup(NAME), source.current)
        self.assertEqual(source.status()["failures"], 0)
        self.assertTrue(3600 <= source.status()["next_check_in"] <= 3900, source.status())

    async def test_failing_dns_01_keeps_the_certificate(self) -> None:
        pebble = await self.pebble(tls_port=free_port(), validity=3600)
        source, store = dns_source(self, self.folder, pebble, NAME)
        await source.check()  # the first certificate
        why = status_of(source, pebble)
        self.assertIsNotNone(source.current, why())
        current = source.current
        stored = self.folder / "node-state" / "acme" / f"{NAME}.pem"
        before = stored.read_bytes()

        (self.folder / "hook-wrong").touch()  # the hook now publishes a wrong TXT value
        self.patch(issuer, "_now", later(57))  # past 2/3 of its hour and any ARI window start
        await source.check()
        status = source.status()
        self.assertEqual(status["failures"], 1, why())
        self.assertIn(f"dns-01 validation of {NAME} failed", status["last_error"])
        self.assertTrue(55 <= status["next_check_in"] <= 67, status)
        # nothing lost: same certificate served, same file
        self.assertIs(source.current, current)
        self.assertIs(store.lookup(NAME), current)
        self.assertEqual(stored.read_bytes(), before)
        # the wrong record was cleaned up too
        self.assertEqual([c[0] for c in pebble.hook_calls()], ["set", "clear", "set", "clear"])

    async def test_tls_alpn_01_refused_when_the_port_is_not_funneled(self) -> None:
        public = free_port()
        pebble = await self.pebble(tls_port=public)
        funnel = AcmeFunnel(self, self.folder, pebble, public, funnel=False)
        source = funnel.source
        why = status_of(source, pebble)
        await first_check(source, why)
        self.assertEqual(source.failures, 1, why())
        error = source.status()["last_error"]
        self.assertIn("tls-alpn-01 validation of", error)
        self.assertIsNone(source.current)
        serving = funnel.node.store.lookup(NAME)
        assert serving is not None
        self.assertTrue(serving.source.startswith("self-signed"), serving.source)
        self.assertGreaterEqual(funnel.relay.limits.counters.get("node_refused", 0), 1)

    async def test_rejected_nonces_are_retried(self) -> None:
        """Pebble rejects 20% of good nonces: one retry each makes most requests pass; an
        issuance that meets two rejections in a row fails with badNonce and is tried again."""
        nonces = NonceLog(self)
        pebble = await self.pebble(tls_port=free_port(), nonce_reject=20)
        source, _ = dns_source(self, self.folder, pebble, NAME)
        client = source._client()
        outcomes = {"ok": 0, "badNonce": 0}
        for _ in range(40):  # newAccount for the same key: one POST each
            try:
                await client.register(None)
                outcomes["ok"] += 1
            except ACMEError as e:
                self.assertTrue(e.kind.endswith(":badNonce"), str(e))
                self.assertIn("badNonce", str(e))
                outcomes["badNonce"] += 1
        self.assertGreater(outcomes["ok"], 20, outcomes)

        errors = []
        for _ in range(8):  # what the backoff would do, without the wait
            await source.check()
            if source.current is not None:
                break
            errors.append(source.status()["last_error"])
        self.assertIsNotNone(source.current, f"{errors}; {pebble.logs()}")
        for error in errors:
            self.assertIn("badNonce", error)
        self.assertGreater(nonces.retries, 0, "no nonce was ever rejected and retried")
