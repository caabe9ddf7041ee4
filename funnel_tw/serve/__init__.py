"""Serve: what the node does with a flow, mirroring Tailscale's ServeConfig."""
