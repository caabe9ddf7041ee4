"""The local API both daemons serve on ``<state-dir>/funnel-tw.sock``: address, server, client."""
