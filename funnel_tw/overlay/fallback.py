"""The node's TCP fallback: when UDP to a relay fails, carry WireGuard over TLS to port 443.

One :class:`TCPFallback` per relay peer that has an endpoint (``tcp-fallback`` in its
``[peer]`` section). Once a second it looks at the peer:

- on UDP, a peer is failing when a handshake has been retried for ``after`` seconds, or none
  ever completed since start, or nothing authenticated came from it for ``stale`` seconds.
  Then it dials the relay's public port with TLS and ALPN ``funnel-wg/1`` (overlay/stream.py),
  points the peer's endpoint at the link and starts a handshake through it;
- on the link, it probes UDP every ``probe_every`` seconds (doubling up to ten times that
  while UDP stays blocked) with a handshake initiation sent over UDP only. If the relay answers
  over UDP, WireGuard's roaming moves the peer back to UDP, and the link is closed.

A link that breaks puts the peer back on UDP; the next failure opens a new one, with a
backoff on failed dials. The relay needs nothing but a public port (relay/fallback.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet import protocol, task
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..wireguard.device import Device, Peer
from .stream import ALPN, StreamLink, is_stream_address
from .tunnel import Tunnel, display_endpoint
from .udp import Address

log = Logger()

POLL = 1.0
AFTER = 5.0  # failing UDP this long (a handshake unanswered: REKEY_TIMEOUT) dials the link
STALE = 75.0  # nothing from the peer this long (3 keepalives of 25 s) is a failing path
# how often UDP is tried again from the link; FUNNEL_TW_FALLBACK_PROBE (seconds) shortens it
# for tests that lift a UDP block
SESSION = 180.0  # WireGuard's Reject-After-Time: a handshake older than this is no session
PROBE_EVERY = float(os.environ.get("FUNNEL_TW_FALLBACK_PROBE", "60"))
CONNECT_TIMEOUT = 10.0
MAX_BACKOFF = 30.0


def client_options() -> CertificateOptions:
    """TLS for the link. The relay's certificate is not checked, on purpose: the link carries
    WireGuard datagrams, which the two WireGuard keys authenticate and seal end to end; TLS is
    there so the connection looks like HTTPS to middleboxes on port 443."""
    return CertificateOptions(
        verify=False, acceptableProtocols=[ALPN], raiseMinimumTo=TLSVersion.TLSv1_2
    )


class TCPFallback:
    """Watches one relay peer and moves it to a TCP link and back as UDP fails and recovers."""

    def __init__(
        self,
        reactor: Any,
        tunnel: Callable[[], Tunnel | None],
        device: Device,
        peer: Peer,
        target: tuple[str, int],
        *,
        after: float = AFTER,
        stale: float = STALE,
        probe_every: float = PROBE_EVERY,
    ) -> None:
        self.reactor = reactor
        self.tunnel = tunnel
        self.device = device
        self.peer = peer
        self.target = target
        self.after = after
        self.stale = stale
        self.probe_every = probe_every
        self.udp_endpoint: Address | None = peer.endpoint
        self.link: StreamLink | None = None
        self.connecting = False
        self.failures = 0
        self.retry_at = 0.0
        self.started = 0.0
        self.trying_since: float | None = None
        self.last_rx = (0.0, -1)  # (when, peer.rx_bytes then)
        self.next_probe = 0.0
        self.probe_interval = probe_every
        self.counters = {"links": 0, "link_failures": 0, "back_to_udp": 0, "probes": 0}
        self._loop: task.LoopingCall | None = None
        self._connector: Any = None

    @property
    def mode(self) -> str:
        """``udp``, ``tcp`` (on the link) or ``connecting``: for status."""
        if self.link is not None:
            return "tcp"
        return "connecting" if self.connecting else "udp"

    def start(self) -> None:
        self.started = self.reactor.seconds()
        self.last_rx = (self.started, self.peer.rx_bytes)
        self._loop = task.LoopingCall(self.poll)
        self._loop.clock = self.reactor
        self._loop.start(POLL, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._connector is not None:
            self._connector.disconnect()
        if self.link is not None:
            self.link.close("the node is stopping")

    # --- the watch -------------------------------------------------------------------------

    def poll(self) -> None:
        now = self.reactor.seconds()
        peer = self.peer
        if peer.rx_bytes != self.last_rx[1]:
            self.last_rx = (now, peer.rx_bytes)
        if self.link is None:
            if self._udp_failing(now) and not self.connecting and now >= self.retry_at:
                self._dial(now)
            return
        endpoint = peer.endpoint
        if endpoint is not None and not is_stream_address(endpoint):
            # the relay answered a probe over UDP and roaming moved the peer back
            self.counters["back_to_udp"] += 1
            log.info(
                "UDP to {peer} works again ({endpoint}): leaving the TCP fallback",
                peer=peer.name,
                endpoint=display_endpoint(endpoint),
            )
            self.link.close("back on UDP")
        elif now >= self.next_probe and self._settled(now):
            self._probe(now)

    def _udp_failing(self, now: float) -> bool:
        peer = self.peer
        if peer.handshake_attempts > 0 or peer.last_handshake is None:
            if self.trying_since is None:
                self.trying_since = now
            return now - self.trying_since >= self.after
        self.trying_since = None
        return now - self.last_rx[0] >= self.stale

    def _settled(self, now: float) -> bool:
        """A session is up through the link and no handshake is under way (a probe would
        replace it)."""
        peer = self.peer
        return (
            peer.handshake_attempts == 0
            and peer.last_handshake is not None
            and now - peer.last_handshake < SESSION
        )

    def _probe(self, now: float) -> None:
        tunnel = self.tunnel()
        if tunnel is None or self.udp_endpoint is None:
            return
        if self.device.probe(self.peer, self.udp_endpoint, now):
            self.counters["probes"] += 1
            tunnel.after_work()
            self.next_probe = now + self.probe_interval
            self.probe_interval = min(self.probe_interval * 2, self.probe_every * 10)
        else:
            self.next_probe = now + POLL

    # --- the link --------------------------------------------------------------------------

    def _dial(self, now: float) -> None:
        host, port = self.target
        self.connecting = True
        log.info(
            "no WireGuard session with {peer} over UDP ({endpoint}) for {t:.0f} s: trying the "
            "TCP fallback to {host}:{port}",
            peer=self.peer.name,
            endpoint=display_endpoint(self.udp_endpoint),
            t=now - (self.trying_since or self.last_rx[0]),
            host=host,
            port=port,
        )
        link = StreamLink(self.reactor, f"{host}:{port}", self._deliver, self._opened, self._closed)
        factory = _LinkFactory(link, self._dial_failed)
        self._connector = self.reactor.connectSSL(
            host, port, factory, client_options(), timeout=CONNECT_TIMEOUT
        )

    def _dial_failed(self, reason: Failure) -> None:
        self.connecting = False
        self._connector = None
        self._backoff(f"cannot reach {self.target[0]}:{self.target[1]}: {reason.getErrorMessage()}")

    def _backoff(self, why: str) -> None:
        self.failures += 1
        self.counters["link_failures"] += 1
        delay = min(MAX_BACKOFF, 2.0 ** min(self.failures, 5))
        self.retry_at = self.reactor.seconds() + delay
        log.warn(
            "TCP fallback to {peer}: {why}; next try in {delay:.0f} s",
            peer=self.peer.name,
            why=why,
            delay=delay,
        )

    def _deliver(self, datagrams: list[bytes], address: Address) -> None:
        tunnel = self.tunnel()
        if tunnel is not None:
            tunnel.receive_stream(datagrams, address)

    def _opened(self, link: StreamLink) -> None:
        tunnel = self.tunnel()
        self.connecting = False
        self._connector = None
        if tunnel is None:
            link.close("WireGuard is not running")
            return
        self.link = link
        self.counters["links"] += 1
        tunnel.attach_stream(link.address, link)
        now = self.reactor.seconds()
        self.peer.endpoint = link.address
        self.device.handshake_now(self.peer, now)
        tunnel.after_work()
        self.probe_interval = self.probe_every
        self.next_probe = now + self.probe_interval
        log.info(
            "TCP fallback to {peer} open: WireGuard now goes over TLS to {host}:{port}",
            peer=self.peer.name,
            host=self.target[0],
            port=self.target[1],
        )

    def _closed(self, link: StreamLink, why: str) -> None:
        if self.link is not link:
            return
        self.link = None
        tunnel = self.tunnel()
        if tunnel is not None:
            tunnel.detach_stream(link.address)
        if self.peer.endpoint == link.address:
            self.peer.endpoint = self.udp_endpoint
        now = self.reactor.seconds()
        self.trying_since = None
        self.last_rx = (now, self.peer.rx_bytes)
        if why == "back on UDP":
            self.failures = 0
            return
        self._backoff(f"link closed: {why}")


class _LinkFactory(protocol.ClientFactory):
    noisy = False

    def __init__(self, link: StreamLink, failed: Callable[[Failure], None]) -> None:
        self.link = link
        self.failed = failed

    def buildProtocol(self, addr: Any) -> StreamLink:
        return self.link

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.failed(reason)
