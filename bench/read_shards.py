"""Shard reading: glotta's C++ reader vs the webdataset library on the same shards, same run.

Two levels are compared:
  raw     - samples as {ext: bytes}        (ours: TarReader.read;  theirs: wds.WebDataset)
  decoded - text str + metadata dict       (ours: iter_samples;    theirs: wds.WebDataset(...).decode())
Shards come from the demo corpus (real gettext text); pass a shard directory to use your own.

    python bench/read_shards.py [SHARD_DIR] [--repeat 3]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import logging

import webdataset as wds

from glotta._native import TarReader
from glotta.data import iter_samples, list_shards
from glotta.data.demo_corpus import build_demo_corpus


def best_rate(fn, repeat: int) -> tuple[float, int]:
    best, n = 0.0, 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = fn()
        best = max(best, n / (time.perf_counter() - t0))
    return best, n


def ours_raw(shards) -> int:
    n = 0
    for p in shards:
        r = TarReader(str(p))
        while chunk := r.read(1024):
            n += len(chunk)
    return n


def ours_decoded(shards) -> int:
    return sum(1 for p in shards for _ in iter_samples(p))


def theirs_raw(shards) -> int:
    return sum(1 for _ in wds.WebDataset([str(p) for p in shards], shardshuffle=False))


def theirs_decoded(shards) -> int:
    return sum(1 for _ in wds.WebDataset([str(p) for p in shards], shardshuffle=False).decode())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shards", nargs="?", type=Path)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # unreadable .mo catalogs are counted, not printed here
    with tempfile.TemporaryDirectory() as tmp:
        d = args.shards
        if d is None:
            d = Path(tmp)
            build_demo_corpus(d, langs=["en", "de", "fr", "ru", "ja", "hi", "ar", "zh"], doc_chars=1000, shard_samples=2000)
        shards = list_shards(d)
        mb = sum(p.stat().st_size for p in shards) / 1e6
        print(f"{len(shards)} shards, {mb:.1f} MB, best of {args.repeat} (page cache warm)")
        print(f"{'level':8} {'glotta samples/s':>18} {'webdataset samples/s':>22} {'ratio':>8}")
        for level, ours, theirs in [("raw", ours_raw, theirs_raw), ("decoded", ours_decoded, theirs_decoded)]:
            theirs(shards)  # warm the page cache
            r_ours, n1 = best_rate(lambda: ours(shards), args.repeat)
            r_theirs, n2 = best_rate(lambda: theirs(shards), args.repeat)
            assert n1 == n2, f"sample counts differ: {n1} vs {n2}"
            print(f"{level:8} {r_ours:18,.0f} {r_theirs:22,.0f} {r_ours / r_theirs:7.1f}x")


if __name__ == "__main__":
    main()
