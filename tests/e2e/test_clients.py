"""Real clients through a real relay and node (separate twistd processes, WireGuard on loopback).

curl over HTTP/1.1 and HTTP/2, ``openssl s_client`` with strict verification, and headless
Chromium, all verifying the node's certificate against the node's own CA
(state-dir/tls/ca.pem): the TLS session is end to end between the client and the node.
"""

from __future__ import annotations

import subprocess

from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.tls.selfsigned import ensure_certificate
from tests.e2e import harness
from tests.interop.netns import run

NAME = "www.e2e.test"


class CurlAndOpenSSLTests(SynchronousTestCase):
    def setUp(self) -> None:
        harness.require_tools(self, "curl", "openssl")
        self.funnel = harness.Funnel(self.addCleanup)
        self.node = self.funnel.add_node("home", [NAME])
        self.funnel.start()

    def test_curl_http1(self) -> None:
        result = self.funnel.curl(self.node, path="/hello/http1")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual((result.status, result.http_version), (200, "1.1"))
        self.assertIn(self.node.text, result.body)
        self.assertIn("path=/hello/http1", result.body)

    def test_curl_http2(self) -> None:
        """ALPN h2 is negotiated with the node (the relay passes ALPN through untouched)."""
        result = self.funnel.curl(self.node, path="/hello/h2", http2=True)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual((result.status, result.http_version), (200, "2"))
        self.assertIn(self.node.text, result.body)

    def test_curl_post_body_reaches_backend(self) -> None:
        result = self.funnel.curl(
            self.node, http2=True, extra=["--data-binary", "payload=through-the-funnel"]
        )
        self.assertEqual((result.returncode, result.status), (0, 200), result.stderr)
        self.assertIn("body=payload=through-the-funnel", result.body)

    def test_curl_rejects_a_foreign_ca(self) -> None:
        """Verification is real: another funnel-tw CA (same subject name) is not trusted."""
        other = self.funnel.dir / "other-ca"
        ensure_certificate(other, (NAME,))
        result = self.funnel.curl(self.node, extra=["--cacert", str(other / "ca.pem")])
        self.assertEqual(result.returncode, 60, result.stderr)  # CURLE_PEER_FAILED_VERIFICATION
        self.assertNotIn(self.node.text, result.body)

    def _s_client(self, servername: str) -> subprocess.CompletedProcess[str]:
        port = self.funnel.public_port
        request = f"GET /via/openssl HTTP/1.1\r\nHost: {servername}\r\nConnection: close\r\n\r\n"
        return run(
            [
                "openssl",
                "s_client",
                "-connect",
                f"127.0.0.1:{port}",
                "-servername",
                servername,
                "-verify_hostname",
                servername,
                "-CAfile",
                str(self.node.ca),
                "-verify_return_error",
                "-ign_eof",
            ],
            input=request,
            timeout=20,
            check=False,
        )

    def test_openssl_s_client_verifies_and_fetches(self) -> None:
        proc = self._s_client(NAME)
        self.assertEqual(proc.returncode, 0, proc.stdout[-2000:] + proc.stderr)
        self.assertIn("Verify return code: 0 (ok)", proc.stdout)
        self.assertIn("HTTP/1.1 200", proc.stdout)
        self.assertIn(self.node.text, proc.stdout)
        self.assertIn("path=/via/openssl", proc.stdout)

    def test_openssl_s_client_unknown_name_is_closed_by_the_relay(self) -> None:
        proc = self._s_client("nobody.e2e.test")
        self.assertNotEqual(proc.returncode, 0)
        self.assertNotIn(self.node.text, proc.stdout)
        # closed before any server byte: no certificate, not even a TLS alert
        self.assertIn("no peer certificate available", proc.stdout)
        self.assertIn("SSL handshake has read 0 bytes", proc.stdout)

    def test_trailing_dot_server_name_is_the_same_name(self) -> None:
        """SNI "www.e2e.test." (a trailing dot, which RFC 6066 does not allow): the relay and
        the node both read it as "www.e2e.test", so it is served, and nothing in the node's
        log is a traceback (refusing an SNI used to raise inside pyOpenSSL's callback)."""
        assert self.node.daemon is not None
        offset = self.node.daemon.log_size()
        proc = self._s_client(NAME + ".")
        # the node completed the handshake with the name's certificate (openssl's own
        # hostname check then rejects the dotted name on the client side, as it should)
        self.assertIn(f"0 s:CN = {NAME}", proc.stdout)
        self.assertIn("New, TLSv1.3", proc.stdout)
        self.assertNotIn("Traceback", self.node.daemon.log()[offset:])


class ChromiumTests(SynchronousTestCase):
    def setUp(self) -> None:
        harness.ensure_chromium(self)
        self.funnel = harness.Funnel(self.addCleanup)
        self.node = self.funnel.add_node("home", [NAME])
        self.funnel.start()

    def test_headless_chromium_renders_the_backend_page(self) -> None:
        leaf = harness.leaf_certificate(self.node.leaf_pem)
        spki = harness.spki_sha256_b64(leaf)
        url = f"https://{NAME}:{self.funnel.public_port}/from/chromium"
        proc = harness.chromium_dump_dom(url, NAME, spki, self.funnel.dir)
        dom = proc.stdout
        self.assertIn(self.node.text, dom, f"exit {proc.returncode}\n{proc.stderr[-3000:]}")
        self.assertIn("path=/from/chromium", dom)
        # the page's script ran in the browser, on the https origin it was loaded from
        self.assertIn(f"script ran: https://{NAME}:{self.funnel.public_port}", dom)
