"""Import hygiene across ranks: exact duplicates and key collisions between ranks' shards.

Each rank removes exact duplicates (same normalized text) and renames repeated ids among its own
documents while it imports, and leaves one small table per shard (`manifest.d/docs/<shard>.npy`:
a 64-bit content hash and a 64-bit key hash per document, 16 bytes). Once every rank is complete,
one process (an exclusive lock on `manifest.d/dedup.lock`) reads those tables in (rank, shard,
position) order: a document whose content appeared earlier is dropped, a key used earlier is
renamed `KEY_N`, and only the shards holding such documents are rewritten (same names; their
manifest part entries updated). The first occurrence always wins, so the result does not depend
on which rank finished last.

Cost model: 16 bytes per document; at 2x10^9 documents the tables are 32 GB, read once by one
process with two hash sets of the 64-bit hashes (about 60 GB of Python ints at that size: beyond
one host, where the step should run per hash bucket; up to ~10^8 documents it is minutes).
"""
from __future__ import annotations

import fcntl
import json
import logging
import re
from collections import Counter
from hashlib import blake2b
from pathlib import Path

import numpy as np

from glotta.data.manifest import PARTS_DIR, ShardInfo, atomic_write_text, load_part, save_part
from glotta.data.native import collapse_ws
from glotta.data.shards import ShardWriter, iter_samples

log = logging.getLogger(__name__)
DOCS_DIR = "docs"
DONE = "dedup.json"
DTYPE = np.dtype([("content", "<u8"), ("key", "<u8")])
_SPACE = re.compile(r"\s+")


def content_hash(text: str) -> int:
    """64-bit hash of the text with runs of whitespace collapsed (datatrove's exact-dedup notion)."""
    return content_hash_utf8(text.encode("utf-8"))


def content_hash_utf8(data: bytes) -> int:
    """content_hash of the text whose UTF-8 encoding is `data` (the importer encodes once).

    The collapse is `" ".join(text.split())` done in C++ on the bytes (csrc/text.cpp: Python's
    whitespace set, so the hashes equal those of earlier imports); the Python version built a
    str per word and was ~20% of the import's CPU."""
    return int.from_bytes(blake2b(collapse_ws(data), digest_size=8).digest(), "little")


def key_hash(key: str) -> int:
    return int.from_bytes(blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")


def docs_path(out: Path, shard: str) -> Path:
    return out / PARTS_DIR / DOCS_DIR / f"{shard}.npy"


def save_docs(out: Path, shard: str, rows: list[tuple[int, int]]) -> None:
    p = docs_path(out, shard)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp.npy")
    np.save(tmp, np.array(rows, dtype=DTYPE))
    tmp.replace(p)


def load_docs(out: Path, shard: str) -> np.ndarray:
    p = docs_path(out, shard)
    return np.load(p) if p.is_file() else np.zeros(0, dtype=DTYPE)


def across_ranks(out: Path, world: int) -> dict[str, int]:
    """Run once all parts are complete; returns the counters of what it dropped and renamed."""
    parts_dir = out / PARTS_DIR
    with open(parts_dir / "dedup.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by the kernel if this process dies
        done = parts_dir / DONE
        if done.is_file():
            return json.loads(done.read_text())["counters"]
        counters: Counter = Counter()
        if world > 1:
            counters = _dedup(out, world)
        atomic_write_text(done, json.dumps({"counters": dict(counters)}) + "\n")
        return dict(counters)


def _dedup(out: Path, world: int) -> Counter:
    seen_content: set[int] = set()
    seen_keys: set[int] = set()
    plan: dict[tuple[int, int], tuple[set[int], set[int]]] = {}  # (rank, shard#) -> (drop rows, rename rows)
    parts = [load_part(out, r, world) for r in range(world)]
    for r, part in enumerate(parts):
        for i, s in enumerate(part["shards"]):
            docs = load_docs(out, s["name"])
            drop, rename = set(), set()
            for j, (c, k) in enumerate(docs.tolist()):
                if c in seen_content:
                    drop.add(j)
                    continue
                seen_content.add(c)
                if k in seen_keys:
                    rename.add(j)
                seen_keys.add(k)
            if drop or rename:
                plan[(r, i)] = (drop, rename)
    counters: Counter = Counter()
    for (r, i), (drop, rename) in sorted(plan.items()):
        part = parts[r]
        info = part["shards"][i]
        new = _rewrite(out, info["name"], r, drop, rename, seen_keys, counters)
        part["shards"][i] = new.__dict__.copy()
        save_part(out, r, world, part)
    return counters


def _rewrite(out: Path, name: str, rank: int, drop: set[int], rename: set[int], keys: set[int], counters: Counter) -> ShardInfo:
    """Rewrite one shard under the same name without the dropped rows and with renamed keys."""
    m = re.match(r"^(.*)-(\d{5})-(\d{6})\.tar$", name)
    if m is None:
        raise ValueError(f"unexpected shard name {name}")
    prefix, index = m.group(1), int(m.group(3))
    samples = list(iter_samples(out / name))
    rows: list[tuple[int, int]] = []
    w = ShardWriter(out, prefix, rank, max_samples=len(samples) + 1, max_bytes=1 << 62, start_index=index)
    with w:
        for j, s in enumerate(samples):
            if j in drop:
                counters["duplicate_docs_across_ranks"] += 1
                continue
            if j in rename:
                base, n = s.key, 2
                while key_hash(f"{base}_{n}") in keys:
                    n += 1
                s.key = f"{base}_{n}"
                keys.add(key_hash(s.key))
                counters["duplicate_ids_across_ranks"] += 1
            rows.append((content_hash(s.text), key_hash(s.key)))
            w.write(s)
    save_docs(out, name, rows)
    if not w.written:  # every document was a duplicate: an empty shard is still a valid, listed shard
        sha = _empty_tar(out / name)
        return ShardInfo(name=name, file_bytes=(out / name).stat().st_size, sha256=sha)
    return w.written[0]


def _empty_tar(path: Path) -> str:
    import tarfile

    from glotta.data.manifest import sha256_file

    with tarfile.open(path, "w"):
        pass
    return sha256_file(path)
