"""A node's serve stack with its peerAPI on loopback TCP, and a test front that plays the
relay's part (ingress request, 101, splice) so that curl and openssl can reach it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet.interfaces import IListeningPort
from twisted.trial.unittest import TestCase

from funnel_tw import keys
from funnel_tw.config import load_node_config
from funnel_tw.node.service import NodeService
from funnel_tw.relay.ingress import IngressClientEnd, ingress_request
from funnel_tw.web import splice
from tests._support import ProcessResult, curl, eventually, sleep

HOSTNAME = "node.example.com"


class _FrontEnd(splice.SpliceEnd):
    def __init__(self, front: Front) -> None:
        super().__init__("public")
        self.front = front

    def connectionMade(self) -> None:
        self.transport.pauseProducing()
        peer = self.transport.getPeer()
        request = ingress_request("peer", (peer.host, peer.port), self.front.target)
        node_end = IngressClientEnd(request, self._accepted, self._refused)
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.front.peerapi_port)
        endpoint.connect(_Once(node_end)).addErrback(lambda f: self.transport.loseConnection())

    def _accepted(self, node_end: IngressClientEnd) -> None:
        self.front.accepted += 1
        splice.join(self, node_end)
        self.transport.resumeProducing()

    def _refused(self, why: str) -> None:
        self.front.refusals.append(why)
        self.transport.loseConnection()


class _Once(protocol.Factory):
    def __init__(self, proto: protocol.Protocol) -> None:
        self.proto = proto

    def buildProtocol(self, addr: Any) -> Any:
        return self.proto


class Front(protocol.Factory):
    """Accepts public clients on loopback and asks the node to take each (target host:port)."""

    def __init__(self, peerapi_port: int, target: str) -> None:
        self.peerapi_port = peerapi_port
        self.target = target
        self.accepted = 0
        self.refusals: list[str] = []
        self.ends: list[_FrontEnd] = []

    def buildProtocol(self, addr: Any) -> Any:
        self.closed()  # forget the finished ones: a test with many clients measures memory
        end = _FrontEnd(self)
        self.ends.append(end)
        return end

    def closed(self) -> bool:
        """Whether every connection through this front has closed, on both sides."""
        self.ends = [e for e in self.ends if not (e.lost and (e.other is None or e.other.lost))]
        return not self.ends

    async def settle(self, timeout: float = 5.0) -> None:
        """Wait (bounded) until :meth:`closed`, then one more reactor turn for the node's side
        of each connection."""
        await eventually(self.closed, timeout)
        await sleep(0)


class ServeHarness:
    def __init__(self, test: TestCase, serve_sections: str, hostnames: str = HOSTNAME) -> None:
        self.test = test
        self.dir = Path(test.mktemp()).absolute()
        self.dir.mkdir()
        relay_pub = keys.encode_key(keys.public_key(keys.generate_private_key()))
        (self.dir / "node.ini").write_text(
            f"""[node]
private-key = {keys.encode_key(keys.generate_private_key())}
address = 100.64.0.2/32, fd7a:115c:a1e0::2/128
hostname = {hostnames}
state-dir = state

[peer relay]
public-key = {relay_pub}
allowed-ips = 100.64.0.1/32
funnel-ingress = yes

{serve_sections}
"""
        )
        self.config = load_node_config(self.dir / "node.ini")
        self.node = NodeService(self.config, reactor)
        # the peerAPI on loopback: every caller is the funnel-ingress relay
        self.node.ingress.caller_name = lambda ip: ("relay", True)
        self.node.certificates.start()
        test.addCleanup(self.node.certificates.stop)
        test.addCleanup(self.node.backends.close)
        self.peerapi: IListeningPort = reactor.listenTCP(
            0, self.node.peerapi_site, interface="127.0.0.1"
        )
        test.addCleanup(self.peerapi.stopListening)

    @property
    def ca_file(self) -> str:
        return str(self.config.state_dir / "tls" / "ca.pem")

    async def curl(self, port: int, path: str, *extra: str, max_time: int = 20) -> ProcessResult:
        """curl through a front on ``port``, trusting only the node's CA."""
        return await curl(HOSTNAME, port, path, *extra, ca_file=self.ca_file, max_time=max_time)

    def front(
        self,
        target_port: int,
        host: str = HOSTNAME,
        *,
        interface: str = "127.0.0.1",
        settle: bool = False,
    ) -> tuple[Front, int]:
        """A front for ``host:target_port`` listening on ``interface``; with ``settle``, the
        test's cleanup waits for its connections to close."""
        front = Front(self.peerapi.getHost().port, f"{host}:{target_port}")
        port = reactor.listenTCP(0, front, interface=interface)
        self.test.addCleanup(port.stopListening)
        if settle:
            self.test.addCleanup(lambda: defer.ensureDeferred(front.settle()))
        return front, port.getHost().port


__all__ = ["HOSTNAME", "Front", "ServeHarness", "defer"]
