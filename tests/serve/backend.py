"""Test backends for the reverse proxy: an HTTP app and a WebSocket echo server (wsproto)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from twisted.internet import protocol, reactor
from twisted.web import resource, server
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Message, Request, TextMessage


class EchoRequest(resource.Resource):
    """Answers with what it received: method, path, headers, body digest (streamed)."""

    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        body = request.content.read()
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"x-backend", b"yes")
        request.setHeader(b"proxy-authenticate", b"Basic")  # hop-by-hop: not for the client
        return json.dumps(
            {
                "method": request.method.decode(),
                "uri": request.uri.decode(),
                "headers": {
                    k.decode().lower(): [v.decode() for v in vs]
                    for k, vs in request.requestHeaders.getAllRawHeaders()
                },
                "bytes": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
            }
        ).encode()


class Download(resource.Resource):
    """GET /download/N: N bytes of a repeating pattern, written as the client reads them."""

    isLeaf = True
    written = 0  # bytes written by all downloads so far (tests check backpressure with it)

    def render_GET(self, request: server.Request) -> int:
        total = int(request.postpath[0]) if request.postpath and request.postpath[0] else 0
        request.setHeader(b"content-length", str(total).encode())
        chunk = bytes(range(256)) * 256  # 64 KiB

        class Producer:
            left = total
            paused = False

            def resumeProducing(self) -> None:
                self.paused = False
                while self.left > 0 and not self.paused:
                    n = min(len(chunk), self.left)
                    self.left -= n
                    Download.written += n
                    request.write(chunk[:n])
                if self.left <= 0 and not request.finished:
                    request.unregisterProducer()
                    request.finish()

            def pauseProducing(self) -> None:
                self.paused = True

            def stopProducing(self) -> None:
                self.left = 0

        producer = Producer()
        request.registerProducer(producer, True)
        reactor.callLater(0, producer.resumeProducing)
        return server.NOT_DONE_YET


class Chunked(resource.Resource):
    """GET /chunked: three pieces without a Content-Length (so Twisted sends them chunked)."""

    isLeaf = True

    def render_GET(self, request: server.Request) -> int:
        for piece in (b"one ", b"two ", b"three"):
            request.write(piece)
        request.finish()
        return server.NOT_DONE_YET


def backend_site() -> server.Site:
    root = resource.Resource()
    root.putChild(b"download", Download())
    root.putChild(b"chunked", Chunked())
    echo = EchoRequest()
    root.getChild = lambda name, request: echo  # type: ignore[method-assign]
    return server.Site(root)


class HungBackend(protocol.Protocol):
    """Accepts and never answers."""


class WebSocketEcho(protocol.Protocol):
    def connectionMade(self) -> None:
        self.ws = WSConnection(ConnectionType.SERVER)

    def dataReceived(self, data: bytes) -> None:
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, Request):
                self.transport.write(self.ws.send(AcceptConnection()))
            elif isinstance(event, TextMessage):
                self.transport.write(self.ws.send(Message(data="echo: " + event.data)))
            elif isinstance(event, CloseConnection):
                self.transport.write(self.ws.send(event.response()))
                self.transport.loseConnection()


def listen(factory: Any) -> Any:
    return reactor.listenTCP(0, factory, interface="127.0.0.1")
