"""The request head the proxy builds for a backend (serve/proxy.py ``forwarded_pairs`` and
``request_head``), in memory: what passes, what is dropped, what the node adds."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from funnel_tw.flow import Flow
from funnel_tw.serve.proxy import forwarded_pairs, request_head

FLOW = Flow(client=("203.0.113.7", 5555), host="app.example", port=443, funnel=True, peer="relay")


def request(*headers: tuple[bytes, bytes]) -> DummyRequest:
    r = DummyRequest([b""])
    for name, value in headers:
        r.requestHeaders.addRawHeader(name, value)
    return r


class ForwardedTests(SynchronousTestCase):
    def test_what_passes_and_what_the_node_adds(self) -> None:
        pairs = forwarded_pairs(
            request(
                (b"Host", b"app.example"),
                (b"Accept", b"*/*"),
                (b"Set-Thing", b"a"),
                (b"Set-Thing", b"b"),
                (b"Connection", b"keep-alive, X-Hop"),
                (b"X-Hop", b"dropped: named by Connection"),
                (b"Keep-Alive", b"timeout=5"),
                (b"Content-Length", b"3"),
                (b"Transfer-Encoding", b"chunked"),
                (b"X-Forwarded-For", b"6.6.6.6"),
                (b"X_Real_IP", b"6.6.6.6"),
                (b"Expect", b"100-continue"),
            ),
            FLOW,
        )
        self.assertEqual(
            pairs,
            [
                (b"Host", b"app.example"),
                (b"Accept", b"*/*"),
                (b"Set-Thing", b"a"),
                (b"Set-Thing", b"b"),
                (b"X-Forwarded-Host", b"app.example"),
                (b"X-Forwarded-Proto", b"https"),
                (b"X-Forwarded-For", b"203.0.113.7"),
                (b"Tailscale-Funnel-Request", b"?1"),
            ],
        )

    def test_host_from_the_target_when_the_client_sent_none(self) -> None:
        pairs = forwarded_pairs(request(), FLOW, netloc="127.0.0.1:8080")
        self.assertEqual(pairs[0], (b"Host", b"127.0.0.1:8080"))
        self.assertNotIn(b"X-Forwarded-Host", [n for n, _ in pairs])

    def test_upgrade_keeps_its_headers(self) -> None:
        pairs = forwarded_pairs(
            request(
                (b"Host", b"h"),
                (b"Connection", b"Upgrade"),
                (b"Upgrade", b"websocket"),
                (b"Content-Length", b"0"),
            ),
            FLOW,
            keep_upgrade=True,
        )
        names = [n for n, _ in pairs]
        self.assertIn(b"Connection", names)
        self.assertIn(b"Upgrade", names)
        self.assertIn(b"Content-Length", names)

    def test_framing_headers_under_underscore_spellings_never_pass(self) -> None:
        """Even where a mount takes "_" in names: a backend folding "_" into "-" would
        frame a body the node never sent (request smuggling on a pooled connection)."""
        aliases = [b"Transfer_Encoding", b"content_length", b"Keep_Alive", b"Proxy_Connection"]
        pairs = forwarded_pairs(
            request((b"Host", b"h"), (b"X_Custom", b"kept"), *[(n, b"1") for n in aliases]),
            FLOW,
            underscores=True,
        )
        names = [n.lower() for n, _ in pairs]
        self.assertIn(b"x_custom", names)  # what the opt-in is for
        for name in aliases:
            self.assertNotIn(name.lower(), names)

    def test_head_bytes(self) -> None:
        head = request_head(b"GET", b"/a?b=c", [(b"Host", b"h"), (b"X-A", b"1")])
        self.assertEqual(head, b"GET /a?b=c HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n")
