"""The node's peerAPI: an HTTP server on the overlay, answering /v0/ingress."""
