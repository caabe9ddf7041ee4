"""funnel-tw: a self-hosted Tailscale-Funnel-compatible node and relay on Twisted."""

__version__ = "0.1.0.dev0"
