"""`heads.idx`: every shard's index header of a shard set in one file.

Without it a loader's start-up opens and reads one index header per shard (data/shard_index.py)
and parses the manifest and every header as JSON: on 938 shards ~40 ms of one core, most of it
JSON, and at 10,000 shards x 512 ranks ~5 million opens against a parallel file system's
metadata servers. With it a rank reads one file of a few hundred bytes per shard, checks it
against one stat per shard and per index file (size and mtime, as the in-process cache does),
and builds its tables with a few numpy calls. It is derived data: written by `glotta data
index` and by the first loader that starts on a set without a current one (when the folder is
writable), rebuilt whenever a shard, an index or manifest.json changed, and never needed.

Layout (little-endian), the per-shard index's framing:

    b"GLTSET\\0\\1"  8 bytes magic + version
    u64             length H of the header
    H bytes         JSON header: version, the shard count, the set's languages, manifest.json's
                    size and mtime, each array's place, the counters of shards that have any
    arrays          each 8-byte aligned; N shards, P (shard, language) pairs:
                    stat      i64[N, 4]  shard size and mtime_ns, index size and mtime_ns
                    docs      i64[N]     documents in the shard's index
                    samples   i64[N]     samples its scan read
                    arrays    i64[N, 6]  where the index's arrays start (by_lang, offset, key_end,
                                         keys, nbytes, lang)
                    pair_end  i64[N]     end of the shard's pairs
                    pair_lang i32[P]     the pair's language (into the header's list)
                    pair_docs i64[P], pair_bytes i64[P]
                    names     bytes      the shards' file names, NUL-separated
    32 bytes        sha256 of everything before it: a damaged or half-written file (two ranks
                    writing at once on a shared file system) is never trusted

Size: 128 bytes per shard + 20 per pair + the name: ~330 KB for 938 shards of 10 languages,
~3.5 MB for 10,000 shards of 50 languages.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from glotta._native import stat_sizes
from glotta.data.manifest import MANIFEST, atomic_write_bytes
from glotta.data.shard_index import SUFFIX, VERSION as INDEX_VERSION, ShardIndex

log = logging.getLogger(__name__)

HEADS = "heads.idx"
MAGIC = b"GLTSET\x00\x01"
VERSION = 1
# The per-shard header's "arrays" entries, in the column order of SetHeads.arrays.
ARRAY_NAMES = ("by_lang", "offset", "key_end", "keys", "nbytes", "lang")
_COLUMNS = (("stat", "<i8", 4), ("docs", "<i8", 1), ("samples", "<i8", 1), ("arrays", "<i8", 6), ("pair_end", "<i8", 1))
_PAIRS = (("pair_lang", "<i4"), ("pair_docs", "<i8"), ("pair_bytes", "<i8"))


@dataclass
class SetHeads:
    """What start-up needs of every shard's index header, as arrays (one row per shard).

    `present[i]` is False for a shard whose header was not read (excluded whole, or unreadable):
    its row is zeros and it has no pairs. `indexes` holds the ShardIndex objects a header scan
    made; rows from heads.idx get lazy ones (ShardIndex.from_set) on first use."""

    directory: str  # the set's folder ("" for shards given one by one: their paths are in full_paths)
    names: list[str]
    stat: np.ndarray  # int64 [N, 4]
    docs: np.ndarray
    samples: np.ndarray
    arrays: np.ndarray  # int64 [N, 6]
    pair_end: np.ndarray
    pair_lang: np.ndarray  # int32 codes into langs
    pair_docs: np.ndarray
    pair_bytes: np.ndarray
    langs: list[str]
    counters: dict[int, dict[str, int]] = field(default_factory=dict)  # only rows that have any
    present: np.ndarray | None = None  # bool [N]; None: every row
    manifest_stat: tuple[int, int] | None = None
    indexes: list[ShardIndex | None] | None = None
    source: str = "headers"  # "headers" (read one by one) or HEADS
    full_paths: list[str] | None = None  # shards given one by one (not one folder's): their paths

    @property
    def n(self) -> int:
        return len(self.names)

    def paths(self) -> list[str]:
        if self.full_paths is None:  # made once: start-up wants them three times
            prefix = self.directory if self.directory.endswith("/") else self.directory + "/"
            self.full_paths = [prefix + n for n in self.names]
        return self.full_paths

    def shard_indexes(self) -> list[ShardIndex | None]:
        if self.indexes is None:
            present = self.present.tolist() if self.present is not None else [True] * self.n
            # (by_lang, offset, key_end, keys, docs, nbytes): ShardIndex.layout, for every row at once
            layouts = map(tuple, np.column_stack([self.arrays[:, :4], self.docs, self.arrays[:, 4]]).tolist())
            self.indexes = [ShardIndex.from_set(f"{p}{SUFFIX}", self, i, lay) if ok else None
                            for i, (p, ok, lay) in enumerate(zip(self.paths(), present, layouts))]  # fmt: skip
        return self.indexes

    def header_of(self, i: int) -> dict[str, Any]:
        """Row i as the per-shard index header it was made from (what ShardIndex.header holds)."""
        a, b = (int(self.pair_end[i - 1]) if i else 0), int(self.pair_end[i])
        return {
            "version": INDEX_VERSION, "shard": self.names[i], "shard_bytes": int(self.stat[i, 0]), "docs": int(self.docs[i]),
            "samples": int(self.samples[i]), "langs": tuple(self.langs[c] for c in self.pair_lang[a:b].tolist()),
            "lang_docs": tuple(self.pair_docs[a:b].tolist()), "lang_bytes": tuple(self.pair_bytes[a:b].tolist()),
            "counters": dict(self.counters.get(i, {})), "arrays": dict(zip(ARRAY_NAMES, self.arrays[i].tolist())),
        }  # fmt: skip

    # ---- from the headers ---------------------------------------------------------------
    @classmethod
    def from_indexes(cls, names: list[str], indexes: list[ShardIndex | None], shard_stat: np.ndarray | None = None) -> "SetHeads":
        """From headers read one by one (None: not read); `shard_stat` [N, 2] as stat_sizes gives it."""
        n = len(names)
        stat = np.zeros((n, 4), np.int64)
        if shard_stat is not None:
            stat[:, :2] = shard_stat
        docs, samples = np.zeros(n, np.int64), np.zeros(n, np.int64)
        arrays = np.zeros((n, 6), np.int64)
        pair_end = np.zeros(n, np.int64)
        p_lang: list[str] = []
        p_docs: list[int] = []
        p_bytes: list[int] = []
        counters: dict[int, dict[str, int]] = {}
        for i, idx in enumerate(indexes):
            if idx is not None:
                h = idx.header
                stat[i, 0] = h["shard_bytes"]
                docs[i], samples[i] = h["docs"], h["samples"]
                arrays[i] = [h["arrays"][k] for k in ARRAY_NAMES]
                p_lang += h["langs"]
                p_docs += h["lang_docs"]
                p_bytes += h["lang_bytes"]
                if h["counters"]:
                    counters[i] = {k: int(v) for k, v in h["counters"].items()}
            pair_end[i] = len(p_lang)
        langs = sorted(set(p_lang))
        code = {lang: c for c, lang in enumerate(langs)}
        return cls(
            directory="", names=list(names), stat=stat, docs=docs, samples=samples, arrays=arrays, pair_end=pair_end,
            pair_lang=np.fromiter(map(code.__getitem__, p_lang), np.int32, len(p_lang)),
            pair_docs=np.asarray(p_docs, np.int64).reshape(-1), pair_bytes=np.asarray(p_bytes, np.int64).reshape(-1),
            langs=langs, counters=counters, present=np.array([ix is not None for ix in indexes], bool).reshape(-1),
            indexes=list(indexes),
        )  # fmt: skip

    # ---- the file -----------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        cols = [np.ascontiguousarray(getattr(self, k), dt).tobytes() for k, dt, _ in _COLUMNS]
        cols += [np.ascontiguousarray(getattr(self, k), dt).tobytes() for k, dt in _PAIRS]
        cols.append("\0".join(self.names).encode("utf-8"))
        at, pos = [], 0
        for c in cols:
            at.append(pos)
            pos = _align(pos + len(c))
        body = bytearray(pos)
        for off, c in zip(at, cols):
            body[off : off + len(c)] = c
        header = {
            "version": VERSION, "shards": self.n, "pairs": len(self.pair_lang), "langs": self.langs,
            "manifest": list(self.manifest_stat) if self.manifest_stat else None, "at": at, "names_bytes": len(cols[-1]),
            "counters": {str(i): c for i, c in sorted(self.counters.items())},
        }  # fmt: skip
        raw = json.dumps(header, sort_keys=True).encode()
        head = MAGIC + struct.pack("<Q", len(raw)) + raw
        blob = head + b"\0" * (_align(len(head)) - len(head)) + bytes(body)
        return blob + hashlib.sha256(blob).digest()

    @classmethod
    def from_bytes(cls, blob: bytes, directory: str) -> "SetHeads":
        """Parse heads.idx; ValueError when it is not one (damaged, cut, another version)."""
        if blob[:8] != MAGIC or len(blob) < 48:
            raise ValueError("not a heads.idx file (magic)")
        if hashlib.sha256(memoryview(blob)[:-32]).digest() != blob[-32:]:
            raise ValueError("sha256 does not match (damaged or cut)")
        (h,) = struct.unpack("<Q", blob[8:16])
        if h > len(blob) - 48:
            raise ValueError("header runs past the end")
        header = json.loads(blob[16 : 16 + h])
        if not isinstance(header, dict) or header.get("version") != VERSION:
            raise ValueError("another version")
        body = memoryview(blob)[_align(16 + h) : -32]
        n, p, at = int(header["shards"]), int(header["pairs"]), header["at"]
        out: dict[str, Any] = {}
        for (k, dt, w), off in zip(_COLUMNS, at):
            a = np.frombuffer(body, dt, n * w, off)
            out[k] = a.reshape(n, w) if w > 1 else a
        for (k, dt), off in zip(_PAIRS, at[len(_COLUMNS) :]):
            out[k] = np.frombuffer(body, dt, p, off)
        names = bytes(body[at[-1] : at[-1] + int(header["names_bytes"])]).decode("utf-8").split("\0") if n else []
        langs = [str(x) for x in header["langs"]]
        counters = {int(i): {str(k): int(v) for k, v in c.items()} for i, c in header["counters"].items()}
        _check(out, n, p, len(names), len(langs), counters)
        m = header["manifest"]
        return cls(
            directory=directory, names=names, langs=langs, counters=counters,
            manifest_stat=(int(m[0]), int(m[1])) if m else None, source=HEADS, **out,
        )  # fmt: skip

    def write(self) -> bool:
        """Save as DIRECTORY/heads.idx with the index files' current size and mtime; False (and
        nothing written) when the folder is not writable or a row is missing."""
        d = self.directory
        if not d or not os.access(d, os.W_OK) or (self.present is not None and not self.present.all()):
            return False
        self.stat[:, 2:] = stat_sizes([f"{p}{SUFFIX}" for p in self.paths()])
        if (self.stat < 0).any():  # an index kept in memory only, or a file gone meanwhile: nothing to check against
            return False
        try:
            atomic_write_bytes(os.path.join(d, HEADS), self.to_bytes())
        except OSError as e:  # a cache: the loader works without it
            log.warning("%s: could not write %s: %s", d, HEADS, e)
            return False
        return True


def _check(a: dict[str, np.ndarray], n: int, p: int, names: int, langs: int, counters: dict[int, dict[str, int]]) -> None:
    """What the loader relies on, checked: a file that passes its sha256 yet says otherwise was
    written by something else, and is not trusted."""
    pe = a["pair_end"]
    count = np.diff(pe, prepend=0)
    sums = np.concatenate([[0], np.cumsum(a["pair_docs"])])
    ok = (
        names == n and (int(pe[-1]) == p if n else p == 0) and not (count < 0).any()
        and not any((a[k] < 0).any() for k in ("docs", "samples", "arrays", "pair_docs", "pair_bytes", "pair_lang"))
        and (not p or int(a["pair_lang"].max()) < langs)
        and np.array_equal(sums[pe] - sums[pe - count], a["docs"])  # each shard's languages add up to its documents
        and all(0 <= i < n for i in counters)
    )  # fmt: skip
    if not ok:
        raise ValueError("inconsistent counts")


def _align(n: int) -> int:
    return (n + 7) // 8 * 8


def manifest_stat(directory: str) -> tuple[int, int] | None:
    st = stat_sizes([os.path.join(directory, MANIFEST)])[0]
    return (int(st[0]), int(st[1])) if st[0] >= 0 else None


def load_current(directory: str) -> SetHeads | None:
    """DIRECTORY/heads.idx when it still describes the set: manifest.json, every shard and every
    index file have the size and mtime it recorded. None when it is missing, damaged or stale
    (then start-up reads every header and writes a new one)."""
    path = os.path.join(directory, HEADS)
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("%s: %s; reading each shard's index instead", path, e)
        return None
    try:
        heads = SetHeads.from_bytes(blob, directory)
    except (ValueError, KeyError, TypeError, IndexError, struct.error, UnicodeDecodeError) as e:
        log.warning("%s: unreadable (%s); reading each shard's index instead", path, e)
        return None
    n, paths = heads.n, heads.paths()
    now = stat_sizes(paths + [f"{p}{SUFFIX}" for p in paths] + [os.path.join(directory, MANIFEST)])  # one C++ call
    if now[-1, 0] < 0 or heads.manifest_stat != (int(now[-1, 0]), int(now[-1, 1])):
        log.info("%s: %s changed since it was written; reading each shard's index", path, MANIFEST)
        return None
    if not (np.array_equal(now[:n], heads.stat[:, :2]) and np.array_equal(now[n : 2 * n], heads.stat[:, 2:])):
        log.info("%s: a shard or index changed since it was written; reading each shard's index", path)
        return None
    return heads
