"""Deadlines and bounds around a flow's TLS: the layer between the TLS session and the handler.

- TLS handshake: a client that has not completed it ``handshake_timeout`` seconds after the
  flow started is aborted, counted (``tls_handshake_timeout``) and logged.
- Closing: Twisted's TLS ``loseConnection`` waits for a registered producer (HTTP/2 never
  unregisters) and then for the client's close_notify, while still delivering the client's
  bytes to the handler: a client that keeps sending kept the connection, and everything it
  sent, for ever. Here a close unregisters the producer, everything the client sends after it
  is dropped unread, and the connection is aborted ``close_timeout`` seconds later at most.
- HTTP/2 (ALPN ``h2`` on an HTTPS site): the client's frames pass through
  :class:`~funnel_tw.web.h2watch.H2Watch` before h2 sees them; a violation is answered with
  GOAWAY and closes the connection; a header block open longer than the head deadline too.
- RFC 8737: a connection that negotiated ``acme-tls/1`` is closed right after its handshake
  and never reaches the handler.
- Memory: ``release_after`` seconds after a large chunk (the handshake, a 16 KiB record, a
  large upload) passed through the TLS layer, its memory BIOs are swapped for empty ones
  (:mod:`funnel_tw.tls.membio`): an idle connection keeps nothing of its largest moment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IProtocol,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from ..tls.membio import input_waiting, output_waiting, release_buffers
from ..tls.store import ACME_ALPN
from ..turn import TurnClock
from ..web.h2watch import H2Limits, H2Watch, Violation

# (counter, reason, server name or None): the dispatcher logs it with the flow and counts it
Report = Callable[[str, str, str | None], None]

LARGE_CHUNK = 2048  # bytes in or out at once that leave a BIO worth giving back


def server_name(transport: Any) -> str | None:
    """The SNI of a TLS transport, lower case; None without one."""
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return None
    try:
        name = get_handle().get_servername()
    except Exception:
        return None
    return name.decode("ascii", "replace").lower() if name else None


class GuardedTLS(BufferingTLSTransport):
    """TLS whose close cannot be held open by a producer or by the client (module docstring).
    Twisted's own default protocol underneath, small writes aggregated into one record."""

    factory: GuardedTLSFactory
    _close_timer: IDelayedCall | None = None
    _release_timer: IDelayedCall | None = None
    buffers_released = 0

    def _checkHandshakeStatus(self) -> None:
        done = self._handshakeDone
        super()._checkHandshakeStatus()
        if self._handshakeDone and not done:
            self._release_later()  # what the handshake's flights grew the BIOs to

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if len(data) >= LARGE_CHUNK:
            self._release_later()

    def _flushReceiveBIO(self) -> None:
        # Twisted's loop, without the two calls that end it for every record that arrives:
        # a last ``recv`` and a ``bio_read`` that only raise WantReadError (~2.5 µs each)
        # when OpenSSL holds no plaintext, no input is left in its BIO and none waits to go
        # out. Where pyOpenSSL's BIOs cannot be read (None), Twisted's calls.
        conn = self._tlsConnection
        while not self._lostTLSConnection:
            try:
                data = conn.recv(2**15)
            except WantReadError:
                break
            except ZeroReturnError:  # the client's close_notify
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except Error:
                self._tlsShutdownFinished(Failure())
            else:
                if not self._aborted:
                    ProtocolWrapper.dataReceived(self, data)
                if not conn.pending() and input_waiting(conn) == 0:
                    break  # nothing left for recv: it would raise WantReadError
        if output_waiting(conn) != 0:
            self._flushSendBIO()

    def _flushSendBIO(self) -> None:
        # Twisted's, plus noting a large chunk (its BIO keeps that capacity)
        try:
            data = self._tlsConnection.bio_read(2**15)
        except WantReadError:
            return
        transport: Any = self.transport
        transport.write(data)
        if len(data) >= LARGE_CHUNK:
            self._release_later()

    def _release_later(self) -> None:
        if self._release_timer is None and not self._lostTLSConnection:
            self._release_timer = self.factory.reactor.callLater(
                self.factory.release_after, self._release_buffers
            )

    def _release_buffers(self) -> None:
        self._release_timer = None
        if self.connected and not self._lostTLSConnection and release_buffers(self._tlsConnection):
            self.buffers_released += 1

    def loseConnection(self) -> None:
        if self.disconnecting or not self.connected:
            return
        self.unregisterProducer()  # data already written is still flushed before close_notify
        super().loseConnection()
        if self.connected and self._close_timer is None:
            self._close_timer = self.factory.reactor.callLater(
                self.factory.close_timeout, self._close_timed_out
            )

    def _close_timed_out(self) -> None:
        self._close_timer = None
        transport: Any = self.transport
        if self.connected and transport is not None:
            transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)  # may flush a last record: timers cancelled after it
        for timer in (self._close_timer, self._release_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._close_timer = self._release_timer = None


class GuardedTLSFactory(TLSMemoryBIOFactory):
    """One per kind of flow (certificate store, ALPN, client certificates), not per flow: a
    factory, its wrapped factory and its registry cost ~0.6 KiB, which a node holding
    thousands of idle connections paid for each (bench/idle.py)."""

    protocol = GuardedTLS

    def __init__(
        self,
        creator: Any,
        reactor: Any,
        close_timeout: float = 10.0,
        release_after: float = 1.0,
    ) -> None:
        # a connection's small writes wait for the turn's drain, not a timed call each
        super().__init__(creator, False, Factory(), clock=TurnClock(reactor))
        self.reactor = reactor
        self.close_timeout = close_timeout
        self.release_after = release_after

    def wrap(self, guard: FlowGuard) -> GuardedTLS:
        """The protocol that takes a flow's raw stream: TLS, then ``guard``, then its handler."""
        return self.protocol(self, guard)


@implementer(IHandshakeListener, IHalfCloseableProtocol)
class FlowGuard(Protocol):
    """Inside the TLS session, in front of the handler (module docstring)."""

    def __init__(
        self,
        inner: IProtocol,
        reactor: Any,
        report: Report,
        handshake_timeout: float = 10.0,
        h2_limits: H2Limits | None = None,
        head_timeout: float = 10.0,
    ) -> None:
        self.inner = inner
        self.reactor = reactor
        self.report = report
        self.handshake_timeout = handshake_timeout
        self.h2_limits = h2_limits  # None: no HTTP/2 watch (not an HTTPS site)
        self.head_timeout = head_timeout
        self.started = False  # the handler is connected only once the handshake is done
        self.watch: H2Watch | None = None
        self._handshake_timer: IDelayedCall | None = None
        self._head_timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self._handshake_timer = self.reactor.callLater(
            self.handshake_timeout, self._handshake_timed_out
        )

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        if self.transport is None or self.started:
            return
        self.report(
            "tls_handshake_timeout",
            f"TLS handshake not complete after {self.handshake_timeout:g} s",
            server_name(self.transport),
        )
        transport: Any = self.transport
        transport.abortConnection()

    def handshakeCompleted(self) -> None:
        self._cancel("_handshake_timer")
        transport: Any = self.transport
        protocol = getattr(transport, "negotiatedProtocol", None)
        if protocol == ACME_ALPN:
            transport.loseConnection()
            return
        if protocol == b"h2" and self.h2_limits is not None:
            self.watch = H2Watch(self.h2_limits, self.reactor.seconds())
        self.started = True
        self.inner.makeConnection(transport)
        listener = IHandshakeListener(self.inner, None)
        if listener is not None:
            listener.handshakeCompleted()

    def dataReceived(self, data: bytes) -> None:
        transport: Any = self.transport
        if not self.started or transport is None or transport.disconnecting:
            return  # closing: what the client still sends is dropped unread
        if self.watch is not None:
            violation = self.watch.feed(data, self.reactor.seconds())
            if violation is not None:
                self._refuse(violation)
                return
            self._track_head()
        self.inner.dataReceived(data)

    def _track_head(self) -> None:
        assert self.watch is not None
        if self.watch.block_since is None:
            self._cancel("_head_timer")
        elif self._head_timer is None:
            self._head_timer = self.reactor.callLater(self.head_timeout, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.watch is not None and self.transport is not None:
            self._refuse(self.watch.timed_out(self.head_timeout))

    def _refuse(self, violation: Violation) -> None:
        transport: Any = self.transport
        self._cancel("_head_timer")
        self.report(violation.counter, violation.reason, server_name(transport))
        transport.write(violation.goaway)
        transport.loseConnection()

    def _cancel(self, name: str) -> None:
        timer: IDelayedCall | None = getattr(self, name)
        if timer is not None and timer.active():
            timer.cancel()
        setattr(self, name, None)

    def readConnectionLost(self) -> None:
        half = IHalfCloseableProtocol(self.inner, None)
        if half is not None and self.started:
            half.readConnectionLost()
        elif self.transport is not None:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        half = IHalfCloseableProtocol(self.inner, None)
        if half is not None and self.started:
            half.writeConnectionLost()

    def connectionLost(self, reason: Any = None) -> None:
        self._cancel("_handshake_timer")
        self._cancel("_head_timer")
        if self.started:
            self.inner.connectionLost(reason)


def guarded_tls(creator: Any, guard: FlowGuard, reactor: Any, close_timeout: float) -> IProtocol:
    """TLS around one flow's guard with a factory of its own (tests; the dispatcher shares
    one :class:`GuardedTLSFactory` per kind of flow)."""
    return GuardedTLSFactory(creator, reactor, close_timeout).wrap(guard)
