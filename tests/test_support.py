"""tests/_support.py itself: the certificates it builds, its process runner, its waits."""

from __future__ import annotations

import datetime
import socket
import sys
import time

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests._support import (
    curl_argv,
    eventually,
    free_port,
    free_tcp_and_udp_port,
    issue,
    make_ca,
    process_gone,
    run_process,
    sign,
    utcnow,
    wait_until,
    wait_until_blocking,
)


def san_of(cert: x509.Certificate) -> list[str]:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in names]


class CertificateTests(SynchronousTestCase):
    def test_leaf_signed_by_a_ca(self) -> None:
        ca = make_ca(path_length=0)
        leaf = issue("node.example.test", issuer=ca, san=("node.example.test", "127.0.0.1"))
        leaf.cert.verify_directly_issued_by(ca.cert)
        self.assertEqual(san_of(leaf.cert), ["node.example.test", "127.0.0.1"])
        self.assertEqual(leaf.chain, [leaf.cert, ca.cert])
        constraints = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertEqual((constraints.critical, constraints.value.path_length), (True, 0))
        self.assertTrue(constraints.value.ca)
        ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        leaf.cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)

    def test_key_types(self) -> None:
        for key_type, kind in (
            ("ec", ec.EllipticCurvePrivateKey),
            ("rsa", rsa.RSAPrivateKey),
            ("ed25519", ed25519.Ed25519PrivateKey),
        ):
            ca = make_ca(key_type=key_type)  # type: ignore[arg-type]
            leaf = issue("a.example.test", issuer=ca, key_type=key_type)  # type: ignore[arg-type]
            self.assertIsInstance(leaf.key, kind)
            leaf.cert.verify_directly_issued_by(ca.cert)
            leaf.private_certificate()  # loads into Twisted

    def test_special_certificates(self) -> None:
        day = datetime.timedelta(days=1)
        expired = issue("old.example.test", not_before=-2 * day, not_after=-day)
        self.assertLess(expired.cert.not_valid_after_utc, utcnow())
        bare = issue("bare.example.test", san=())
        with self.assertRaises(x509.ExtensionNotFound):
            bare.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        start = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
        later = issue("later.example.test", not_before=start, not_after=start + day, serial=7)
        self.assertEqual((later.cert.not_valid_before_utc, later.cert.serial_number), (start, 7))
        key = ec.generate_private_key(ec.SECP256R1())
        own = sign("self.example.test", key.public_key(), key)
        self.assertEqual(own.issuer, own.subject)


class PortTests(SynchronousTestCase):
    def test_free_ports(self) -> None:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind(("127.0.0.1", free_port(kind)))
        port = free_tcp_and_udp_port()
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind(("127.0.0.1", port))

    def test_curl_argv(self) -> None:
        self.assertEqual(
            curl_argv("n.example", 443, "/x", "-v", ca_file="ca.pem", connect="::1", max_time=5),
            [
                "curl",
                "-sS",
                "--max-time",
                "5",
                "--cacert",
                "ca.pem",
                "--resolve",
                "n.example:443:[::1]",
                "-v",
                "https://n.example:443/x",
            ],
        )


class ProcessTests(TestCase):
    timeout = 20

    async def test_output_code_and_stdin(self) -> None:
        code, out, err = await run_process(
            sys.executable,
            "-c",
            "import sys; sys.stdout.write(sys.stdin.read()); sys.stderr.write('e'); sys.exit(3)",
            stdin=b"in",
        )
        self.assertEqual((code, out, err), (3, b"in", b"e"))

    async def test_timeout_kills(self) -> None:
        marker = self.mktemp()
        script = f"import os, time; open({marker!r}, 'w').write(str(os.getpid())); time.sleep(30)"
        started = time.monotonic()
        with self.assertRaises(TimeoutError):
            await run_process(sys.executable, "-c", script, timeout=1.0)
        self.assertLess(time.monotonic() - started, 10)
        with open(marker) as f:
            self.assertTrue(process_gone(int(f.read())))


class WaitTests(TestCase):
    timeout = 20

    async def test_wait_until(self) -> None:
        deadline = time.monotonic() + 0.1
        took = await wait_until(lambda: time.monotonic() > deadline, 5, "a moment")
        self.assertLess(took, 5)
        with self.assertRaises(AssertionError) as caught:
            await wait_until(lambda: False, 0.05, "never", detail=lambda: "why")
        self.assertIn("never", str(caught.exception))
        self.assertIn("why", str(caught.exception))
        self.assertFalse(await eventually(lambda: False, 0.05))

    def test_wait_until_blocking(self) -> None:
        deadline = time.monotonic() + 0.1
        self.assertLess(wait_until_blocking(lambda: time.monotonic() > deadline, 5, "x"), 5)
        with self.assertRaises(AssertionError):
            wait_until_blocking(lambda: False, 0.05, "never")
