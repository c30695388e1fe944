"""The loader's view of a shard set, built from the per-shard index headers (shard_index.py).

Start-up reads one small header per shard (O(shards)), never a document. What stays in memory
is O(shard x language pairs): for each language, the shards holding it and the cumulative count
of its documents. The k-th document of a language is found on demand: a binary search gives
the shard, the shard's memory-mapped `by_lang` array gives the document, so a rank only ever
touches the index pages of the documents its own lanes read.

A document's id inside the loader is `shard << 32 | local document` (int64); `doc_id` turns it
into the `shard.tar/KEY` string exclude lists and CAT scores use.

Exclude lists: a whole shard is dropped before its index is read. For a shard with excluded
documents the kept documents of each language are materialised once (4 bytes per kept
document of such shards), because counting them needs the keys anyway.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from glotta.data.manifest import ShardInfo
from glotta.data.shard_index import ShardIndex, load_index
from glotta.errors import DataError
from glotta.progress import track

log = logging.getLogger(__name__)


@dataclass
class LangTable:
    shards: np.ndarray  # int32: shards holding the language (after exclusions)
    ends: np.ndarray  # int64: cumulative document count up to and including each shard
    local: np.ndarray  # int32: the language's id inside each shard's index
    nbytes: int = 0

    @property
    def docs(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0


@dataclass
class CorpusIndex:
    shards: list[str]
    indexes: list[ShardIndex | None]  # None: the whole shard is excluded or unreadable
    tables: dict[str, LangTable]
    kept: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)  # shards with excluded documents
    counters: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.names = [Path(s).name for s in self.shards]

    @property
    def documents(self) -> int:
        return sum(t.docs for t in self.tables.values())

    def shard_list_hash(self) -> str:
        """The resume fingerprint's view of the shard set: 16 hex digits, whatever its size."""
        h = hashlib.sha256()
        for name, idx in zip(self.names, self.indexes):
            h.update(f"{name}\0{idx.docs if idx else -1}\n".encode())
        return h.hexdigest()[:16]

    def locate(self, lang: str, k: np.ndarray) -> np.ndarray:
        """Document ids (shard << 32 | local) of the k-th documents of `lang` (k < docs)."""
        t = self.tables[lang]
        k = np.asarray(k, np.int64)
        pos = np.searchsorted(t.ends, k, side="right")
        before = np.where(pos > 0, t.ends[np.maximum(pos - 1, 0)], 0)
        rank = k - before
        out = np.empty(len(k), np.int64)
        for i, (p, r) in enumerate(zip(pos.tolist(), rank.tolist())):
            s, ll = int(t.shards[p]), int(t.local[p])
            kept = self.kept.get(s)
            if kept is not None:
                j = int(kept[ll][r])
            else:
                idx = self.indexes[s]
                j = int(idx.cols()["by_lang"][idx.lang_start(ll) + r])
            out[i] = (s << 32) | j
        return out

    def fetch(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(shard, byte offset, key) of each document: what a tokenizer worker needs."""
        ids = np.asarray(ids, np.int64)
        shard = (ids >> 32).astype(np.int32)
        local = (ids & 0xFFFFFFFF).astype(np.int64)
        offset = np.empty(len(ids), np.int64)
        keys: list[str] = []
        cols: dict[int, dict] = {}
        for i, (s, j) in enumerate(zip(shard.tolist(), local.tolist())):
            c = cols.get(s)
            if c is None:
                c = cols[s] = self.indexes[s].cols()
            offset[i] = int(c["offset"][j])
            keys.append(self.indexes[s].key(j, c))
        return shard, offset, keys

    def doc_ids(self):
        """Every loadable document's `shard.tar/KEY` (reads every index: for tools and tests, not start-up)."""
        for t in self.tables.values():
            for s, ll in zip(t.shards.tolist(), t.local.tolist()):
                idx = self.indexes[s]
                kept = self.kept.get(s)
                if kept is not None:
                    local = kept[ll].tolist()
                else:
                    start = idx.lang_start(ll)
                    local = idx.cols()["by_lang"][start : start + idx.header["lang_docs"][ll]].tolist()
                keys = idx.keys()
                for j in local:
                    yield f"{self.names[s]}/{keys[j]}"

    def doc_id(self, g: int) -> str:
        s, j = g >> 32, g & 0xFFFFFFFF
        return f"{self.names[s]}/{self.indexes[s].key(j)}"


def build_corpus_index(
    shards: list[tuple[Path, ShardInfo | None]], exclude: set[str], strict: bool = False
) -> CorpusIndex:
    """Headers of every shard's index (built where missing), exclusions applied."""
    counters: Counter = Counter()
    by_shard: dict[str, set[str]] = {}
    for e in exclude:
        name, sep, key = e.partition("/")
        if sep:
            by_shard.setdefault(name, set()).add(key)
    indexes: list[ShardIndex | None] = []
    kept: dict[int, dict[int, np.ndarray]] = {}
    rows: dict[str, list[tuple[int, int, int, int]]] = {}  # lang -> (shard, local lang, docs, bytes)
    for si, (path, expected) in enumerate(track(shards, "index shards") if len(shards) > 50 else shards):
        name = path.name
        if name in exclude:
            counters["excluded_shards"] += 1
            indexes.append(None)
            continue
        try:
            idx = load_index(path, expected, strict)
        except OSError as e:
            if strict:
                raise DataError(f"{path}: {e}") from None
            counters["unreadable_shard"] += 1
            log.warning("%s: %s", path, e)
            indexes.append(None)
            continue
        indexes.append(idx)
        counters.update(idx.counters)
        idx.header.pop("warnings", None)  # reported when read; not kept for 10,000 shards
        docs, nbytes = list(idx.header["lang_docs"]), list(idx.header["lang_bytes"])
        drop = by_shard.get(name)
        if drop:
            c = idx.cols()
            keys = idx.keys()
            gone = np.fromiter((k in drop for k in keys), bool, len(keys))
            counters["excluded"] += int(gone.sum())
            kept[si] = {}
            for ll in range(len(idx.langs)):
                start = idx.lang_start(ll)
                ids = np.asarray(c["by_lang"][start : start + docs[ll]], np.int64)
                keep = ids[~gone[ids]]
                kept[si][ll] = keep.astype(np.uint32)
                docs[ll], nbytes[ll] = len(keep), int(c["nbytes"][keep].sum())
        for ll, lang in enumerate(idx.langs):
            if docs[ll]:
                rows.setdefault(lang, []).append((si, ll, docs[ll], nbytes[ll]))
    tables = {}
    for lang in sorted(rows):
        r = np.asarray(rows[lang], np.int64)
        tables[lang] = LangTable(r[:, 0].astype(np.int32), np.cumsum(r[:, 2]), r[:, 1].astype(np.int32), int(r[:, 3].sum()))
    counters["indexed"] = sum(t.docs for t in tables.values())
    return CorpusIndex([str(p) for p, _ in shards], indexes, tables, kept, counters)


_CACHE: dict[tuple, CorpusIndex] = {}


def cached_corpus_index(shards: list[tuple[Path, ShardInfo | None]], exclude: set[str], strict: bool = False) -> CorpusIndex:
    """build_corpus_index, remembered per process while the shard files are unchanged (size,
    mtime): a trainer that builds a fresh validation loader for every evaluation reads the
    headers once."""
    key = (
        tuple((str(p), os.stat(p).st_size, os.stat(p).st_mtime_ns) if os.path.exists(p) else (str(p),) for p, _ in shards),
        hashlib.sha256("\n".join(sorted(exclude)).encode()).hexdigest(),
        strict,
    )
    if key not in _CACHE:
        if len(_CACHE) >= 8:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = build_corpus_index(shards, exclude, strict)
    return _CACHE[key]
