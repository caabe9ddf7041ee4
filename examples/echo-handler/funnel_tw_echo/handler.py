"""The ``echo`` handler: greet each client with what the node knows about the flow, then echo
every line back.

Configured in node.ini::

    [serve 10000]
    funnel = yes
    handler = echo
    greeting = hi          ; optional, one line of text
    terminate-tls = yes    ; optional, default yes: the node ends TLS, we see plaintext
    idle-timeout = 300     ; optional: a client that sends nothing (or stalls) this long goes
    max-clients = 100      ; optional: more at once are refused ("too-many-clients")
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.interfaces import IProtocol
from twisted.plugin import IPlugin
from twisted.protocols.basic import LineOnlyReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from funnel_tw.plugin import Flow, HandlerContext, IHandlerPlugin, IIngressHandler, Refused
from funnel_tw.plugin import options as opt

DEFAULT_GREETING = "hello from funnel-tw echo"
MAX_LINE = 64 * 1024  # a longer line closes the connection: memory stays bounded


def describe_flow(flow: Flow) -> str:
    """``203.0.113.5:51234 -> node.example.com:10000 (funnel via relay)``."""
    ip, port = flow.client
    client = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    how = "funnel" if flow.funnel else "tailnet"
    via = f" via {flow.peer}" if flow.peer else ""
    return f"{client} -> {flow.host}:{flow.port} ({how}{via})"


class EchoProtocol(LineOnlyReceiver, TimeoutMixin):
    """Writes the greeting line, then sends every line it receives straight back."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    transport: Any

    def __init__(self, handler: EchoHandler, flow: Flow) -> None:
        self.handler = handler
        self.flow = flow
        self.paced = False
        self.callLater = handler.context.reactor.callLater  # TimeoutMixin: the node's reactor

    def connectionMade(self) -> None:
        self.handler.clients.inc()
        self.setTimeout(self.handler.idle_timeout)
        # Backpressure: every byte we send comes from what we read, so the transport is its
        # own producer. When the client reads slower than it sends, the write buffer fills,
        # the transport pauses its producer (itself) and we stop reading until the client
        # catches up: nothing is buffered without bound. (With terminate-tls the node
        # connects us only once the TLS handshake is done, so registering here is safe.)
        self.paced = True
        self.transport.registerProducer(self.transport, True)
        self.sendLine(f"{self.handler.greeting} {describe_flow(self.flow)}".encode())

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        self.handler.lines.inc()
        self.sendLine(line)  # a "\r" before the "\n" stays part of the line, so it comes back

    def lineLengthExceeded(self, line: bytes) -> None:
        self.close()

    def timeoutConnection(self) -> None:
        # Idle, or stalled: a client that stopped reading pauses us (no data comes in), and a
        # graceful close would wait on the bytes it does not read. Abort: nothing is owed.
        self.handler.context.log.info("flow {flow} idle: aborted", flow=self.flow.id)
        self._unpace()
        self.transport.abortConnection()

    def close(self) -> None:
        # With a producer registered, a TLS transport waits for it to go before it closes.
        self._unpace()
        self.transport.loseConnection()

    def _unpace(self) -> None:
        if self.paced:
            self.transport.unregisterProducer()
            self.paced = False

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.setTimeout(None)
        self.handler.clients.dec()


@implementer(IIngressHandler)
class EchoHandler:
    """One configured ``[serve PORT] handler = echo`` section."""

    def __init__(self, options: Mapping[str, Any], context: HandlerContext) -> None:
        self.greeting: str = options["greeting"]
        self.terminate_tls: bool = options["terminate-tls"]
        self.idle_timeout: float = options["idle-timeout"]
        self.max_clients: int = options["max-clients"]
        self.context = context
        self.lines = context.metrics.counter("lines", "lines echoed")
        self.clients = context.metrics.gauge("clients", "clients connected now")

    def build_protocol(self, flow: Flow) -> IProtocol | None:
        if self.clients.value >= self.max_clients:
            raise Refused("too-many-clients")
        return EchoProtocol(self, flow)

    def __repr__(self) -> str:
        return f"EchoHandler(greeting={self.greeting!r}, terminate_tls={self.terminate_tls})"


@implementer(IPlugin, IHandlerPlugin)
class EchoPlugin:
    """What ``twisted.plugin.getPlugins(IHandlerPlugin)`` finds: the ``echo`` kind.

    ``IPlugin`` is not optional: twisted.plugin skips module-level objects that do not
    provide it, silently, whatever else they provide.
    """

    name = "echo"
    schema = (
        opt.string("greeting", DEFAULT_GREETING, max_length=200, help="the first line sent"),
        opt.boolean("terminate-tls", True, help="the node ends TLS; we see plaintext"),
        opt.seconds("idle-timeout", 300.0, help="abort a flow that sends nothing this long"),
        opt.integer("max-clients", 100, low=1, high=100_000, help="more are refused"),
    )

    def build(self, options: Mapping[str, Any], context: HandlerContext) -> IIngressHandler:
        return EchoHandler(options, context)
