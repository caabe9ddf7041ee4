"""Naive reference implementations the netstack tests compare against."""

from __future__ import annotations


def naive_ones_sum(data: bytes) -> int:
    """RFC 1071, word by word with end-around carry."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def naive_checksum(data: bytes) -> int:
    return ~naive_ones_sum(data) & 0xFFFF
