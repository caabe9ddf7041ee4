"""twistd plugins for funnel-tw. Only ServiceMakers here: the modules load when used."""

from twisted.application.service import ServiceMaker

funnel = ServiceMaker(
    "funnel-tw node",
    "funnel_tw.node.tap",
    "A funnel-tw node: serve local services through a funnel relay",
    "funnel",
)
funnel_relay = ServiceMaker(
    "funnel-tw relay",
    "funnel_tw.relay.tap",
    "A funnel-tw relay: route public TLS by SNI to nodes over WireGuard",
    "funnel-relay",
)
