"""Stable seeds: derived from named parts through blake2b, never Python's salted hash()."""
from __future__ import annotations

import hashlib

import numpy as np


def stable_seed(*parts: object) -> int:
    """A 63-bit seed that depends only on the string form of `parts` (same on every machine/run)."""
    h = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def stable_seeds(*parts: object, last: np.ndarray) -> np.ndarray:
    """uint64 array: stable_seed(*parts, int(v)) for every v in `last`, in one C++ call (the
    loader derives one seed per block of every task; csrc/seed.cpp hashes the same bytes)."""
    from glotta._native import stable_seeds as _stable_seeds  # on first use: core/ imports without the extension

    head = "(" + "".join(repr(p) + ", " for p in parts)  # repr(parts + (v,)) up to v
    return _stable_seeds(head.encode("utf-8"), np.asarray(last, np.int64))
