"""The certificate store's SNI decision, driven by handshakes over memory BIOs (no reactor).

The class under test: which handshakes complete for a configured name with a certificate, a
configured name that has none yet (first issue, or a name added later) with and without a
pending tls-alpn-01 challenge, and a name the node does not serve.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from OpenSSL import SSL
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.tls.challenges import ACME_IDENTIFIER_OID, tls_alpn_certificate
from funnel_tw.tls.pem import load_combined
from funnel_tw.tls.selfsigned import ensure_certificate
from funnel_tw.tls.store import ACME_ALPN, Certificate, CertificateStore

OLD = "old.example.com"
ADDED = "added.example.com"
KEY_AUTHZ = "token.thumbprint"


def handshake(
    store: CertificateStore, name: str, alpn: list[bytes]
) -> tuple[bool, bytes | None, x509.Certificate | None]:
    """(completed, negotiated ALPN, the server's certificate) for one client handshake."""
    server = store.creator().serverConnectionForTLS(None)
    server.set_accept_state()
    client_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if alpn:
        client_ctx.set_alpn_protos(alpn)
    client = SSL.Connection(client_ctx, None)
    client.set_tlsext_host_name(name.encode())
    client.set_connect_state()
    for _ in range(10):
        for one, other in ((client, server), (server, client)):
            try:
                one.do_handshake()
            except SSL.WantReadError:
                pass
            except SSL.Error:
                return False, None, None
            try:
                data = one.bio_read(65536)
            except SSL.WantReadError:
                continue
            other.bio_write(data)
        try:
            client.do_handshake()
            server.do_handshake()
        except (SSL.WantReadError, SSL.Error):
            continue
        peer = client.get_peer_certificate()
        return True, client.get_alpn_proto_negotiated(), peer.to_cryptography() if peer else None
    return False, None, None


class AddedHostnameTests(SynchronousTestCase):
    """A node that has a certificate for OLD and is now also configured for ADDED."""

    def setUp(self) -> None:
        self.store = CertificateStore([OLD, ADDED])
        key, chain = load_combined(ensure_certificate(Path(self.mktemp()), (OLD,)))
        self.store.install(Certificate(key, chain, source="test"))

    def test_validator_for_the_added_name_gets_the_challenge_certificate(self) -> None:
        key, cert = tls_alpn_certificate(ADDED, KEY_AUTHZ)
        self.store.set_challenge(ADDED, key, cert)
        done, alpn, served = handshake(self.store, ADDED, [ACME_ALPN])
        self.assertTrue(done)
        self.assertEqual(alpn, ACME_ALPN)
        assert served is not None
        self.assertTrue(served.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID).critical)
        self.assertEqual(self.store.counters.get("tls_alpn_01_answered"), 1)

    def test_trailing_dot_and_case_reach_the_challenge(self) -> None:
        key, cert = tls_alpn_certificate(ADDED, KEY_AUTHZ)
        self.store.set_challenge(ADDED, key, cert)
        done, alpn, _ = handshake(self.store, "Added.Example.com.", [ACME_ALPN])
        self.assertTrue(done)
        self.assertEqual(alpn, ACME_ALPN)

    def test_browsers_get_no_challenge_certificate(self) -> None:
        key, cert = tls_alpn_certificate(ADDED, KEY_AUTHZ)
        self.store.set_challenge(ADDED, key, cert)
        for offered in ([b"h2", b"http/1.1"], []):
            done, _, served = handshake(self.store, ADDED, offered)
            self.assertFalse(done, offered)
            self.assertIsNone(served)

    def test_without_a_challenge_the_added_name_is_refused_and_counted(self) -> None:
        done, _, _ = handshake(self.store, ADDED, [ACME_ALPN])
        self.assertFalse(done)
        self.assertEqual(self.store.counters.get("tls_no_certificate"), 1)
        self.assertIsNone(self.store.counters.get("tls_unknown_server_name"))

    def test_an_unserved_name_stays_refused_even_with_acme_alpn(self) -> None:
        key, cert = tls_alpn_certificate("other.example.com", KEY_AUTHZ)
        self.store.set_challenge("other.example.com", key, cert)
        done, _, _ = handshake(self.store, "other.example.com", [ACME_ALPN])
        self.assertFalse(done)
        self.assertEqual(self.store.counters.get("tls_unknown_server_name"), 1)

    def test_the_old_name_is_served_as_before(self) -> None:
        done, alpn, served = handshake(self.store, OLD, [b"h2", b"http/1.1"])
        self.assertTrue(done)
        self.assertEqual(alpn, b"h2")
        assert served is not None
        self.assertIn(
            x509.DNSName(OLD),
            list(served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value),
        )

    def test_challenge_cleared_refuses_again(self) -> None:
        key, cert = tls_alpn_certificate(ADDED, KEY_AUTHZ)
        self.store.set_challenge(ADDED, key, cert)
        self.store.clear_challenge(ADDED)
        done, _, _ = handshake(self.store, ADDED, [ACME_ALPN])
        self.assertFalse(done)


class IdleMemoryTests(SynchronousTestCase):
    def test_served_contexts_release_idle_buffers(self) -> None:
        """An idle TLS connection gives its record buffers back (bench/idle.py: the node's
        memory per idle connection went from about 64 to 41 KiB with this mode)."""
        store = CertificateStore([OLD])
        key, chain = load_combined(ensure_certificate(Path(self.mktemp()), (OLD,)))
        cert = Certificate(key, chain, source="test")
        store.install(cert)
        for alpn in ((b"h2", b"http/1.1"), (b"http/1.1",), ()):
            mode = cert.context(alpn, store).set_mode(0)  # set_mode returns the mode in force
            self.assertTrue(mode & SSL.MODE_RELEASE_BUFFERS, alpn)
        self.assertEqual(handshake(store, OLD, [b"http/1.1"])[:2], (True, b"http/1.1"))
