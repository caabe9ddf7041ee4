"""Only the optional C extension; everything else is in setup.cfg.

``optional=True``: without a C compiler the install goes on, and funnel_tw/netstack/checksum.py
falls back to its pure-Python code (docs/performance.md, "Compiled fast path").
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "funnel_tw.netstack._checksum",
            ["funnel_tw/netstack/_checksum.c"],
            optional=True,
        )
    ]
)
