"""Exact and near-duplicate removal, the pre-step before any selection.

Exact: blake2b of the normalised text (Unicode NFKC, case-folded, whitespace collapsed). Near:
MinHash over character 5-gram shingles (script-agnostic: works for CJK without a word segmenter)
with `num_perm` permutations, banded LSH (`bands` x `num_perm/bands` rows) for candidate pairs,
each candidate pair confirmed by its estimated Jaccard >= `threshold`; duplicate clusters are
joined with union-find and the first document (input order, i.e. shard order) of each is kept.

Cost at the largest scale (2x10^9 documents): 64 uint32 signatures = 256 B per document, 512 GB
in all, so a cluster job computes signatures shard-parallel and joins band buckets by a
shuffle keyed on (band, bucket) — the same split datatrove's MinHash stages use; this module is
the single-process version used by `glotta prune select` and the benchmark's corpus builder.
"""
from __future__ import annotations

import hashlib
import unicodedata
import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np

from glotta.config import StrictModel

_P = np.uint64((1 << 61) - 1)


class DedupConfig(StrictModel):
    mode: Literal["none", "exact", "near"] = "none"
    threshold: float = 0.8  # estimated Jaccard of 5-gram shingles above which two documents are duplicates
    num_perm: int = 64
    bands: int = 8
    shingle: int = 5


@dataclass(frozen=True)
class Duplicates:
    keep: np.ndarray  # bool per document
    exact: int  # dropped as exact copies of an earlier document
    near: int  # dropped as near copies (not exact)


def normalize(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _shingles(text: str, k: int) -> np.ndarray:
    if len(text) <= k:
        return np.asarray([zlib.crc32(text.encode())], dtype=np.uint64)
    grams = {text[i : i + k] for i in range(len(text) - k + 1)}
    return np.fromiter((zlib.crc32(g.encode()) for g in grams), dtype=np.uint64, count=len(grams))


def signatures(texts: list[str], cfg: DedupConfig) -> np.ndarray:
    """[n, num_perm] MinHash signatures (uint64 < 2^61) of the normalised texts."""
    rng = np.random.default_rng(0x5EED)
    a = rng.integers(1, 1 << 31, size=cfg.num_perm, dtype=np.uint64)
    b = rng.integers(0, 1 << 31, size=cfg.num_perm, dtype=np.uint64)
    out = np.empty((len(texts), cfg.num_perm), dtype=np.uint64)
    for i, t in enumerate(texts):
        h = _shingles(normalize(t), cfg.shingle)
        out[i] = ((h[:, None] * a[None, :] + b[None, :]) % _P).min(axis=0)
    return out


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def find_duplicates(texts: list[str], cfg: DedupConfig) -> Duplicates:
    n = len(texts)
    keep = np.ones(n, dtype=bool)
    if cfg.mode == "none" or n == 0:
        return Duplicates(keep, 0, 0)
    first: dict[bytes, int] = {}
    for i, t in enumerate(texts):
        h = hashlib.blake2b(normalize(t).encode(), digest_size=16).digest()
        if h in first:
            keep[i] = False
        else:
            first[h] = i
    exact = int((~keep).sum())
    if cfg.mode == "exact":
        return Duplicates(keep, exact, 0)
    if cfg.num_perm % cfg.bands:
        raise ValueError(f"dedup.num_perm ({cfg.num_perm}) must be a multiple of dedup.bands ({cfg.bands})")
    live = np.flatnonzero(keep)
    sig = signatures([texts[i] for i in live], cfg)
    rows = cfg.num_perm // cfg.bands
    parent = list(range(len(live)))
    for band in range(cfg.bands):
        buckets: dict[bytes, int] = {}
        part = np.ascontiguousarray(sig[:, band * rows : (band + 1) * rows])
        for j in range(len(live)):
            key = part[j].tobytes()
            other = buckets.setdefault(key, j)
            if other != j and (sig[j] == sig[other]).mean() >= cfg.threshold:
                ra, rb = _find(parent, j), _find(parent, other)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)  # the earlier document stays the cluster's root
    roots = np.fromiter((_find(parent, j) for j in range(len(live))), dtype=np.int64, count=len(live))
    near_drop = roots != np.arange(len(live))
    keep[live[near_drop]] = False
    return Duplicates(keep, exact, int(near_drop.sum()))
