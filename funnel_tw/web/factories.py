"""OneProtocolFactory: a Factory for a protocol that exists before its connection does.

Endpoints and TLS wrappers take a factory, but a splice end, a hijacked stream or a TLS
wrapper's inner protocol is built first (it has state to carry) and only then connected.
"""

from __future__ import annotations

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol


class OneProtocolFactory(Factory):
    """Hands its one prebuilt protocol to the connection it is used for (use it once)."""

    noisy = False  # no "Starting factory" / "Stopping factory" per connection

    def __init__(self, prebuilt: Protocol) -> None:
        self.prebuilt = prebuilt

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return self.prebuilt
