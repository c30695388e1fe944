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
import itertools
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from glotta.data.manifest import ShardInfo
from glotta.data.native import lookup_index
from glotta._native import stat_sizes
from glotta.data.shard_index import ShardIndex, load_indexes
from glotta.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class LangTable:
    shards: np.ndarray  # int32: shards holding the language (after exclusions)
    ends: np.ndarray  # int64: cumulative document count up to and including each shard
    local: np.ndarray  # int32: the language's id inside each shard's index
    nbytes: int = 0
    start: np.ndarray | None = None  # int64: where the language's documents begin in each shard's by_lang (0: kept lists)

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
    names: list[str] = field(default_factory=list)  # each shard's file name (computed when not given)
    # A task's documents in one shard from which read_task reads its index through a mapping
    # rather than by pread (~0.7 µs per read, four per document, against ~10 µs to map an index
    # and the RSS its pages then hold; a mapping makes a lookup a memory read).
    DENSE = 8

    def __post_init__(self) -> None:
        if not self.names:
            self.names = [os.path.basename(s) for s in self.shards]  # not Path(s).name: 18 µs a shard
        self._layouts: np.ndarray | None = None  # [shards, 6] ShardIndex.layout, built on the first task
        self._index_paths: list[str] = []

    def _lookup_tables(self) -> tuple[np.ndarray, list[str]]:
        """Every shard's index layout and path, gathered once: read_task then takes a task's with one
        numpy gather instead of two Python steps per shard (a task of 512 documents on ~900 shards
        touches ~170 of them: ~45 us a task)."""
        if self._layouts is None:
            self._layouts = np.array([ix.layout if ix is not None else (0,) * 6 for ix in self.indexes], np.int64).reshape(-1, 6)
            self._index_paths = [str(ix.path) if ix is not None else "" for ix in self.indexes]
        return self._layouts, self._index_paths

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
        """What a tokenizer worker needs to read the documents `ids` (a ReadTask), in one C++ call
        (no Python step per document or per shard); small to pickle for a process pool."""
        ids = np.asarray(ids, np.int64)
        return self.read_task(ids >> 32, -1 - (ids & 0xFFFFFFFF))[1]

    def read_task(self, shard: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, "ReadTask"]:
        """(local id per document, ReadTask) for a task's documents in task order: `shard` and
        `pos`, a position in the shard's by_lang array or, when < 0, the local id -1 - pos.

        One stable argsort groups the task by shard (task order inside a shard), so each index is
        opened once per task and the reader walks each shard's documents together; then one
        `lookup_index` call reads every document's local id, byte offset and key. An index that
        is mapped already, small (ShardIndex.SMALL) or read densely by the task (>= DENSE
        documents) is read through its mapping, any other by pread: on 10,000 shards a task's
        documents fall in ~250 shards, one or two each, and mapping each large index costs more
        than the reads (csrc/index_lookup.cpp)."""
        shard = np.asarray(shard, np.int64)
        n = len(shard)
        if not n:
            z = np.zeros(0, np.int64)
            empty = ReadTask(0, [], np.zeros(0, np.int32), z, z, b"", z, z)
            return np.zeros(0, np.int64), empty
        order = np.argsort(shard, kind="stable")
        grouped = shard[order]
        cut = np.flatnonzero(grouped[1:] != grouped[:-1]) + 1
        ends = np.append(cut, n)
        first = grouped[np.append(0, cut)]
        shards = first.tolist()
        per_shard = ends - np.append(0, cut)
        layouts, paths = self._lookup_tables()
        indexes = self.indexes
        bufs = [indexes[s].lookup_source(d >= self.DENSE) for s, d in zip(shards, per_shard.tolist())]
        try:
            j, offsets, blob, key_ends, text_sizes = lookup_index([paths[s] for s in shards], bufs, layouts[first], ends, np.asarray(pos, np.int64)[order])
        except RuntimeError as e:  # a damaged or replaced index file, named
            raise DataError(str(e)) from None
        local = np.empty(n, np.int64)
        local[order] = j
        which = np.repeat(np.arange(len(shards), dtype=np.int32), per_shard)
        return local, ReadTask(n, shards, which, order, offsets, blob, key_ends, text_sizes)

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
    `offsets[i]` of shard `shards[which[i]]` with key key_blob[key_ends[i-1]:key_ends[i]] and a
    text of sizes[i] bytes (as indexed), and it is document `pos[i]` of the task
    (`data/tokenize.py` reads them all in one C++ call)."""

    n: int
    shards: list[int]
    which: np.ndarray  # int32
    pos: np.ndarray  # int64
    offsets: np.ndarray  # int64
    key_blob: bytes
    key_ends: np.ndarray  # int64
    sizes: np.ndarray  # int64: read_texts reads each text straight into a bytes object of this size


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
        # which use their kept lists instead), gathered at start-up: a lang_start call per pair
        # cost ~2.5 us (10 pairs a shard on 938 shards of 10 documents: 23 ms of the loader's start).
        self.start = np.concatenate([t.start for t in tables] or [np.zeros(0, np.int64)]).astype(np.int64)

    def __call__(self, lang: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Document ids (shard << 32 | local) for language indexes `lang` (into `langs`) and ranks `k`."""
        return self.task(lang, k)[0]

    def task(self, lang: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, ReadTask]:
        """Document ids and the ReadTask for them (CorpusIndex.read_task), the loader's per-task
        lookup: one searchsorted and one C++ call, whatever the number of shards."""
        kk = self.base[np.asarray(lang, np.int64)] + np.asarray(k, np.int64)
        e = np.searchsorted(self.ends, kk, side="right")
        rank = kk - np.where(e > 0, self.ends[np.maximum(e - 1, 0)], 0)
        shard = self.shard[e]
        pos = self.start[e] + rank  # where each document is in its shard's by_lang (kept: its rank)
        if self.index.kept:  # shards with excluded documents: the local id from their kept lists
            for i in np.flatnonzero(np.isin(shard, list(self.index.kept))).tolist():
                pos[i] = -1 - int(self.index.kept[int(shard[i])][int(self.local[e[i]])][rank[i]])
        local, task = self.index.read_task(shard, pos)
        return (shard << 32) | local, task


def build_corpus_index(
    shards: list[tuple[Path, ShardInfo | None]], exclude: set[str], strict: bool = False, sizes: list[int | None] | None = None
) -> CorpusIndex:
    """Headers of every shard's index (built where missing), exclusions applied. `sizes`: each
    shard's size if the caller stat-ed it already (None: stat here)."""
    counters: Counter = Counter()
    by_shard: dict[str, set[str]] = {}
    for e in exclude:
        name, sep, key = e.partition("/")
        if sep:
            by_shard.setdefault(name, set()).add(key)
    indexes: list[ShardIndex | None] = []
    kept: dict[int, dict[int, np.ndarray]] = {}
    # One entry per (shard, language) pair, in flat lists grouped into tables at the end: a list
    # of tuples per language cost ~3 us a pair (10 pairs a shard on 938 shards of 10 documents).
    p_shard: list[int] = []
    p_local: list[int] = []
    p_docs: list[int] = []
    p_bytes: list[int] = []
    p_lang: list[str] = []
    p_start: list[int] = []  # where the pair's documents begin in the shard's by_lang (0 for kept lists)
    # Strings once: a Path's str() or name costs microseconds, and start-up used each ~5 times a shard.
    paths = [os.fspath(p) for p, _ in shards]
    shard_names = [os.path.basename(p) for p in paths]
    wanted = [si for si, name in enumerate(shard_names) if name not in exclude]
    counters["excluded_shards"] += len(shards) - len(wanted)
    if sizes is None:
        sizes = [None] * len(shards)
    # Headers in one call (csrc/index_heads.cpp), then checked or built shard by shard (with a
    # bar: a shard without an index is scanned).
    loaded = dict(zip(wanted, load_indexes([(paths[si], shards[si][1]) for si in wanted], [sizes[si] for si in wanted], strict, [shard_names[si] for si in wanted])))
    for si, (path, expected) in enumerate(shards):
        name = shard_names[si]
        idx = loaded.get(si)
        if idx is None:  # excluded
            indexes.append(None)
            continue
        if isinstance(idx, OSError):
            if strict:
                raise DataError(f"{path}: {idx}") from None
            counters["unreadable_shard"] += 1
            log.warning("%s: %s", path, idx)
            indexes.append(None)
            continue
        indexes.append(idx)
        head = idx.header
        if head["counters"]:
            counters.update(head["counters"])
        head.pop("warnings", None)  # reported when read; not kept for 10,000 shards
        docs, nbytes, langs = head["lang_docs"], head["lang_bytes"], head["langs"]
        drop = by_shard.get(name)
        k = len(langs)
        if k:
            p_start += [0] * k if drop else itertools.accumulate(docs[:-1], initial=0)
        if drop:
            docs, nbytes = list(docs), list(nbytes)
            c = idx.cols()
            keys = idx.keys()
            gone = np.fromiter((k in drop for k in keys), bool, len(keys))
            counters["excluded"] += int(gone.sum())
            kept[si] = {}
            for ll in range(len(langs)):
                start = idx.lang_start(ll)
                ids = np.asarray(c["by_lang"][start : start + docs[ll]], np.int64)
                keep = ids[~gone[ids]]
                kept[si][ll] = keep.astype(np.uint32)
                docs[ll], nbytes[ll] = len(keep), int(c["nbytes"][keep].sum())
        p_shard += [si] * k
        p_local += range(k)
        p_docs += docs
        p_bytes += nbytes
        p_lang += langs
    tables = {}
    if p_lang:
        names = sorted(set(p_lang))
        code = {lang: i for i, lang in enumerate(names)}
        lang = np.fromiter(map(code.__getitem__, p_lang), np.int64, len(p_lang))
        pairs = np.array([p_shard, p_local, p_docs, p_bytes, p_start], np.int64)
        keep = pairs[2] > 0  # a language whose documents were all excluded
        lang, pairs = lang[keep], pairs[:, keep]
        order = np.argsort(lang, kind="stable")  # by language, shard order inside each
        lang, pairs = lang[order], pairs[:, order]
        bounds = np.searchsorted(lang, np.arange(len(names) + 1))
        for i, name in enumerate(names):
            r = pairs[:, bounds[i] : bounds[i + 1]]
            if r.shape[1]:
                tables[name] = LangTable(r[0].astype(np.int32), np.cumsum(r[2]), r[1].astype(np.int32), int(r[3].sum()), r[4].copy())
    counters["indexed"] = sum(t.docs for t in tables.values())
    return CorpusIndex(paths, indexes, tables, kept, counters, shard_names)


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
    paths = [os.fspath(p) for p, _ in shards]
    stats = stat_sizes(paths)  # [n, 2] size and mtime_ns, -1 where stat failed; one C++ call
    key = (tuple(paths), stats.tobytes(), hashlib.sha256("\n".join(sorted(exclude)).encode()).hexdigest(), strict)
    if key not in _CACHE:
        if len(_CACHE) >= 8:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = build_corpus_index(shards, exclude, strict, stats[:, 0].tolist())
    return _CACHE[key]
