"""The ``echo`` handler: greet each client with what the node knows about the flow, then echo
every line back.

Configured in node.ini::

    [serve 10000]
    funnel = yes
    handler = echo
    greeting = hi          ; optional, one line of text
    terminate-tls = yes    ; optional, default yes: the node ends TLS, we see plaintext
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.interfaces import IProtocol
from twisted.plugin import IPlugin
from twisted.protocols.basic import LineOnlyReceiver
from zope.interface import implementer

from funnel_tw.serve.interfaces import Flow, IIngressHandler, IIngressHandlerFactory

DEFAULT_GREETING = "hello from funnel-tw echo"
MAX_GREETING = 200
MAX_LINE = 64 * 1024  # a longer line closes the connection: memory stays bounded

_TRUE = frozenset({"yes", "true", "on", "1"})
_FALSE = frozenset({"no", "false", "off", "0"})


def describe_flow(flow: Flow) -> str:
    """``203.0.113.5:51234 -> node.example.com:10000 (funnel via relay)``."""
    ip, port = flow.client
    client = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    how = "funnel" if flow.funnel else "tailnet"
    via = f" via {flow.peer}" if flow.peer else ""
    return f"{client} -> {flow.host}:{flow.port} ({how}{via})"


class EchoProtocol(LineOnlyReceiver):
    """Writes the greeting line, then sends every line it receives straight back."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    transport: Any

    def __init__(self, greeting: str, flow: Flow) -> None:
        self.greeting = greeting
        self.flow = flow
        self.paced = False

    def connectionMade(self) -> None:
        self.sendLine(f"{self.greeting} {describe_flow(self.flow)}".encode())

    def dataReceived(self, data: bytes) -> None:
        if not self.paced:
            # Backpressure: every byte we send comes from what we read, so the transport is
            # its own producer. When the client reads slower than it sends, the write buffer
            # fills, the transport pauses its producer (itself) and we stop reading until the
            # client catches up: nothing is buffered without bound.
            # Registered on the first data, not in connectionMade: until the TLS handshake is
            # done, the node's TLS layer pauses a registered producer while it holds our
            # greeting, and a transport paused that way would never read the handshake.
            self.paced = True
            self.transport.registerProducer(self.transport, True)
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        self.sendLine(line)  # a "\r" before the "\n" stays part of the line, so it comes back

    def lineLengthExceeded(self, line: bytes) -> None:
        self.close()

    def close(self) -> None:
        # With a producer registered, a TLS transport waits for it to go before it closes.
        if self.paced:
            self.transport.unregisterProducer()
            self.paced = False
        self.transport.loseConnection()


@implementer(IIngressHandler)
class EchoHandler:
    """One configured ``[serve PORT] handler = echo`` section."""

    def __init__(self, greeting: str = DEFAULT_GREETING, terminate_tls: bool = True) -> None:
        self.greeting = greeting
        self.terminate_tls = terminate_tls

    def build_protocol(self, flow: Flow) -> IProtocol | None:
        return EchoProtocol(self.greeting, flow)

    def __repr__(self) -> str:
        return f"EchoHandler(greeting={self.greeting!r}, terminate_tls={self.terminate_tls})"


def _greeting(value: str) -> str:
    if not value.strip():
        raise ValueError("greeting: must not be empty")
    if len(value) > MAX_GREETING:
        raise ValueError(f"greeting: longer than {MAX_GREETING} characters")
    if not value.isprintable():
        raise ValueError("greeting: must be one line of printable text")
    return value


def _yes_no(key: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValueError(f"{key}: {value!r} is not yes or no")


@implementer(IPlugin, IIngressHandlerFactory)
class EchoHandlerFactory:
    """What ``twisted.plugin.getPlugins(IIngressHandlerFactory)`` finds: the ``echo`` kind.

    ``IPlugin`` is not optional: twisted.plugin skips module-level objects that do not
    provide it, silently, whatever else they provide.
    """

    name = "echo"
    options = ("greeting", "terminate-tls")

    def create(self, options: Mapping[str, str]) -> IIngressHandler:
        """Check every option now, at configuration load, and build the handler."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(
                f"unknown option {unknown[0]!r} for handler echo (known: {', '.join(self.options)})"
            )
        greeting = _greeting(options.get("greeting", DEFAULT_GREETING))
        terminate_tls = _yes_no("terminate-tls", options.get("terminate-tls", "yes"))
        return EchoHandler(greeting, terminate_tls)
