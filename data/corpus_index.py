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
from typing import NamedTuple

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
        """Document ids (shard << 32 | local) of the k-th documents of `lang` (k < docs).
        Vectorised per shard: a task's documents cost a few numpy calls per shard, not per document."""
        t = self.tables[lang]
        k = np.asarray(k, np.int64)
        pos = np.searchsorted(t.ends, k, side="right")
        before = np.where(pos > 0, t.ends[np.maximum(pos - 1, 0)], 0)
        rank = k - before
        out = np.empty(len(k), np.int64)
        for p in _distinct(pos):
            sel = np.flatnonzero(pos == p)
            s, ll = int(t.shards[p]), int(t.local[p])
            kept = self.kept.get(s)
            if kept is not None:
                j = kept[ll][rank[sel]].astype(np.int64)
            else:
                idx = self.indexes[s]
                j = idx.cols()["by_lang"][idx.lang_start(ll) + rank[sel]].astype(np.int64)
            out[sel] = (s << 32) | j
        return out

    def locator(self, langs: list[str]) -> "Locator":
        """`locate` for many languages in one call (the loader's per-task lookup)."""
        return Locator(self, langs)

    def fetch(self, ids: np.ndarray) -> "ReadTask":
        """What a tokenizer worker needs to read the documents `ids` (a ReadTask): gathered with
        numpy from the mapped index (no Python str per document); small to pickle for a process
        pool.

        One stable argsort groups the task by shard (task order inside a shard), so the reader
        walks each shard's documents together; lengths, blob ends and the byte gather index are
        computed once for the whole task. What is left per shard is what must be: three gathers
        from its own mapped arrays (offsets, key ends at j and j-1) and one of its key bytes."""
        ids = np.asarray(ids, np.int64)
        n = len(ids)
        if not n:
            return ReadTask(0, [], np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int64), b"", np.zeros(0, np.int64))
        order = np.argsort(ids >> 32, kind="stable")
        sorted_ids = ids[order]
        shard = sorted_ids >> 32
        local = sorted_ids & 0xFFFFFFFF
        cut = (np.flatnonzero(shard[1:] != shard[:-1]) + 1).tolist()
        bounds = list(zip([0, *cut], [*cut, n]))
        shards = shard[[0, *cut]].tolist()
        cols = [self.indexes[s].cols() for s in shards]
        offset, hi, lo = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
        before = local - 1  # key j starts where key j-1 ends; j == 0 wraps to the last, fixed below
        which = np.empty(n, np.int32)
        for k, (c, (a, b)) in enumerate(zip(cols, bounds)):
            j = local[a:b]
            offset[a:b] = c["offset"][j]
            hi[a:b] = c["key_end"][j]
            lo[a:b] = c["key_end"][before[a:b]]
            which[a:b] = k
        lo[local == 0] = 0
        lens = hi - lo
        ends = np.cumsum(lens)
        # Byte i of the task's key bytes is keys[lo[d] + (i - start of d)] of its document d's shard.
        gather = np.repeat(lo - (ends - lens), lens) + np.arange(int(ends[-1]))
        blob = b"".join(
            c["keys"][gather[(int(ends[a - 1]) if a else 0) : int(ends[b - 1])]].tobytes() for c, (a, b) in zip(cols, bounds)
        )
        return ReadTask(n, shards, which, order, offset, blob, ends)

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


class ReadTask(NamedTuple):
    """The documents of one tokenizer task, grouped by shard: entry i is the sample at byte
    `offsets[i]` of shard `shards[which[i]]` with key key_blob[key_ends[i-1]:key_ends[i]], and it
    is document `pos[i]` of the task (`data/tokenize.py` reads them all in one C++ call)."""

    n: int
    shards: list[int]
    which: np.ndarray  # int32
    pos: np.ndarray  # int64
    offsets: np.ndarray  # int64
    key_blob: bytes
    key_ends: np.ndarray  # int64


class Locator:
    """The k-th document of language i, for arrays of (i, k) at once.

    The languages' tables are laid end to end: entry e covers one (shard, language) pair and
    `ends[e]` counts the documents of all languages before it plus those of its language up to
    and including that shard, so one searchsorted finds every document's pair and the rest is
    one gather per shard (`by_lang` of its index). Memory: 24 bytes per (shard, language) pair,
    like the tables themselves."""

    def __init__(self, index: CorpusIndex, langs: list[str]):
        self.index = index
        tables = [index.tables[lang] for lang in langs]
        self.base = np.cumsum([0] + [t.docs for t in tables[:-1]]).astype(np.int64)
        self.ends = np.concatenate([t.ends + b for t, b in zip(tables, self.base)] or [np.zeros(0, np.int64)])
        self.shard = np.concatenate([t.shards for t in tables] or [np.zeros(0, np.int32)]).astype(np.int64)
        local = np.concatenate([t.local for t in tables] or [np.zeros(0, np.int32)]).astype(np.int64)
        self.local = local
        # Where each pair's documents start in its shard's by_lang (0 for shards with exclusions,
        # which use their kept lists instead).
        self.start = np.array(
            [0 if s in index.kept else index.indexes[s].lang_start(ll) for s, ll in zip(self.shard.tolist(), local.tolist())],
            np.int64,
        )

    def __call__(self, lang: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Document ids (shard << 32 | local) for language indexes `lang` (into `langs`) and ranks `k`."""
        kk = self.base[np.asarray(lang, np.int64)] + np.asarray(k, np.int64)
        e = np.searchsorted(self.ends, kk, side="right")
        rank = kk - np.where(e > 0, self.ends[np.maximum(e - 1, 0)], 0)
        shard = self.shard[e]
        pos = self.start[e] + rank  # where each document is in its shard's by_lang (kept: its rank)
        out = np.empty(len(kk), np.int64)
        if not len(kk):
            return out
        # One stable sort groups the call by shard (as fetch does); then one gather per shard.
        order = np.argsort(shard, kind="stable")
        sorted_shard = shard[order]
        cut = (np.flatnonzero(sorted_shard[1:] != sorted_shard[:-1]) + 1).tolist()
        for a, b in zip([0, *cut], [*cut, len(kk)]):
            sel = order[a:b]
            s = int(sorted_shard[a])
            kept = self.index.kept.get(s)
            if kept is not None:
                j = np.array([kept[ll][r] for ll, r in zip(self.local[e[sel]].tolist(), rank[sel].tolist())], np.int64)
            else:
                j = self.index.indexes[s].cols()["by_lang"][pos[sel]].astype(np.int64)
            out[sel] = (s << 32) | j
        return out


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


def _distinct(a: np.ndarray) -> list[int]:
    """Sorted distinct values of a small int array. Not np.unique: numpy 2 checks for a masked
    array on every call and imports numpy.ma on the first (12 ms on the first batch's path)."""
    if not a.size:
        return []
    s = np.sort(a)
    return s[np.concatenate(([True], s[1:] != s[:-1]))].tolist()


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
