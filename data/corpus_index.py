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
from glotta.data.native import lookup_index
from glotta._native import stat_sizes
from glotta.data.set_heads import SetHeads, load_current, manifest_stat
from glotta.data.shard_index import ShardIndex, load_indexes
from glotta.data.shards import shard_entries
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
    read_from: list[str] = field(default_factory=list)  # per source: "heads.idx" or "headers" (data/set_heads.py)
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
        text = "".join([f"{name}\0{idx.docs if idx else -1}\n" for name, idx in zip(self.names, self.indexes)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]  # one update: the same digest as one per shard

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
    return from_heads([read_heads(shards, exclude, strict, sizes)], exclude)


def read_heads(
    shards: list[tuple[Path, ShardInfo | None]], exclude: set[str], strict: bool = False, sizes: list[int | None] | None = None,
    shard_stat: np.ndarray | None = None, directory: str = "",
) -> SetHeads:
    """Every shard's index header, read one by one (built where missing; checked against its
    manifest entry), as a SetHeads. A shard excluded whole is not read; an unreadable one is a
    DataError when strict, else a warning (and a row that is not present). `directory`: the
    shards' folder when they all come from one set (heads.idx is then written for it)."""
    paths = [os.fspath(p) for p, _ in shards]  # strings once: a Path's str() or name costs microseconds
    names = [os.path.basename(p) for p in paths]
    wanted = [si for si, name in enumerate(names) if name not in exclude]
    if sizes is None:
        sizes = [None] * len(shards)
    # Headers in one call (csrc/index_heads.cpp), then checked or built shard by shard (with a
    # bar: a shard without an index is scanned).
    loaded = dict(zip(wanted, load_indexes([(paths[si], shards[si][1]) for si in wanted], [sizes[si] for si in wanted], strict, [names[si] for si in wanted])))
    indexes: list[ShardIndex | None] = []
    for si, path in enumerate(paths):
        idx = loaded.get(si)
        if isinstance(idx, OSError):
            if strict:
                raise DataError(f"{path}: {idx}") from None
            log.warning("%s: %s", path, idx)
            idx = None
        if idx is not None:
            idx.header.pop("warnings", None)  # reported when read; not kept for 10,000 shards
        indexes.append(idx)
    heads = SetHeads.from_indexes(names, indexes, shard_stat)
    if directory:
        heads.directory = directory
    else:
        heads.full_paths = paths
    return heads


def from_heads(parts: list[SetHeads], exclude: set[str]) -> CorpusIndex:
    """The corpus index of one or more shard sets' headers, in order, exclusions applied: a few
    numpy calls per set, whatever its number of shards (plus the keys of shards that have
    excluded documents)."""
    counters: Counter = Counter()
    by_shard: dict[str, set[str]] = {}
    for e in exclude:
        name, sep, key = e.partition("/")
        if sep:
            by_shard.setdefault(name, set()).add(key)
    all_langs = sorted(set().union(*(p.langs for p in parts)))
    code = {lang: i for i, lang in enumerate(all_langs)}
    paths: list[str] = []
    names: list[str] = []
    indexes: list[ShardIndex | None] = []
    kept: dict[int, dict[int, np.ndarray]] = {}
    cols: list[np.ndarray] = []  # per set: [6, pairs] shard, local language, docs, bytes, start in by_lang, language
    base = 0
    for part in parts:
        n = part.n
        present = part.present if part.present is not None else np.ones(n, bool)
        gone = np.fromiter((nm in exclude for nm in part.names), bool, n) if exclude else np.zeros(n, bool)
        counters["excluded_shards"] += int(gone.sum())
        if (bad := int((~present & ~gone).sum())):
            counters["unreadable_shard"] += bad
        use = present & ~gone
        ix = part.shard_indexes()
        if not use.all():
            ix = [x if u else None for x, u in zip(ix, use.tolist())]
        for i, c in part.counters.items():
            if use[i]:
                counters.update(c)
        count = np.diff(part.pair_end, prepend=0)
        has = count > 0
        first = (part.pair_end - count)[has]  # each shard's first pair
        p_shard = np.repeat(np.arange(n, dtype=np.int64), count)
        p_local = np.arange(len(p_shard), dtype=np.int64) - np.repeat(first, count[has])
        p_docs = part.pair_docs.astype(np.int64)  # copies: exclusions change them
        p_bytes = part.pair_bytes.astype(np.int64)
        before = np.cumsum(p_docs) - p_docs  # where each pair's documents begin in its shard's by_lang
        p_start = before - np.repeat(before[first], count[has])
        if by_shard:
            for i in (i for i, nm in enumerate(part.names) if nm in by_shard and use[i]):
                idx = ix[i]
                drop = by_shard[part.names[i]]
                a, b = int(part.pair_end[i] - count[i]), int(part.pair_end[i])
                c = idx.cols()
                keys = idx.keys()
                out = np.fromiter((k in drop for k in keys), bool, len(keys))
                counters["excluded"] += int(out.sum())
                kept[base + i] = {}
                for ll in range(b - a):
                    start = idx.lang_start(ll)
                    ids = np.asarray(c["by_lang"][start : start + int(p_docs[a + ll])], np.int64)
                    keep = ids[~out[ids]]
                    kept[base + i][ll] = keep.astype(np.uint32)
                    p_docs[a + ll], p_bytes[a + ll] = len(keep), int(c["nbytes"][keep].sum())
                p_start[a:b] = 0  # the kept lists hold the local ids
        lut = np.array([code[lang] for lang in part.langs] or [0], np.int64)
        sel = use[p_shard] & (p_docs > 0)  # and a language whose documents were all excluded
        cols.append(np.array([p_shard + base, p_local, p_docs, p_bytes, p_start, lut[part.pair_lang]], np.int64)[:, sel])
        paths += part.paths()
        names += part.names
        indexes += ix
        base += n
    tables = {}
    pairs = np.concatenate(cols, axis=1) if cols else np.zeros((6, 0), np.int64)
    if pairs.shape[1]:
        order = np.argsort(pairs[5], kind="stable")  # by language, shard order inside each
        pairs = pairs[:, order]
        bounds = np.searchsorted(pairs[5], np.arange(len(all_langs) + 1))
        for i, name in enumerate(all_langs):
            r = pairs[:, bounds[i] : bounds[i + 1]]
            if r.shape[1]:
                tables[name] = LangTable(r[0].astype(np.int32), np.cumsum(r[2]), r[1].astype(np.int32), int(r[3].sum()), r[4].copy())
    counters["indexed"] = sum(t.docs for t in tables.values())
    return CorpusIndex(paths, indexes, tables, kept, counters, names, [p.source for p in parts])


def _distinct(a: np.ndarray) -> list[int]:
    """Sorted distinct values of a small int array. Not np.unique: numpy 2 checks for a masked
    array on every call and imports numpy.ma on the first (12 ms on the first batch's path)."""
    if not a.size:
        return []
    s = np.sort(a)
    return s[np.concatenate(([True], s[1:] != s[:-1]))].tolist()


_CACHE: dict[tuple, CorpusIndex] = {}


def open_corpus_index(sources: list[str], exclude: set[str], strict: bool = False) -> CorpusIndex:
    """The loader's start-up: each source (a shard set's folder or one shard file) in order.

    A folder whose heads.idx is current costs one read and one stat per shard and index file
    (data/set_heads.py); any other is read header by header (load_indexes), and a set with a
    manifest.json whose every header was read gets a heads.idx for the next start. Remembered
    per process while the files are unchanged (size, mtime): a trainer that builds a fresh
    validation loader for every evaluation reads the headers once."""
    sets: list[SetHeads | tuple[str, tuple[int, int] | None, list[tuple[Path, ShardInfo | None]]]] = []
    for s in sources:
        if os.path.isdir(s):
            heads = load_current(s)
            if heads is not None and strict and heads.counters:
                heads = None  # strict: the header scan names each problem and fails on it
            if heads is None:
                ms = manifest_stat(s)  # before the manifest is read: a later change makes the heads stale
                sets.append((s, ms, shard_entries(s)))
            else:
                sets.append(heads)
        elif os.path.isfile(s):
            sets.append(("", None, [(Path(s), None)]))
        else:
            raise DataError(f"loader source not found: {s}")
    all_names = [n for x in sets for n in (x.names if isinstance(x, SetHeads) else (os.path.basename(os.fspath(p)) for p, _ in x[2]))]
    # Counted, not names.count(n) per name: that was O(shards^2), 0.9 s of start-up at 10,000 shards.
    dup = sorted(n for n, c in Counter(all_names).items() if c > 1)
    if dup:
        raise DataError(f"shard names must be unique across sources (exclude lists use them): {dup[:5]}")
    key: list = []
    stats: list[np.ndarray | None] = []
    for x in sets:
        if isinstance(x, SetHeads):
            key.append((x.directory, x.stat.tobytes(), x.manifest_stat))
            stats.append(None)
        else:
            paths = [os.fspath(p) for p, _ in x[2]]
            st = stat_sizes(paths)  # [n, 2] size and mtime_ns, -1 where stat failed; one C++ call
            key.append((tuple(paths), st.tobytes()))
            stats.append(st)
    full = (tuple(key), hashlib.sha256("\n".join(sorted(exclude)).encode()).hexdigest(), strict)
    if full in _CACHE:
        return _CACHE[full]
    parts: list[SetHeads] = []
    for x, st in zip(sets, stats):
        if isinstance(x, SetHeads):
            if x.counters:
                log.warning("%s: %d shard(s) with problems recorded when indexed: %s", x.directory, len(x.counters),
                            dict(sum((Counter(c) for c in x.counters.values()), Counter())))  # fmt: skip
            parts.append(x)
            continue
        directory, ms, entries = x
        parts.append(_read_set(entries, exclude, strict, st, directory, ms))
    if len(_CACHE) >= 8:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[full] = index = from_heads(parts, exclude)
    return index


def _read_set(
    entries: list[tuple[Path, ShardInfo | None]], exclude: set[str], strict: bool, st: np.ndarray, directory: str, ms: tuple[int, int] | None
) -> SetHeads:
    """read_heads for a source of open_corpus_index, saving heads.idx for a set with a manifest
    (`ms`: its size and mtime before it was read) whose every header was read."""
    heads = read_heads(entries, exclude, strict, st[:, 0].tolist(), st, directory if ms is not None else "")
    if ms is not None:
        heads.manifest_stat = ms
        heads.write()
    return heads


def write_heads(directory: str | Path, strict: bool = False) -> bool:
    """Write DIRECTORY/heads.idx from its shards' index headers (`glotta data index` does at
    its end); False when the set has no manifest.json or the folder is not writable."""
    d = os.fspath(directory)
    ms = manifest_stat(d)
    if ms is None:
        return False
    entries = shard_entries(d)
    st = stat_sizes([os.fspath(p) for p, _ in entries])
    heads = read_heads(entries, set(), strict, st[:, 0].tolist(), st, d)
    heads.manifest_stat = ms
    return heads.write()
