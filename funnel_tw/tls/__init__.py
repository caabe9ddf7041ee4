"""Certificates for the node's hostnames and the TLS server contexts built from them."""
