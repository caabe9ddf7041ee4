"""File mounts from a raw TLS client (Python ssl + socket: nothing tidies the request first).

Classes: containment for every way a file is reached (a name, a directory index, symbolic
links anywhere in the chain, dot names, special files, a swap between check and open), odd
bytes in the path (400 from the normalizer, never 500), ranges (the "Apache Killer" class,
suffixes, 416, bad syntax, multipart bodies), conditional requests and HEAD. After each class
the node still serves an ordinary file.
"""

from __future__ import annotations

import email
import email.policy
import os
import socket
import ssl
import time
from pathlib import Path

from twisted.internet import threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from funnel_tw.serve import files
from tests._support import eventually
from tests.serve.harness import HOSTNAME, ServeHarness

SECRET = b"TOP-SECRET-OUTSIDE-THE-ROOT"
BIG = 1 << 20
READ_CAP = 64 << 20  # a test never reads more than this, whatever the node sends


class Response:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.status = int(lines[0].split(b" ", 2)[1]) if lines[0].startswith(b"HTTP/1.1 ") else 0
        self.headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            self.headers[name.strip().lower()] = value.strip()

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.raw[:300]!r}>"


def exchange(port: int, ca: str, raw: bytes, timeout: float = 15.0) -> bytes:
    """Send ``raw`` over TLS; read until the node closes (Connection: close) or READ_CAP."""
    context = ssl.create_default_context(cafile=ca)
    context.set_alpn_protocols(["http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=timeout) as plain,
        context.wrap_socket(plain, server_hostname=HOSTNAME) as tls,
    ):
        tls.sendall(raw)
        received = bytearray()
        while len(received) < READ_CAP:
            try:
                chunk = tls.recv(1 << 16)
            except (ssl.SSLError, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
        return bytes(received)


class FileMountTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        base = Path(self.mktemp()).absolute()
        self.root = root = base / "www"
        outside = base / "outside"
        for d in (root / "sub", root / "listed", root / "dirindex", root / ".git", outside):
            d.mkdir(parents=True)
        (root / ".well-known").mkdir()
        (outside / "secret.txt").write_bytes(SECRET)
        (outside / "leak.txt").write_bytes(SECRET)
        (root / "ok.txt").write_text("file-ok")
        (root / "sub" / "a.txt").write_text("file a")
        (root / "listed" / "secret-name-1.txt").write_text("x")
        (root / ".env").write_bytes(SECRET)
        (root / ".git" / "config").write_bytes(SECRET)
        (root / "sub" / ".htpasswd").write_bytes(SECRET)
        (root / ".well-known" / "security.txt").write_text("Contact: x")
        (root / "big.bin").write_bytes(bytes(range(256)) * (BIG // 256))
        (root / "page.html").write_text("<p>page</p>")
        # every way of reaching the outside file through a link
        (root / "index.html").symlink_to(outside / "secret.txt")  # the root's own index
        (root / "dirindex" / "index.html").symlink_to(outside / "secret.txt")
        (root / "dirindex" / "index.htm").write_text("fallback index")
        (root / "mid").symlink_to(outside)  # a directory in the middle of the chain
        (root / "passwd").symlink_to("/etc/passwd")
        (root / "relative").symlink_to("../outside/secret.txt")
        (root / "loop").symlink_to(root / "loop")
        (root / "dangling").symlink_to(root / "nothing-here")
        (root / "inside").symlink_to(root / "sub")  # a link that stays inside: served
        (root / "docs").symlink_to(root / ".git")  # a link into a dot directory
        os.mkfifo(root / "fifo")
        self.outside = outside
        (base / "site").mkdir()
        (base / "site" / "index.html").write_text("site index")
        self.h = ServeHarness(
            self, f"[serve 443]\nfunnel = yes\n/ = {root}\n/site/ = {base / 'site'}\n"
        )
        _, self.port = self.h.front(443, settle=True)  # cleanup: every connection closed

    @property
    def counters(self) -> dict[str, int]:
        return self.h.node.dispatcher.counters

    async def request(self, raw: bytes) -> Response:
        result: bytes = await threads.deferToThread(exchange, self.port, self.h.ca_file, raw)
        return Response(result)

    async def get(self, path: bytes, headers: bytes = b"", method: bytes = b"GET") -> Response:
        return await self.request(
            method
            + b" "
            + path
            + b" HTTP/1.1\r\nHost: "
            + HOSTNAME.encode()
            + b"\r\n"
            + headers
            + b"Connection: close\r\n\r\n"
        )

    async def still_serving(self) -> None:
        response = await self.get(b"/ok.txt")
        self.assertEqual((response.status, response.body), (200, b"file-ok"), response)

    async def test_containment_class(self) -> None:
        refused = [
            b"/",  # index.html -> outside
            b"/index.html",
            b"/dirindex/index.html",
            b"/mid/leak.txt",
            b"/mid/secret.txt",
            b"/passwd",
            b"/relative",
            b"/loop",
            b"/dangling",
            b"/docs/config",  # a link into .git
            b"/inside/../mid/leak.txt",
            b"/%6did/leak.txt",  # "mid" with an encoded unreserved letter
        ]
        for path in refused:
            before = self.counters.get("refused_file", 0)
            response = await self.get(path)
            self.assertEqual(response.status, 404, (path, response))
            self.assertNotIn(SECRET, response.raw, path)
            self.assertNotIn(b"root:", response.raw, path)
            counted = self.counters.get("refused_file", 0) - before
            self.assertEqual(counted, 0 if path == b"/dangling" else 1, path)  # missing: no refusal
        # the index that is a link out is skipped; the next index name is checked the same way
        response = await self.get(b"/dirindex/")
        self.assertEqual((response.status, response.body), (200, b"fallback index"))
        # a link that stays inside the root is followed
        response = await self.get(b"/inside/a.txt")
        self.assertEqual((response.status, response.body), (200, b"file a"))
        await self.still_serving()

    async def test_directories_never_list(self) -> None:
        response = await self.get(b"/site/")  # a mount's own root and its index
        self.assertEqual((response.status, response.body), (200, b"site index"))
        self.assertEqual(response.headers[b"content-type"], b"text/html")
        response = await self.get(b"/listed/")
        self.assertEqual(response.status, 404)
        self.assertNotIn(b"secret-name-1", response.raw)
        response = await self.get(b"/listed?x=1")
        self.assertEqual(response.status, 301)
        self.assertEqual(response.headers[b"location"], b"/listed/?x=1")
        response = await self.get(b"/sub/a.txt/")
        self.assertEqual(response.status, 404)
        await self.still_serving()

    async def test_dot_names(self) -> None:
        for path in (b"/.env", b"/.git/config", b"/sub/.htpasswd", b"/%2egit/config", b"/.git/"):
            response = await self.get(path)
            self.assertEqual(response.status, 404, (path, response))
            self.assertNotIn(SECRET, response.raw)
        response = await self.get(b"/.well-known/security.txt")
        self.assertEqual((response.status, response.body), (200, b"Contact: x"))
        await self.still_serving()

    async def test_special_files_are_never_opened(self) -> None:
        sock_path = self.root / "s.sock"
        server = socket.socket(socket.AF_UNIX)
        self.addCleanup(server.close)
        cwd = os.getcwd()
        os.chdir(self.root)  # a relative name: the absolute one is too long for AF_UNIX
        try:
            server.bind(sock_path.name)
        finally:
            os.chdir(cwd)
        (self.root / "null").symlink_to("/dev/null")
        for path in (b"/fifo", b"/s.sock", b"/null"):
            started = time.monotonic()
            response = await self.get(path)
            self.assertEqual(response.status, 404, (path, response))
            self.assertLess(time.monotonic() - started, 5)
        await self.still_serving()

    async def test_odd_bytes_in_the_path(self) -> None:
        odd = self.root / "odd"
        odd.mkdir()
        (odd / "a b.txt").write_text("space")
        (odd / "café.txt").write_text("utf8")
        (odd / "100%.txt").write_text("percent")
        os.close(os.open(os.fsencode(odd) + b"/\xff.bin", os.O_CREAT | os.O_WRONLY, 0o644))
        served = {
            b"/odd/a%20b.txt": b"space",
            b"/odd/caf%C3%A9.txt": b"utf8",
            b"/odd/caf%c3%a9.txt": b"utf8",
            b"/odd/100%25.txt": b"percent",
            b"/odd/%FF.bin": b"",
        }
        for path, body in served.items():
            response = await self.get(path)
            self.assertEqual((response.status, response.body), (200, body), path)
        statuses = {
            b"/odd/a%00b": 400,
            b"/odd/a\x00b": 400,
            b"/ok.txt%00.html": 400,
            b"/odd/%0a": 400,
            b"/odd/a%2Fb": 400,
            b"/odd/a%5Cb": 400,
            b"/odd/%": 400,
            b"/odd/" + b"n" * 300: 404,  # a name too long for the file system
            b"/odd/" + b"n/" * 4000: 404,  # a path too long for the file system
            b"/" + b"x" * 9000: 414,
        }
        for path, status in statuses.items():
            response = await self.get(path)
            self.assertEqual(response.status, status, (path[:40], response))
        await self.still_serving()

    async def test_range_class(self) -> None:
        data = (self.root / "big.bin").read_bytes()
        size = b"%d" % BIG

        async def ranged(spec: bytes, extra: bytes = b"", method: bytes = b"GET") -> Response:
            return await self.get(b"/big.bin", b"Range: " + spec + b"\r\n" + extra, method)

        # hundreds of overlapping whole-file parts: the whole file, once
        response = await ranged(b"bytes=" + b",".join([b"0-"] * 400))
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, data)
        self.assertLess(len(response.raw), BIG + 4096)
        response = await ranged(b"bytes=" + b",".join(b"0-%d" % (BIG - i) for i in range(300)))
        self.assertLess(len(response.raw), BIG + 4096)
        # 1000 small parts: the whole file
        response = await ranged(
            b"bytes=" + b",".join(b"%d-%d" % (i * 3, i * 3) for i in range(1000))
        )
        self.assertEqual((response.status, len(response.body)), (200, BIG))
        # a few overlapping parts: merged into one
        response = await ranged(b"bytes=0-,100-200,0-10")
        self.assertEqual(response.status, 206)
        self.assertEqual(response.headers[b"content-range"], b"bytes 0-%d/%s" % (BIG - 1, size))
        self.assertEqual(response.body, data)
        # a suffix longer than the file: the whole file
        for suffix in (b"bytes=-99999999999", b"bytes=-" + b"9" * 100):
            response = await ranged(suffix)
            self.assertEqual(response.status, 206)
            self.assertEqual(response.headers[b"content-range"], b"bytes 0-%d/%s" % (BIG - 1, size))
            self.assertEqual(response.body, data)
        # single parts
        response = await ranged(b"bytes=-10")
        self.assertEqual((response.status, response.body), (206, data[-10:]))
        response = await ranged(b"bytes=1000-1009")
        self.assertEqual((response.status, response.body), (206, data[1000:1010]))
        self.assertEqual(response.headers[b"content-length"], b"10")
        # bad syntax: ignored
        for bad in (b"bytes=5-3", b"bytes=abc", b"items=0-1", b"bytes=1-2-3", b"bytes=\xff-1"):
            response = await ranged(bad)
            self.assertEqual((response.status, len(response.body)), (200, BIG), bad)
        # unsatisfiable
        for unsatisfiable in (b"bytes=%d-" % BIG, b"bytes=-0", b"bytes=" + b"9" * 50 + b"-"):
            response = await ranged(unsatisfiable)
            self.assertEqual(response.status, 416, unsatisfiable)
            self.assertEqual(response.headers[b"content-range"], b"bytes */" + size)
        self.assertGreater(self.counters.get("file_range_ignored", 0), 0)
        await self.still_serving()

    async def test_multipart_byteranges(self) -> None:
        data = (self.root / "big.bin").read_bytes()
        response = await self.get(b"/big.bin", b"Range: bytes=-5,0-9,500000-500099\r\n")
        self.assertEqual(response.status, 206)
        self.assertEqual(int(response.headers[b"content-length"]), len(response.body))
        kind = response.headers[b"content-type"]
        self.assertTrue(kind.startswith(b"multipart/byteranges; boundary="), kind)
        message = email.message_from_bytes(
            b"Content-Type: " + kind + b"\r\n\r\n" + response.body, policy=email.policy.HTTP
        )
        parts = [(p["Content-Range"], p.get_payload(decode=True)) for p in message.iter_parts()]
        self.assertEqual(
            parts,
            [
                (f"bytes 0-9/{BIG}", data[:10]),
                (f"bytes 500000-500099/{BIG}", data[500000:500100]),
                (f"bytes {BIG - 5}-{BIG - 1}/{BIG}", data[-5:]),
            ],
        )
        await self.still_serving()

    async def test_conditional_requests_and_head(self) -> None:
        response = await self.get(b"/page.html")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers[b"content-type"], b"text/html")
        self.assertEqual(response.headers[b"x-content-type-options"], b"nosniff")
        self.assertEqual(response.headers[b"accept-ranges"], b"bytes")
        etag = response.headers[b"etag"]
        modified = response.headers[b"last-modified"]
        response = await self.get(b"/page.html", b'If-None-Match: "x", ' + etag + b"\r\n")
        self.assertEqual((response.status, response.body), (304, b""))
        response = await self.get(b"/page.html", b"If-None-Match: W/" + etag + b"\r\n")
        self.assertEqual(response.status, 304)
        response = await self.get(b"/page.html", b"If-Modified-Since: " + modified + b"\r\n")
        self.assertEqual(response.status, 304)
        for odd_date in (b"", b"x", b"Sun, 99 Foo 99999 99:99:99 GMT", b"\xff"):
            response = await self.get(b"/page.html", b"If-Modified-Since: " + odd_date + b"\r\n")
            self.assertEqual(response.status, 200, odd_date)
        # If-Range: the range only while the validator matches
        response = await self.get(b"/page.html", b"Range: bytes=0-2\r\nIf-Range: " + etag + b"\r\n")
        self.assertEqual((response.status, response.body), (206, b"<p>"))
        response = await self.get(b"/page.html", b'Range: bytes=0-2\r\nIf-Range: "old"\r\n')
        self.assertEqual((response.status, response.body), (200, b"<p>page</p>"))
        response = await self.get(
            b"/page.html", b"Range: bytes=0-2\r\nIf-Range: " + modified + b"\r\n"
        )
        self.assertEqual(response.status, 206)
        # HEAD: the headers of GET, no body
        response = await self.get(b"/big.bin", method=b"HEAD")
        self.assertEqual((response.status, response.body), (200, b""))
        self.assertEqual(response.headers[b"content-length"], b"%d" % BIG)
        self.assertEqual(response.headers[b"content-type"], b"application/octet-stream")
        response = await self.get(b"/big.bin", b"Range: bytes=0-9\r\n", method=b"HEAD")
        self.assertEqual((response.status, response.body), (206, b""))
        response = await self.get(b"/ok.txt", method=b"DELETE")
        self.assertEqual(response.status, 405)
        self.assertEqual(response.headers[b"allow"], b"GET, HEAD")
        await self.still_serving()

    async def test_client_gone_mid_body_releases_the_file(self) -> None:
        huge = self.root / "huge.bin"
        huge.write_bytes(b"z" * (16 << 20))  # more than the socket buffers hold

        def open_descriptors() -> int:
            fds = Path("/proc/self/fd")
            return sum(1 for fd in fds.iterdir() if _link(fd) == str(huge))

        def read_a_little() -> bytes:
            context = ssl.create_default_context(cafile=self.h.ca_file)
            with (
                socket.create_connection(("127.0.0.1", self.port), timeout=10) as plain,
                context.wrap_socket(plain, server_hostname=HOSTNAME) as tls,
            ):
                tls.sendall(b"GET /huge.bin HTTP/1.1\r\nHost: " + HOSTNAME.encode() + b"\r\n\r\n")
                return tls.recv(65536)

        if not Path("/proc/self/fd").is_dir():
            self.skipTest("no /proc/self/fd")
        first = await threads.deferToThread(read_a_little)
        self.assertTrue(first.startswith(b"HTTP/1.1 200"), first[:100])
        self.assertTrue(await eventually(lambda: open_descriptors() == 0, 10))
        await self.still_serving()

    async def test_http2_body_and_range(self) -> None:
        data = (self.root / "big.bin").read_bytes()
        out_file = Path(self.mktemp())
        code, _, err = await self.h.curl(self.port, "/big.bin", "--http2", "-o", str(out_file))
        self.assertEqual(code, 0, err)
        self.assertEqual(out_file.read_bytes(), data)
        code, out, err = await self.h.curl(self.port, "/big.bin", "--http2", "-r", "10-19")
        self.assertEqual((code, out), (0, data[10:20]), err)
        await self.still_serving()


def _link(fd: Path) -> str:
    try:
        return os.readlink(fd)
    except OSError:
        return ""


class SwapBetweenCheckAndOpenTests(SynchronousTestCase):
    """A directory in the chain swapped for a link out after its real path was checked: the
    file actually opened is checked again (device and inode, then /proc/self/fd)."""

    def setUp(self) -> None:
        base = Path(self.mktemp()).absolute()
        self.root = base / "www"
        (self.root / "d").mkdir(parents=True)
        (self.root / "d" / "f.txt").write_text("inside")
        self.outside = base / "outside"
        self.outside.mkdir()

    def swap_before_open(self) -> None:
        real_open = os.open

        def swapping_open(path: str, flags: int, mode: int = 0o777) -> int:
            (self.root / "d").rename(self.root / "d.old")
            (self.root / "d").symlink_to(self.outside)
            self.patch(os, "open", real_open)
            return real_open(path, flags, mode)

        self.patch(os, "open", swapping_open)

    def test_other_file_refused(self) -> None:
        (self.outside / "f.txt").write_bytes(SECRET)
        self.swap_before_open()
        with self.assertRaises(files.Refused) as caught:
            files.open_below(str(self.root), str(self.root / "d" / "f.txt"))
        self.assertIn("changed", str(caught.exception))

    def test_same_inode_outside_refused(self) -> None:
        # a hard link outside to the checked file: same inode, but opened by an outside path
        if not os.path.isdir("/proc/self/fd"):
            self.skipTest("no /proc/self/fd")
        os.link(self.root / "d" / "f.txt", self.outside / "f.txt")
        self.swap_before_open()
        with self.assertRaises(files.Refused) as caught:
            files.open_below(str(self.root), str(self.root / "d" / "f.txt"))
        self.assertIn("outside", str(caught.exception))

    def test_unswapped_opens(self) -> None:
        fd, st = files.open_below(str(self.root), str(self.root / "d" / "f.txt"))
        self.addCleanup(os.close, fd)
        self.assertEqual(os.read(fd, 100), b"inside")
        self.assertEqual(st.st_size, 6)


class ShrinkingFileTests(SynchronousTestCase):
    """A file cut short while it is sent: the response is aborted, never padded or hung."""

    def test_short_read_aborts(self) -> None:
        path = Path(self.mktemp())
        path.write_bytes(b"x" * 1000)
        fd = os.open(path, os.O_RDONLY)
        events: list[str] = []

        class Transport:
            def abortConnection(self) -> None:
                events.append("abort")

        class Channel:
            transport = Transport()

        class FakeRequest:
            channel = Channel()

            def notifyFinish(self) -> object:
                from twisted.internet import defer

                return defer.Deferred()

            def registerProducer(self, producer: object, streaming: bool) -> None:
                events.append("register")

            def unregisterProducer(self) -> None:
                events.append("unregister")

            def write(self, data: bytes) -> None:
                events.append(f"write {len(data)}")

            def finish(self) -> None:
                events.append("finish")

        body = files.FileBody(FakeRequest(), fd, [(b"", 0, 100_000)], b"")  # type: ignore[arg-type]
        body.start()
        body.resumeProducing()
        body.resumeProducing()
        self.assertEqual(events, ["register", "write 1000", "unregister", "abort"])
        self.assertIsNone(body.fd)
        with self.assertRaises(OSError):
            os.fstat(fd)  # closed
