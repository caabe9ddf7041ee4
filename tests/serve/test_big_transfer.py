"""1 GiB each way through the node's reverse proxy, with the node's memory watched.

The node's serve stack and the test front run in a process of their own
(bench/_node_stack.py), so that its resident set can be read from /proc while curl moves a
GiB through it: client -> front -> peerAPI ingress -> node TLS -> reverse proxy -> backend.
The backend runs here: tests/serve/backend.py's Download for the download, and for the upload
a resource that hashes the body as it streams in and keeps none of it. The SHA-256 must match
and the node's peak RSS (VmHWM: the kernel's own high-water mark, so no sample can miss it)
must stay below RSS_LIMIT.

Sizes: 1 GiB for the HTTP/1.1 upload and for both downloads. The HTTP/2 upload moves
H2_UPLOAD_SIZE (64 MiB) only: it runs at 5-10 MB/s here, the node's CPU mostly idle -- small
HTTP/2 flow-control windows (65,535 bytes, Twisted's default) acknowledged over TCP connections
without TCP_NODELAY, so window updates wait on delayed ACKs (with TCP_NODELAY on the node's
connections the same upload runs 5-8 times faster). A GiB would take minutes; raise it to
SIZE when that is fixed.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, error, protocol, reactor, task
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from tests._support import ProcessResult, client_env, curl, run_process

from .backend import Download, listen
from .harness import HOSTNAME

# 1 GiB each way; FUNNEL_TW_BIG_TRANSFER_MIB=N moves N MiB instead (a quicker run, or a bigger one)
SIZE = int(os.environ.get("FUNNEL_TW_BIG_TRANSFER_MIB", "1024")) << 20
H2_UPLOAD_SIZE = min(SIZE, 64 << 20)  # see the module docstring
RSS_LIMIT = 300 << 20
MAX_SECONDS = 120  # per transfer: 1 GiB at no less than ~9 MB/s
NODE_STACK = Path(__file__).resolve().parents[2] / "bench" / "_node_stack.py"
_BLOCK = 1 << 20


class _HashSink:
    """Stands in for a request's ``content`` file: hashes what is written, keeps nothing."""

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.sha256.update(data)
        self.size += len(data)

    def tell(self) -> int:
        return self.size

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def read(self, size: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


class HashingRequest(server.Request):
    """A backend request whose body is hashed as it arrives instead of being buffered."""

    def gotLength(self, length: int | None) -> None:
        self.content = _HashSink()


class HashUpload(resource.Resource):
    """Answers ``{"bytes": N, "sha256": HEX}`` for the body it was sent."""

    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        sink = request.content
        assert isinstance(sink, _HashSink)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"bytes": sink.size, "sha256": sink.sha256.hexdigest()}).encode()


def backend_site() -> server.Site:
    root = resource.Resource()
    root.putChild(b"download", Download())
    root.putChild(b"upload", HashUpload())
    site = server.Site(root)
    site.requestFactory = HashingRequest
    return site


def download_sha256(size: int) -> str:
    """What Download sends: a 64 KiB pattern over and over, cut at ``size``."""
    chunk = bytes(range(256)) * 256
    digest = hashlib.sha256()
    whole, rest = divmod(size, len(chunk))
    for _ in range(whole):
        digest.update(chunk)
    digest.update(chunk[:rest])
    return digest.hexdigest()


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise LookupError(field)


class NodeStack(protocol.ProcessProtocol):
    """bench/_node_stack.py as a child: its JSON line, its stderr, its end."""

    def __init__(self) -> None:
        self.ready: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.out = b""
        self.err = b""

    def outReceived(self, data: bytes) -> None:
        self.out += data
        if b"\n" in self.out and not self.ready.called:
            self.ready.callback(json.loads(self.out.split(b"\n", 1)[0]))

    def errReceived(self, data: bytes) -> None:
        self.err = (self.err + data)[-8192:]

    def processEnded(self, reason: Failure) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"node stack exited: {self.err.decode()[-2000:]}"))
        self.ended.callback(None)


class BigTransferTests(TestCase):
    timeout = 180

    async def setUp(self) -> None:  # type: ignore[override]
        if shutil.which("curl") is None:
            self.skipTest("curl not installed")
        if not os.path.exists("/proc/self/status"):
            self.skipTest("needs /proc to read the node's memory")
        backend = listen(backend_site())
        self.addCleanup(backend.stopListening)
        self.stack = NodeStack()
        transport = reactor.spawnProcess(
            self.stack,
            sys.executable,
            [
                sys.executable,
                str(NODE_STACK),
                "--backend",
                f"http://127.0.0.1:{backend.getHost().port}",
                "--hostname",
                HOSTNAME,
                "--dir",
                os.path.abspath(self.mktemp()),
            ],
            env=client_env(),
        )
        self.addCleanup(self._stop, transport)
        self.info = await self.stack.ready
        self.pid = int(self.info["pid"])
        # fail fast, not after MAX_SECONDS, when the path does not work at all
        code, out, err = await self.curl("/download/16", "--max-time", "20")
        self.assertEqual((code, len(out)), (0, 16), (err + self.stack.err[-3000:]).decode())
        self.samples: list[int] = []
        self.sampler = task.LoopingCall(self._sample)
        self.sampler.start(0.1)
        self.addCleanup(self._stop_sampling)

    async def _stop(self, transport: Any) -> None:
        transport.closeStdin()
        with contextlib.suppress(error.ProcessExitedAlready):
            transport.signalProcess("TERM")
        timer = reactor.callLater(10, lambda: transport.pid and transport.signalProcess("KILL"))
        await self.stack.ended
        if timer.active():
            timer.cancel()

    def _stop_sampling(self) -> None:
        if self.sampler.running:
            self.sampler.stop()

    def _sample(self) -> None:
        with contextlib.suppress(OSError, LookupError):
            self.samples.append(rss_bytes(self.pid))

    async def curl(self, path: str, *extra: str) -> ProcessResult:
        return await curl(
            HOSTNAME,
            self.info["front"],
            path,
            *extra,
            ca_file=self.info["ca"],
            max_time=MAX_SECONDS,
            timeout=MAX_SECONDS + 20,
        )

    def check_memory(self, what: str, size: int, seconds: float) -> None:
        self._stop_sampling()
        before = self.samples[0] if self.samples else 0
        peak = rss_bytes(self.pid, "VmHWM")
        sys.stderr.write(
            f"\n  {what}: {size >> 20} MiB in {seconds:.1f} s ({size / seconds / 1e6:.0f} MB/s);"
            f" node RSS {before / 2**20:.0f} MiB before, sampled max "
            f"{max(self.samples, default=0) / 2**20:.0f} MiB, peak (VmHWM) {peak / 2**20:.0f} MiB "
            f"({len(self.samples)} samples)\n"
        )
        self.assertLess(peak, RSS_LIMIT, f"node peak RSS {peak / 2**20:.0f} MiB")

    async def upload(self, version: str, size: int) -> None:
        path, expected = upload_file(size)
        started = time.monotonic()
        code, out, err = await self.curl("/upload", version, "-T", str(path))
        seconds = time.monotonic() - started
        self.assertEqual(code, 0, err)
        seen = json.loads(out)
        self.assertEqual(seen["bytes"], size)
        self.assertEqual(seen["sha256"], expected)
        self.check_memory(f"upload, {version[2:].upper()}", size, seconds)

    async def download(self, version: str) -> None:
        expected = download_sha256(SIZE)
        port = self.info["front"]
        started = time.monotonic()
        code, out, err = await run_process(
            "bash",
            "-c",
            'set -o pipefail; curl -sS --max-time "$5" "$1" --cacert "$2" --resolve "$3" "$4"'
            " | sha256sum",
            "download",
            version,
            self.info["ca"],
            f"{HOSTNAME}:{port}:127.0.0.1",
            f"https://{HOSTNAME}:{port}/download/{SIZE}",
            str(MAX_SECONDS),
            timeout=MAX_SECONDS + 20,
        )
        seconds = time.monotonic() - started
        self.assertEqual(code, 0, err)
        self.assertEqual(out.split()[0].decode(), expected)
        self.check_memory(f"download, {version[2:].upper()}", SIZE, seconds)

    async def test_upload_http1(self) -> None:
        await self.upload("--http1.1", SIZE)

    async def test_upload_http2(self) -> None:
        await self.upload("--http2", H2_UPLOAD_SIZE)

    async def test_download_http1(self) -> None:
        await self.download("--http1.1")

    async def test_download_http2(self) -> None:
        await self.download("--http2")


_uploads: dict[int, tuple[Path, str]] = {}


def upload_file(size: int) -> tuple[Path, str]:
    """A file of ``size`` random-looking bytes and its SHA-256, written once per run."""
    if size not in _uploads:
        directory = Path(tempfile.mkdtemp(prefix="funnel-big-upload-"))
        atexit.register(shutil.rmtree, directory, True)
        path = directory / "upload.bin"
        digest = hashlib.sha256()
        block = os.urandom(_BLOCK)
        with open(path, "wb") as f:
            for i in range(size // _BLOCK):
                piece = block[i % 7 :] + block[: i % 7]  # not one block repeated verbatim
                digest.update(piece)
                f.write(piece)
            rest = block[: size % _BLOCK]
            digest.update(rest)
            f.write(rest)
        _uploads[size] = path, digest.hexdigest()
    return _uploads[size]
