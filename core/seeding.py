"""Stable seeds: derived from named parts through blake2b, never Python's salted hash()."""
from __future__ import annotations

import hashlib


def stable_seed(*parts: object) -> int:
    """A 63-bit seed that depends only on the string form of `parts` (same on every machine/run)."""
    h = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)
