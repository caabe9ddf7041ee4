"""Challenge responders: the tls-alpn-01 certificate (RFC 8737), how the node's TLS answers an
``acme-tls/1`` handshake (through the Dispatcher, as a funneled connection is served), and the
dns-01 hook contract."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import signal
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import protocol, reactor, threads
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from funnel_tw.flow import Flow
from funnel_tw.serve.guard import FlowGuard
from funnel_tw.tls.challenges import (
    ACME_IDENTIFIER_OID,
    ChallengeError,
    DNSHookResponder,
    TLSALPNResponder,
    tls_alpn_certificate,
)
from funnel_tw.tls.store import ACME_ALPN
from tests._support import eventually, process_gone, sleep
from tests.serve.harness import HOSTNAME, ServeHarness

KEY_AUTHZ = (
    "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"
)


def der_octet_string(data: bytes) -> bytes:
    """DER OCTET STRING (short length form: the digest is 32 bytes)."""
    assert len(data) < 128
    return bytes([0x04, len(data)]) + data


class CertificateTests(TestCase):
    def test_acme_identifier_extension(self) -> None:
        _, cert = tls_alpn_certificate(HOSTNAME, KEY_AUTHZ)
        self.assertEqual(ACME_IDENTIFIER_OID.dotted_string, "1.3.6.1.5.5.7.1.31")
        ext = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
        self.assertTrue(ext.critical)
        digest = hashlib.sha256(KEY_AUTHZ.encode("ascii")).digest()
        value = ext.value.public_bytes()  # the extnValue contents: DER of the OCTET STRING
        self.assertEqual(value, der_octet_string(digest))
        self.assertEqual(value[0], 0x04)
        self.assertEqual(value[1], 32)

    def test_san_is_exactly_the_name(self) -> None:
        _, cert = tls_alpn_certificate(HOSTNAME, KEY_AUTHZ)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(list(san), [x509.DNSName(HOSTNAME)])

    def test_key_matches_and_each_certificate_is_new(self) -> None:
        key, cert = tls_alpn_certificate(HOSTNAME, KEY_AUTHZ)
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        self.assertEqual(
            cert.public_key().public_bytes(serialization.Encoding.DER, spki),
            key.public_key().public_bytes(serialization.Encoding.DER, spki),
        )
        _, again = tls_alpn_certificate(HOSTNAME, KEY_AUTHZ)
        self.assertNotEqual(cert.serial_number, again.serial_number)


# --------------------------------------------------------------------------- TLS


class _DispatchFactory(protocol.Factory):
    """Plain TCP straight into the Dispatcher, as a funneled stream arrives after the 101."""

    def __init__(self, harness: ServeHarness, port: int) -> None:
        self.harness = harness
        self.port = port

    def buildProtocol(self, addr: Any) -> Any:
        flow = Flow(
            client=(addr.host, addr.port), host=HOSTNAME, port=self.port, funnel=True, peer="relay"
        )
        return self.harness.node.dispatcher.protocol_for(flow)


class Handshake:
    """What a blocking TLS client saw (run in a thread)."""

    def __init__(self, port: int, name: str, alpn: list[str], request: bool) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(alpn)
        with (
            socket.create_connection(("127.0.0.1", port), timeout=4) as raw,
            context.wrap_socket(raw, server_hostname=name) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            self.cert = x509.load_der_x509_certificate(der)
            self.alpn = tls.selected_alpn_protocol()
            started = time.monotonic()
            self.answer = b""
            if request:  # without one, there is nothing to wait for but the socket's timeout
                with contextlib.suppress(OSError):
                    tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
                try:
                    while chunk := tls.recv(65536):
                        self.answer += chunk
                        if self._complete():
                            break
                except (ssl.SSLError, OSError):
                    pass
            self.closed_after = time.monotonic() - started

    def _complete(self) -> bool:
        """The whole response is in: its head and as much body as Content-Length says."""
        head, sep, body = self.answer.partition(b"\r\n\r\n")
        if not sep:
            return False
        match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        return match is None or len(body) >= int(match.group(1))

    def is_challenge(self) -> bool:
        try:
            self.cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
        except x509.ExtensionNotFound:
            return False
        return True


class TLSALPNTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.h = ServeHarness(
            self, "[serve 443]\nfunnel = yes\n/ = text:normal page\n", f"{HOSTNAME}, b.example.com"
        )
        listening = reactor.listenTCP(0, _DispatchFactory(self.h, 443), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.port = listening.getHost().port
        self.responder = TLSALPNResponder(self.h.node.store)

    async def handshake(self, name: str, alpn: list[str], request: bool = False) -> Handshake:
        result: Handshake = await threads.deferToThread(Handshake, self.port, name, alpn, request)
        return result

    async def test_validator_gets_the_challenge_certificate_and_is_closed(self) -> None:
        await self.responder.start_responding(HOSTNAME, "token", KEY_AUTHZ)
        seen = await self.handshake(HOSTNAME, ["acme-tls/1"], request=True)
        self.assertEqual(seen.alpn, "acme-tls/1")
        self.assertTrue(seen.is_challenge())
        ext = seen.cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
        self.assertEqual(
            ext.value.public_bytes(), der_octet_string(hashlib.sha256(KEY_AUTHZ.encode()).digest())
        )
        # closed right after the handshake: what it sent never reached the HTTP site
        self.assertEqual(seen.answer, b"")
        self.assertLess(seen.closed_after, 2, "the node did not close the acme-tls/1 connection")
        self.assertEqual(self.h.node.store.counters.get("tls_alpn_01_answered"), 1)

    async def test_other_clients_keep_the_normal_certificate(self) -> None:
        await self.responder.start_responding(HOSTNAME, "token", KEY_AUTHZ)
        seen = await self.handshake(HOSTNAME, ["h2", "http/1.1"])
        self.assertEqual(seen.alpn, "h2")
        self.assertFalse(seen.is_challenge())
        for alpn in (["http/1.1"], []):
            seen = await self.handshake(HOSTNAME, alpn, request=True)
            self.assertFalse(seen.is_challenge(), alpn)
            self.assertIn(b"normal page", seen.answer, (alpn, seen.answer))
        self.assertIsNone(self.h.node.store.counters.get("tls_alpn_01_answered"))

    async def test_no_acme_alpn_without_a_pending_challenge(self) -> None:
        seen = await self.handshake(HOSTNAME, ["acme-tls/1"])
        self.assertIsNone(seen.alpn)
        self.assertFalse(seen.is_challenge())
        self.assertEqual(self.h.node.store.counters.get("tls_acme_alpn_without_challenge"), 1)

    async def test_challenge_only_for_its_name(self) -> None:
        await self.responder.start_responding(HOSTNAME, "token", KEY_AUTHZ)
        seen = await self.handshake("b.example.com", ["acme-tls/1"])
        self.assertIsNone(seen.alpn)
        self.assertFalse(seen.is_challenge())

    async def test_stop_responding_ends_it(self) -> None:
        await self.responder.start_responding(HOSTNAME, "token", KEY_AUTHZ)
        await self.responder.stop_responding(HOSTNAME, "token", KEY_AUTHZ)
        seen = await self.handshake(HOSTNAME, ["acme-tls/1"])
        self.assertIsNone(seen.alpn)
        self.assertFalse(seen.is_challenge())


@implementer(IHandshakeListener)
class _Recorder(protocol.Protocol):
    def __init__(self) -> None:
        self.events: list[str] = []

    def connectionMade(self) -> None:
        self.events.append("made")

    def handshakeCompleted(self) -> None:
        self.events.append("handshake")

    def dataReceived(self, data: bytes) -> None:
        self.events.append("data")

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.events.append("lost")


class CloseAfterACMEHandshakeTests(TestCase):
    """serve/guard.py:FlowGuard, the layer inside the flow's TLS, closes acme-tls/1."""

    def _drive(self, negotiated: bytes | None) -> tuple[_Recorder, StringTransport]:
        inner = _Recorder()
        wrapper = FlowGuard(inner, Clock(), lambda counter, why, host: None)
        transport = StringTransport()
        transport.negotiatedProtocol = negotiated  # type: ignore[attr-defined]
        wrapper.makeConnection(transport)
        wrapper.handshakeCompleted()
        wrapper.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        wrapper.connectionLost(Failure(ConnectionError("closed")))
        return inner, transport

    def test_other_protocols_pass_through(self) -> None:
        inner, transport = self._drive(b"http/1.1")
        self.assertEqual(inner.events, ["made", "handshake", "data", "lost"])
        self.assertFalse(transport.disconnecting)

    def test_acme_connection_is_closed_and_sees_no_data(self) -> None:
        inner, transport = self._drive(ACME_ALPN)
        self.assertTrue(transport.disconnecting)
        self.assertNotIn("data", inner.events)
        self.assertNotIn("handshake", inner.events)

    def test_the_inner_protocol_is_not_left_behind(self) -> None:
        """Was a bug: after an acme-tls/1 handshake the inner protocol (the HTTP channel the
        Dispatcher built, connected before the handshake) is swapped for _Discard and never
        gets connectionLost. Its idle timer (ServeSite, 300 s) stays behind for every
        validation, and, registered as the TLS transport's producer, it keeps
        TLSMemoryBIOProtocol.loseConnection from shutting down: the node never closes the
        connection (test_validator_gets_the_challenge_certificate_and_is_closed), and the
        leftover timers fail the tls-alpn-01 tests in tests/interop/test_acme_pebble.py with
        DirtyReactorAggregateError (TimeoutMixin.__timedOut)."""
        inner, _ = self._drive(ACME_ALPN)
        # either never connected, or connected and told that the connection ended
        self.assertIn(inner.events, ([], ["made", "lost"]))


# --------------------------------------------------------------------------- dns-01 hook


def dns01(key_authz: str) -> str:
    return (
        base64.urlsafe_b64encode(hashlib.sha256(key_authz.encode()).digest()).rstrip(b"=").decode()
    )


class DNSHookTests(TestCase):
    timeout = 30

    def hook(self, body: str) -> Path:
        folder = Path(self.mktemp()).absolute()
        folder.mkdir()
        path = folder / "hook"
        path.write_text(f"#!{sys.executable}\nimport os, sys, time\nHERE = {str(folder)!r}\n{body}")
        path.chmod(0o755)
        return path

    async def test_set_and_clear(self) -> None:
        hook = self.hook(
            "with open(os.path.join(HERE, 'calls'), 'a') as f:\n"
            "    f.write(' '.join(sys.argv[1:]) + '\\n')\n"
        )
        responder = DNSHookResponder(hook, reactor)
        self.assertEqual(responder.challenge_type, "dns-01")
        await responder.start_responding("node.example.test", "tok", KEY_AUTHZ)
        await responder.stop_responding("node.example.test", "tok", KEY_AUTHZ)
        await responder.start_responding("*.apps.example.test", "tok", KEY_AUTHZ)
        value = dns01(KEY_AUTHZ)
        self.assertEqual(
            (hook.parent / "calls").read_text().splitlines(),
            [
                f"set _acme-challenge.node.example.test {value}",
                f"clear _acme-challenge.node.example.test {value}",
                f"set _acme-challenge.apps.example.test {value}",
            ],
        )

    async def test_a_failing_hook_says_why(self) -> None:
        hook = self.hook("sys.stderr.write('no API token for example.test\\n')\nsys.exit(3)\n")
        responder = DNSHookResponder(hook, reactor)
        with self.assertRaises(ChallengeError) as caught:
            await responder.start_responding("node.example.test", "tok", KEY_AUTHZ)
        message = str(caught.exception)
        self.assertIn(str(hook), message)
        self.assertIn("set _acme-challenge.node.example.test", message)
        self.assertIn("status 3", message)
        self.assertIn("no API token for example.test", message)

    async def test_a_failing_hook_without_stderr(self) -> None:
        hook = self.hook("print('zone not found')\nsys.exit(2)\n")
        responder = DNSHookResponder(hook, reactor)
        with self.assertRaises(ChallengeError) as caught:
            await responder.stop_responding("node.example.test", "tok", KEY_AUTHZ)
        self.assertIn(
            "clear _acme-challenge.node.example.test failed with status 2", str(caught.exception)
        )
        self.assertIn("zone not found", str(caught.exception))

    async def test_the_hook_gets_the_node_environment(self) -> None:
        """Was a bug: the hook is started through utils.getProcessOutputAndValue's default env={}:
        it runs with an empty environment, so the credentials a DNS provider needs (given to
        the daemon with systemd's Environment=/EnvironmentFile=) never reach it; no HOME,
        no PATH beyond the shell's default."""
        hook = self.hook(
            "with open(os.path.join(HERE, 'env'), 'w') as f:\n"
            "    f.write(os.environ.get('FUNNEL_TW_TEST_DNS_TOKEN', 'missing'))\n"
        )
        os.environ["FUNNEL_TW_TEST_DNS_TOKEN"] = "s3cret"
        self.addCleanup(os.environ.pop, "FUNNEL_TW_TEST_DNS_TOKEN", None)
        await DNSHookResponder(hook, reactor).start_responding("node.example.test", "t", KEY_AUTHZ)
        self.assertEqual((hook.parent / "env").read_text(), "s3cret")

    async def test_a_hanging_hook_times_out_and_is_stopped(self) -> None:
        """Was a bug: on timeout the Deferred is cancelled but the hook process is not killed
        (getProcessOutputAndValue has no canceller): a hung hook stays running, one more per
        attempt."""
        hook = self.hook(
            "open(os.path.join(HERE, 'pid'), 'w').write(str(os.getpid()))\ntime.sleep(30)\n"
        )
        pid_file = hook.parent / "pid"

        async def kill_leftover() -> None:
            if pid_file.exists():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    pid = int(pid_file.read_text())
                    os.kill(pid, signal.SIGKILL)
                    # let the reactor reap it and close its pipes
                    await eventually(lambda: process_gone(pid), 5)
                    await sleep(0)

        self.addCleanup(kill_leftover)
        responder = DNSHookResponder(hook, reactor, timeout=1.0)
        with self.assertRaises(ChallengeError) as caught:
            await responder.start_responding("node.example.test", "tok", KEY_AUTHZ)
        self.assertIn("no answer after 1 s", str(caught.exception))
        pid = int(pid_file.read_text())
        gone = await eventually(lambda: process_gone(pid), 2)
        self.assertTrue(gone, f"the hook (pid {pid}) is still running after the timeout")
