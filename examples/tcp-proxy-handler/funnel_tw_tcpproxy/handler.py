"""The ``tcp-proxy`` handler: every flow proxied to one TCP backend, on funnel_tw's helper."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.interfaces import IProtocol
from twisted.plugin import IPlugin
from zope.interface import implementer

from funnel_tw.plugin import (
    Flow,
    HandlerContext,
    IHandlerPlugin,
    IIngressHandler,
    Refused,
    proxy_to,
)
from funnel_tw.plugin import options as opt


@implementer(IIngressHandler)
class TCPProxyHandler:
    def __init__(self, options: Mapping[str, Any], context: HandlerContext) -> None:
        self.options, self.context = options, context
        self.terminate_tls = options["terminate-tls"]
        self.active = context.metrics.gauge("active", "flows open now")
        self.proxied = context.metrics.counter("proxied", "flows proxied to the backend")

    def build_protocol(self, flow: Flow) -> IProtocol:
        if self.active.value >= self.options["max-clients"]:
            raise Refused("too-many-clients")
        self.active.inc()
        self.proxied.inc()
        return proxy_to(
            self.context,
            self.options["backend"],
            flow,
            connect_timeout=self.options["connect-timeout"],
            idle_timeout=self.options["idle-timeout"],
            on_done=lambda proxy, reason: self.active.dec(),
        )


@implementer(IPlugin, IHandlerPlugin)
class TCPProxyPlugin:
    name = "tcp-proxy"
    schema = (
        opt.host_port("backend", required=True, help="where each flow is proxied to"),
        opt.seconds("connect-timeout", 10.0, help="give up connecting to the backend after"),
        opt.seconds("idle-timeout", 300.0, help="abort a flow that moves nothing this long"),
        opt.integer("max-clients", 100, low=1, high=100_000, help="flows at once; more refused"),
        opt.boolean("terminate-tls", True, help="the node ends TLS: the backend gets plaintext"),
    )

    def validate(self, options: Mapping[str, Any]) -> None:
        if options["connect-timeout"] > options["idle-timeout"]:
            raise ValueError("connect-timeout is longer than idle-timeout")

    def build(self, options: Mapping[str, Any], context: HandlerContext) -> IIngressHandler:
        return TCPProxyHandler(options, context)
