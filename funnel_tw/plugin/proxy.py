"""Proxy a flow to a TCP backend: the building block of the node's own tcp-forward, for
plugins.

``BackendProxy`` is the flow's protocol: when the flow starts it connects to the backend
(with a timeout), then splices both ways with backpressure (:mod:`funnel_tw.web.splice`: a
slow reader pauses the other side's reads), passes half-closes on, and bounds every close
(:mod:`funnel_tw.web.closing`). With ``idle_timeout``, a flow that moves no byte either way
for that long is aborted: that includes a stalled one, a client that stopped reading while
the backend still has data (both sides are paused then, so nothing moves).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import endpoints
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..flow import Flow
from ..web import splice
from ..web.factories import OneProtocolFactory

__all__ = ["BackendProxy", "proxy_to"]

_log = Logger()


class BackendProxy(splice.SpliceEnd):
    """The client end of a proxy to ``host:port``; the backend end is made when it starts."""

    def __init__(
        self,
        reactor: Any,
        target: tuple[str, int],
        *,
        flow: Flow | None = None,
        connect_timeout: float = 10.0,
        idle_timeout: float | None = None,
        prelude: bytes = b"",
        log: Logger | None = None,
        on_done: Callable[[BackendProxy, Failure], None] | None = None,
    ) -> None:
        super().__init__("client")
        self.reactor = reactor
        self.clock = reactor
        self.target = target
        self.flow = flow
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.prelude = prelude  # written to the backend first (a PROXY header, a hello)
        self.log = log or _log
        self.backend = splice.SpliceEnd("backend")
        self.backend.clock = reactor
        self.connected_backend = False
        self.last_activity = 0.0
        self._idle_call: IDelayedCall | None = None
        self._on_done = on_done
        self.on_lost = self._lost

    def connectionMade(self) -> None:
        host, port = self.target
        self.last_activity = self.reactor.seconds()
        if self.idle_timeout is not None:
            self.on_activity = self.backend.on_activity = self._active
            self._idle_call = self.reactor.callLater(self.idle_timeout, self._check_idle)
        endpoint = endpoints.HostnameEndpoint(
            self.reactor, host, port, timeout=self.connect_timeout
        )
        d = endpoint.connect(OneProtocolFactory(self.backend))
        d.addCallbacks(self._connected, self._failed)

    def _connected(self, _: Any) -> None:
        self.connected_backend = True
        if self.lost:  # the client went while we connected
            self.backend.transport.abortConnection()
            return
        self.backend.transport.setTcpNoDelay(True)
        if self.prelude:
            self.backend.transport.write(self.prelude)
        splice.join(self, self.backend)

    def _failed(self, failure: Failure) -> None:
        self.log.info(
            "backend {host}:{port} unreachable{flow_text}: {error}",
            host=self.target[0],
            port=self.target[1],
            flow_text=f" for flow {self.flow.id}" if self.flow is not None else "",
            error=failure.getErrorMessage(),
        )
        if not self.lost and self.transport is not None:
            self.transport.unregisterProducer()
            self.close()

    def _active(self) -> None:
        self.last_activity = self.reactor.seconds()

    def _check_idle(self) -> None:
        self._idle_call = None
        assert self.idle_timeout is not None
        left = self.last_activity + self.idle_timeout - self.reactor.seconds()
        if left > 0:
            self._idle_call = self.reactor.callLater(left, self._check_idle)
            return
        self.log.info(
            "flow {flow} idle (or stalled) for {seconds}s: aborted",
            flow=self.flow.id if self.flow is not None else "-",
            seconds=self.idle_timeout,
        )
        self.abort()

    def abort(self) -> None:
        """Reset both sides now: nothing more is sent or waited for."""
        for end in (self, self.backend):
            if end.transport is not None and not end.lost:
                end.transport.abortConnection()

    def _lost(self, reason: Failure) -> None:
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None
        # not joined yet: the splice cannot pass the loss on
        joined = self.connected_backend and self.backend.other is not None
        if not joined and self.backend.transport is not None and not self.backend.lost:
            self.backend.transport.abortConnection()
        if self._on_done is not None:
            done, self._on_done = self._on_done, None
            done(self, reason)


def proxy_to(
    context: Any,
    target: tuple[str, int],
    flow: Flow | None = None,
    *,
    connect_timeout: float = 10.0,
    idle_timeout: float | None = 300.0,
    prelude: bytes = b"",
    on_done: Callable[[BackendProxy, Failure], None] | None = None,
) -> BackendProxy:
    """A flow protocol proxying to ``target``, with ``context``'s reactor and logger."""
    return BackendProxy(
        context.reactor,
        target,
        flow=flow,
        connect_timeout=connect_timeout,
        idle_timeout=idle_timeout,
        prelude=prelude,
        log=context.log,
        on_done=on_done,
    )
