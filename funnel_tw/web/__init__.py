"""Twisted glue shared below serve, peerapi and relay: hijack, splice, factories, host:port."""
