"""SHA-256-crypt and SHA-512-crypt (``$5$`` / ``$6$``), as Ulrich Drepper's specification
(glibc crypt(3), Apache's ``htpasswd -2`` / ``-5``) defines them.

Python's ``crypt`` module is deprecated (gone in 3.13) and passlib is unmaintained, so the
verification is here, in the specification's words, tested against Apache's htpasswd output.
"""

from __future__ import annotations

import hashlib
import hmac
import re

__all__ = ["MAX_ROUNDS", "sha_crypt", "verify"]

_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_DEFAULT_ROUNDS = 5000
MIN_ROUNDS = 1000
MAX_ROUNDS = 10_000_000
"""More rounds than this is refused: the spec allows 999999999, a minute of CPU per guess."""
_HASH = re.compile(r"\$([56])\$(?:rounds=([0-9]{1,9})\$)?([^$:]{0,16})\$([./A-Za-z0-9]{43,86})\Z")
# the byte order of the final encoding: groups of three, then the odd ones out
_ORDER_256 = [
    (0, 10, 20), (21, 1, 11), (12, 22, 2), (3, 13, 23), (24, 4, 14),
    (15, 25, 5), (6, 16, 26), (27, 7, 17), (18, 28, 8), (9, 19, 29),
]  # fmt: skip
_ORDER_512 = [
    (0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26),
    (6, 27, 48), (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32),
    (12, 33, 54), (34, 55, 13), (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38),
    (18, 39, 60), (40, 61, 19), (62, 20, 41),
]  # fmt: skip


def _b64(b2: int, b1: int, b0: int, n: int) -> str:
    w = (b2 << 16) | (b1 << 8) | b0
    out = []
    for _ in range(n):
        out.append(_ALPHABET[w & 0x3F])
        w >>= 6
    return "".join(out)


def _repeat(block: bytes, length: int) -> bytes:
    return (block * (length // len(block) + 1))[:length]


def sha_crypt(password: bytes, salt: str, rounds: int | None, variant: str) -> str:
    """The full ``$5$...`` / ``$6$...`` string for a password, salt and round count."""
    h = hashlib.sha256 if variant == "5" else hashlib.sha512
    salt_b = salt.encode()[:16]
    n = len(password)
    b = h(password + salt_b + password).digest()
    a = h(password + salt_b + _repeat(b, n))
    i = n
    while i:
        a.update(b if i & 1 else password)
        i >>= 1
    a_digest = a.digest()
    p_seq = _repeat(h(password * n).digest(), n)
    s_seq = _repeat(h(salt_b * (16 + a_digest[0])).digest(), len(salt_b))
    count = _DEFAULT_ROUNDS if rounds is None else max(MIN_ROUNDS, min(rounds, 999_999_999))
    c = a_digest
    for r in range(count):
        ctx = h(p_seq if r & 1 else c)
        if r % 3:
            ctx.update(s_seq)
        if r % 7:
            ctx.update(p_seq)
        ctx.update(c if r & 1 else p_seq)
        c = ctx.digest()
    if variant == "5":
        text = "".join(_b64(c[x], c[y], c[z], 4) for x, y, z in _ORDER_256)
        text += _b64(0, c[31], c[30], 3)
    else:
        text = "".join(_b64(c[x], c[y], c[z], 4) for x, y, z in _ORDER_512)
        text += _b64(0, 0, c[63], 2)
    prefix = f"${variant}$" + ("" if rounds is None else f"rounds={count}$")
    return f"{prefix}{salt_b.decode()}${text}"


def verify(password: bytes, hashed: str) -> bool:
    """Whether ``password`` matches a ``$5$`` / ``$6$`` hash (constant-time compare)."""
    match = _HASH.match(hashed)
    if match is None:
        return False
    variant, rounds_text, salt, _ = match.groups()
    rounds = int(rounds_text) if rounds_text is not None else None
    if rounds is not None and rounds > MAX_ROUNDS:
        return False
    return hmac.compare_digest(sha_crypt(password, salt, rounds, variant).encode(), hashed.encode())
