"""Only the optional C extensions; everything else is in setup.cfg.

``optional=True``: without a C compiler (or, for ``_transport``, without OpenSSL's headers:
Debian's libssl-dev) the install goes on, and funnel_tw/netstack/checksum.py and
funnel_tw/wireguard/transport_key.py fall back to their pure-Python code
(docs/performance.md, "Compiled fast path" and lever 13).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "funnel_tw.netstack._checksum",
            ["funnel_tw/netstack/_checksum.c"],
            optional=True,
        ),
        Extension(
            "funnel_tw.wireguard._transport",
            ["funnel_tw/wireguard/_transport.c"],
            libraries=["crypto"],
            optional=True,
        ),
    ]
)
