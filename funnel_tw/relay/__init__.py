"""The relay: routes public TLS connections by SNI to nodes over WireGuard."""
