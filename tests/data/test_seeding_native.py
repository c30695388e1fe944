"""csrc/seed.cpp against hashlib: the loader's per-block seeds must be stable_seed's, bit for bit
(a different seed would deal documents to other lanes and change every batch)."""
import hashlib
import random

import numpy as np
import pytest

from glotta._native import blake2b_64
from glotta.seeding import stable_seed, stable_seeds


@pytest.mark.parametrize("n", [0, 1, 7, 8, 63, 64, 127, 128, 129, 255, 256, 257, 1000, 4096])
def test_blake2b_64_is_hashlibs_at_every_block_boundary(n):
    rng = random.Random(n)
    for _ in range(20):
        data = bytes(rng.getrandbits(8) for _ in range(n))
        assert blake2b_64(data) == int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


@pytest.mark.parametrize(
    "parts",
    [(1234, "deal"), (0,), (-5, "perm", 3), ("x" * 300, "é–ß", 2.5), ((1, 2), None, b"\x00"), (2**100, "deal")],
)
def test_stable_seeds_equal_stable_seed_for_every_last_part(parts):
    rng = np.random.default_rng(len(repr(parts)))
    last = np.concatenate([[0, 1, -1, 9, 10, 2**62, -(2**63), 2**63 - 1], rng.integers(-(2**63), 2**63 - 1, 500)]).astype(np.int64)
    got = stable_seeds(*parts, last=last)
    assert got.dtype == np.uint64
    assert got.tolist() == [stable_seed(*parts, int(v)) for v in last]
    assert stable_seeds(*parts, last=last[:0]).tolist() == []
