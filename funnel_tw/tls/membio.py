"""Give back what a TLS connection's memory BIOs grew to.

Twisted runs OpenSSL over two memory BIOs per connection: the bytes from the network go into
one, the records to send come out of the other. A memory BIO keeps the capacity it grew to
after it has been emptied, for the life of the connection: the handshake leaves ~4 KiB
(ClientHello with its post-quantum key share, the server's certificate flight), one 16 KiB
record written leaves 16 KiB more, and a client that sent 64 KiB at once leaves 64 KiB. On a
node holding thousands of idle keep-alive connections that is most of what a connection costs
beyond OpenSSL's own state (bench/idle.py). :func:`release_buffers` swaps both BIOs for new,
empty ones, which frees the old; it does so only when both are empty, so no byte is lost.

pyOpenSSL has no API for it: this uses its ``_ssl``, ``_into_ssl`` and ``_from_ssl``
attributes and OpenSSL's ``SSL_set_bio`` (which frees the BIOs it replaces). When they are not
there (another pyOpenSSL), nothing is done.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL

try:
    from OpenSSL._util import ffi as _ffi
    from OpenSSL._util import lib as _lib
except ImportError:  # pragma: no cover - another pyOpenSSL layout
    _lib = None
    _ffi = None

__all__ = ["SUPPORTED", "input_waiting", "output_waiting", "pending", "release_buffers"]

_NEEDED = ("BIO_new", "BIO_s_mem", "BIO_get_mem_data", "SSL_set_bio")
SUPPORTED = _lib is not None and all(hasattr(_lib, name) for name in _NEEDED)
# where BIO_get_mem_data puts its pointer (never read): one for the process, as the reactor
# thread is the only caller
_DATA = _ffi.new("char **") if SUPPORTED and _ffi is not None else None


def _bios(conn: SSL.Connection) -> tuple[Any, Any, Any] | None:
    ssl = getattr(conn, "_ssl", None)
    into = getattr(conn, "_into_ssl", None)
    out = getattr(conn, "_from_ssl", None)
    if not SUPPORTED or ssl is None or into is None or out is None:
        return None  # a socket-backed connection, or pyOpenSSL's internals changed
    return ssl, into, out


def pending(conn: SSL.Connection) -> tuple[int, int] | None:
    """Bytes waiting in the (network -> OpenSSL, OpenSSL -> network) BIOs; None if unknown."""
    bios = _bios(conn)
    if bios is None:
        return None
    assert _lib is not None
    return _lib.BIO_get_mem_data(bios[1], _DATA), _lib.BIO_get_mem_data(bios[2], _DATA)


def input_waiting(conn: SSL.Connection) -> int | None:
    """Bytes in the network -> OpenSSL BIO not yet read by OpenSSL; None if unknown. The
    receive loop's question, asked per record: one attribute and one call."""
    return _held(conn, "_into_ssl")


def output_waiting(conn: SSL.Connection) -> int | None:
    """Bytes in the OpenSSL -> network BIO; None if unknown."""
    return _held(conn, "_from_ssl")


def _held(conn: SSL.Connection, name: str) -> int | None:
    bio = getattr(conn, name, None)
    if bio is None or _DATA is None:  # a socket-backed connection, or internals changed
        return None
    assert _lib is not None
    return int(_lib.BIO_get_mem_data(bio, _DATA))


def release_buffers(conn: SSL.Connection) -> bool:
    """Swap both memory BIOs of ``conn`` for empty ones, freeing what the old ones hold.
    False (nothing changed) when a byte is waiting in either, or it is not possible here.
    Not for a connection whose input was shut down (``bio_shutdown``): the new BIO would not
    carry that end of file."""
    bios = _bios(conn)
    if bios is None or pending(conn) != (0, 0):
        return False
    assert _lib is not None and _ffi is not None
    ssl = bios[0]
    into = _lib.BIO_new(_lib.BIO_s_mem())
    if into == _ffi.NULL:
        return False
    out = _lib.BIO_new(_lib.BIO_s_mem())
    if out == _ffi.NULL:
        _lib.BIO_free(into)
        return False
    _lib.SSL_set_bio(ssl, into, out)  # takes both; frees the two it replaces
    conn._into_ssl = into
    conn._from_ssl = out
    return True
