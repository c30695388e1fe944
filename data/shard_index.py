"""The per-shard index: `NAME.tar.idx` next to each shard, so the loader never scans documents.

Written by the shard writer at import (it knows every offset as it writes), by `glotta data
index` for shard sets from elsewhere, and by the loader for a shard without a valid one. Its
sha256 is recorded in the manifest (`ShardInfo.index_sha256`). Layout (little-endian):

    b"GLTIDX\\0\\1"     8 bytes magic + version
    u64               length H of the header
    H bytes           JSON header: shard name and size, docs, samples read, langs, docs and
                      text bytes per language, the reader's counters, array offsets
    arrays            each 8-byte aligned, one entry per indexed document (has a .txt):
                      offset  u64   byte offset of the sample's first header
                      key_end u64   end of the key in the key blob
                      nbytes  u32   UTF-8 bytes of the text
                      by_lang u32   local document ids grouped by language (stable order)
                      lang    u16   index into the header's langs
                      keys    bytes every key, concatenated (UTF-8)

The header alone (a few hundred bytes) gives the loader the per-language counts it needs at
start-up, so start-up reads O(shards) metadata; the arrays are memory-mapped and only the pages
of documents a rank actually reads are touched. On disk: 30 bytes + the key per document.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glotta.data.manifest import ShardInfo, atomic_write_bytes, load_part, save_part
from glotta._native import MappedFile, index_heads, stat_sizes
from glotta.data.shards import PROBLEMS, add_reader_counters, check_expected, open_reader
from glotta.errors import DataError
from glotta.progress import track

log = logging.getLogger(__name__)

MAGIC = b"GLTIDX\x00\x01"
VERSION = 1
SUFFIX = ".idx"
_ARRAYS = (("offset", "<u8"), ("key_end", "<u8"), ("nbytes", "<u4"), ("by_lang", "<u4"), ("lang", "<u2"))
_MAX_TEXT = (1 << 32) - 1


def index_path(shard: str | Path) -> Path:
    return Path(f"{shard}{SUFFIX}")


@dataclass
class IndexBuilder:
    """Collects one shard's documents (the writer feeds it as it writes, a scan as it reads)."""

    offset: list[int] = field(default_factory=list)
    nbytes: list[int] = field(default_factory=list)
    lang: list[str] = field(default_factory=list)
    key: list[str] = field(default_factory=list)
    samples: int = 0  # every sample read, also those not indexed (no .txt, bad .json)
    counters: Counter = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)  # the first messages, naming shard and byte

    def add(self, key: str, offset: int, nbytes: int, lang: str) -> None:
        self.offset.append(offset)
        self.nbytes.append(nbytes)
        self.lang.append(lang)
        self.key.append(key)

    def to_bytes(self, shard_name: str, shard_bytes: int) -> bytes:
        n = len(self.key)
        langs = sorted(set(self.lang))
        code = {lang: i for i, lang in enumerate(langs)}
        lang = np.fromiter((code[x] for x in self.lang), np.uint16, n)
        by_lang = np.argsort(lang, kind="stable").astype(np.uint32)
        keys = [k.encode("utf-8") for k in self.key]
        nb = np.asarray(self.nbytes, np.uint64)
        cols = {
            "offset": np.asarray(self.offset, np.uint64),
            "key_end": np.cumsum(np.fromiter((len(k) for k in keys), np.uint64, n), dtype=np.uint64),
            "nbytes": nb.astype(np.uint32),
            "by_lang": by_lang,
            "lang": lang,
        }
        lang_docs = np.bincount(lang, minlength=len(langs))
        lang_bytes = np.bincount(lang, weights=nb.astype(np.float64), minlength=len(langs))
        blobs = [cols[k].astype(dt, copy=False).tobytes() for k, dt in _ARRAYS] + [b"".join(keys)]
        header: dict[str, Any] = {
            "version": VERSION, "shard": shard_name, "shard_bytes": int(shard_bytes), "docs": n,
            "samples": int(self.samples), "langs": langs, "lang_docs": [int(x) for x in lang_docs],
            "lang_bytes": [int(x) for x in lang_bytes], "counters": dict(sorted(self.counters.items())),
            "warnings": self.warnings[:5],
        }  # fmt: skip
        # Array offsets depend on the header length: grow the header until it is stable.
        header["arrays"] = {}
        while True:
            raw = json.dumps(header, sort_keys=True).encode()
            pos = _align(16 + len(raw))
            arrays = {}
            for (name, _), blob in zip(_ARRAYS + (("keys", "u1"),), blobs):
                arrays[name] = pos
                pos = _align(pos + len(blob))
            if arrays == header["arrays"]:
                break
            header["arrays"] = arrays
        out = bytearray(MAGIC + struct.pack("<Q", len(raw)) + raw)
        for (name, _), blob in zip(_ARRAYS + (("keys", "u1"),), blobs):
            out += b"\0" * (header["arrays"][name] - len(out)) + blob
        return bytes(out)


def _align(n: int) -> int:
    return (n + 7) // 8 * 8


class ShardIndex:
    """One shard's index: the header at once, the arrays memory-mapped on first use."""

    def __init__(self, path: str | Path | None, header: dict[str, Any] | None, blob: bytes | None = None):
        self.path, self._header = path, header  # a str from load_index (no Path per shard at start-up)
        self._blob = blob  # an index built in memory (shard folder not writable)
        self._cols: dict[str, np.ndarray] | None = None
        self._raw: Any = None  # the file's bytes: its mapping (MappedFile) or the blob
        self._starts: np.ndarray | None = None
        self._layout: tuple[int, int, int, int, int, int] | None = None
        self._set: Any = None  # (SetHeads, row) when made from heads.idx: the header is built on first use

    @classmethod
    def from_set(cls, path: str, heads: Any, row: int, layout: tuple[int, int, int, int, int, int]) -> "ShardIndex":
        """Row `row` of a shard set's heads.idx (data/set_heads.py), whose `layout` its caller
        gathered for all rows at once: no dict until one is asked for."""
        idx = cls(path, None)
        idx._set = (heads, row)
        idx._layout = layout
        return idx

    # ---- header -------------------------------------------------------------------------
    @property
    def header(self) -> dict[str, Any]:
        if self._header is None:
            heads, row = self._set
            self._header = heads.header_of(row)
        return self._header

    @header.setter
    def header(self, value: dict[str, Any]) -> None:
        self._header = value

    @property
    def docs(self) -> int:
        if self._header is None and self._set is not None:
            return self._layout[4]
        return int(self.header["docs"])

    @property
    def langs(self) -> list[str]:
        return list(self.header["langs"])

    @property
    def counters(self) -> dict[str, int]:
        return dict(self.header["counters"])

    @classmethod
    def read_header(cls, path: str | Path, missing_ok: bool = False) -> "ShardIndex | None":
        """The header (arrays stay on disk), read in C++ (csrc/index_heads.cpp; start-up reads
        every shard's at once, load_indexes). None when the file does not exist and missing_ok."""
        head = index_heads([os.fspath(path)])[0]
        if head is None:
            if missing_ok:
                return None
            raise DataError(f"{path}: unreadable shard index: no such file")
        return cls.from_head(path, head)

    @classmethod
    def from_head(cls, path: str | Path, head: bytes | str | dict) -> "ShardIndex":
        """From an item of index_heads: the header's JSON bytes (or that JSON parsed already), or
        the reason the file cannot be read (a DataError naming it)."""
        if isinstance(head, str):
            raise DataError(f"{path}: {head}")
        if isinstance(head, bytes):
            try:
                head = json.loads(head)
            except ValueError as e:
                raise DataError(f"{path}: unreadable shard index: {e}") from None
        if not isinstance(head, dict) or head.get("version") != VERSION:
            version = head.get("version") if isinstance(head, dict) else None
            raise DataError(f"{path}: shard index version {version!r}, expected {VERSION}")
        # Tuples, not lists: a header holding only tuples, strings and numbers is dropped from the
        # cyclic collector's lists at its first collection. A loader keeps one header per shard;
        # as lists they were 4 tracked containers a shard that made full collections come sooner
        # (with torch imported, one took 116 ms, and bench/loader.py's timed start-up on 938 shards
        # met one in most runs).
        for k in ("langs", "lang_docs", "lang_bytes"):
            if not isinstance(head.get(k), list):
                raise DataError(f"{path}: shard index header has no {k} list (damaged)")
            head[k] = tuple(head[k])
        return cls(path, head)

    @classmethod
    def from_bytes(cls, blob: bytes, path: Path | None = None) -> "ShardIndex":
        (n,) = struct.unpack("<Q", blob[8:16])
        return cls(path, json.loads(blob[16 : 16 + n]), blob)

    # ---- arrays -------------------------------------------------------------------------
    def _mapping(self) -> Any:
        """The whole file as a buffer: mapped through the LRU on first use, or the in-memory blob."""
        if self._raw is None:
            self._raw = self._blob if self._blob is not None else _MAPS.get(self.path, self)
        return self._raw

    def release_mapping(self) -> None:
        """Drop this index's hold on its mapping (the LRU calls it when it evicts the file)."""
        self._cols = self._raw = None

    def cols(self) -> dict[str, np.ndarray]:
        """Views into the mapping, kept until the LRU of mappings unmaps the file."""
        if self._cols is not None:
            return self._cols
        buf = self._mapping()
        n, at = self.docs, self.header["arrays"]
        try:
            cols = {name: np.frombuffer(buf, dt, n, at[name]) for name, dt in _ARRAYS}
            end = int(cols["key_end"][-1]) if n else 0
            cols["keys"] = np.frombuffer(buf, np.uint8, end, at["keys"])
            cols["raw"] = np.frombuffer(buf, np.uint8)  # the whole file, for lookup_index
        except (ValueError, KeyError) as e:
            raise DataError(f"{self.path}: shard index arrays do not fit the file (damaged): {e}") from None
        self._cols = cols  # dropped by the LRU when it unmaps the file
        return cols

    # An index this small is mapped on its first lookup whatever the task (a shard of up to ~5,000
    # documents): its pages in RSS are bounded by its size, and a mapping turns every later
    # lookup into memory reads. Larger ones are mapped only when a task reads them densely.
    SMALL = 256 << 10

    @property
    def layout(self) -> tuple[int, int, int, int, int, int]:
        """Where lookup_index finds the arrays: by_lang, offset, key_end and keys, the documents, nbytes."""
        if self._layout is None:
            at = self.header["arrays"]
            self._layout = (at["by_lang"], at["offset"], at["key_end"], at["keys"], self.docs, at["nbytes"])
        return self._layout

    def lookup_source(self, dense: bool) -> Any:
        """What lookup_index reads this index from: its bytes when it is mapped already (or was
        built in memory), small, or read densely by the task (then mapped through the LRU); None
        for pread, which maps nothing (a large index touched for a document or two). The mapping
        itself, not the array views of cols(): a fresh loader on 938 shards spent ~10 ms making
        seven views a shard that its lookups never use."""
        if self._raw is not None:  # mapped already: the common case, once per shard and task
            return self._raw
        if self._blob is None and not dense and self.layout[3] > self.SMALL:
            return None
        return self._mapping()

    def key(self, j: int, cols: dict[str, np.ndarray] | None = None) -> str:
        c = cols or self.cols()
        start = int(c["key_end"][j - 1]) if j else 0
        return c["keys"][start : int(c["key_end"][j])].tobytes().decode("utf-8")

    def keys(self) -> list[str]:
        c = self.cols()
        blob, ends = c["keys"].tobytes(), c["key_end"].tolist()
        return [blob[a:b].decode("utf-8") for a, b in zip([0] + ends[:-1], ends)]

    def lang_start(self, local_lang: int) -> int:
        """Where the language's documents start in `by_lang` (grouped by language, shard order)."""
        if self._starts is None:
            self._starts = np.concatenate([[0], np.cumsum(self.header["lang_docs"], dtype=np.int64)])
        return int(self._starts[local_lang])


class _MapCache:
    """An LRU of memory-mapped index files. A mapping (glotta._native.MappedFile) holds no file
    descriptor and is unmapped when its owner lets go of it (and of its arrays), so the bound is on mapped pages and
    address space, not on descriptors: at most `size` mappings and `max_bytes` of mapped index
    files together, which bounds the RSS their touched pages can add. A miss costs ~10 us (open,
    mmap, close, the array views) plus its page faults.

    Why bytes and not only a count: a task of 256 documents on 1,000 shards touches ~240 of
    them, twice (locate, then fetch). With a count of 128 nearly every lookup re-mapped a file:
    the loader's own thread spent 684 ms per epoch of a 938-shard set (9,372 documents), 0.33 of
    raw encode end to end; with every index mapped, 272 ms and 0.54. Small index files (a shard of
    a few thousand documents has ~100 KB) now all stay mapped; on shards of 10^5-10^6 documents
    (5-50 MB of index each) the byte bound keeps a handful, as before, and a rank's RSS from
    index pages stays below max_bytes whatever the shard count."""

    def __init__(self, size: int = 4096, max_bytes: int = 64 << 20):
        self.size, self.max_bytes = size, max_bytes
        self._maps: OrderedDict[Path, tuple[MappedFile, ShardIndex]] = OrderedDict()
        self._bytes = 0

    def get(self, path: Path, owner: ShardIndex) -> MappedFile:
        entry = self._maps.pop(path, None)
        if entry is None:
            entry = (MappedFile(str(path)), owner)
            self._bytes += len(entry[0])
            while self._maps and (len(self._maps) >= self.size or self._bytes > self.max_bytes):
                _, (old_map, old_owner) = self._maps.popitem(last=False)
                self._bytes -= len(old_map)
                old_owner.release_mapping()  # the mapping goes with the last view of it
        elif entry[1] is not owner:
            entry[1].release_mapping()
            entry = (entry[0], owner)
        self._maps[path] = entry
        return entry[0]


_MAPS = _MapCache()


# ---- building ---------------------------------------------------------------------------
def scan_shard(path: Path, strict: bool = False) -> IndexBuilder:
    """Read a shard once (no text copied) and collect its index entries and counters."""
    b = IndexBuilder()
    name = path.name

    def skip(reason: str, msg: str) -> None:
        if strict:
            raise DataError(msg)
        b.counters[reason] += 1
        if len(b.warnings) < 5:
            b.warnings.append(msg)
        log.warning(msg)

    reader = open_reader(path)
    try:
        while chunk := reader.scan(4096, "json"):
            if strict and any(v for k, v in reader.counters().items() if k in PROBLEMS):
                raise DataError("; ".join(reader.warnings()))
            b.samples += len(chunk)
            for key, start, sizes, meta in chunk:
                if "txt" not in sizes:
                    skip("missing_text", f"{name}/{key}: sample has no .txt member (has: {sorted(sizes)})")
                    continue
                if sizes["txt"] > _MAX_TEXT:
                    skip("too_large", f"{name}/{key}: text of {sizes['txt']} bytes (> 4 GiB) skipped")
                    continue
                lang = "und"
                if meta is None:
                    skip("missing_json", f"{name}/{key}: sample has no .json member (language unknown)")
                else:
                    try:
                        obj = json.loads(meta)
                        lang = (obj.get("lang") if isinstance(obj, dict) else None) or "und"
                    except (json.JSONDecodeError, UnicodeDecodeError) as e:
                        skip("bad_json", f"{name}/{key}: .json is not valid JSON: {e}")
                        continue
                b.add(key, start, sizes["txt"], str(lang))
        if strict and any(v for k, v in reader.counters().items() if k in PROBLEMS):
            raise DataError("; ".join(reader.warnings()))
        for w in reader.warnings()[:3]:
            log.warning("%s", w)
        b.warnings = (reader.warnings() + b.warnings)[:5]
        add_reader_counters(b.counters, reader)
        b.counters.pop("skipped_bytes", None)  # a size, not a count: kept out of document counters
    finally:
        reader.close()
    return b


def write_index(shard: Path, builder: IndexBuilder) -> tuple[Path, str]:
    """Write NAME.tar.idx atomically; returns its path and sha256 (for the manifest)."""
    blob = builder.to_bytes(shard.name, shard.stat().st_size)
    path = index_path(shard)
    atomic_write_bytes(path, blob)
    return path, hashlib.sha256(blob).hexdigest()


def load_index(
    shard: Path, expected: ShardInfo | None = None, strict: bool = False, write: bool = True, size: int | None = None
) -> ShardIndex:
    """The shard's index: its side file when it matches the shard, else built by one scan (and
    written next to the shard when the folder is writable, else kept in memory). `size`: the
    shard's size when the caller has just stat-ed it (start-up does, for its cache key)."""
    path = f"{os.fspath(shard)}{SUFFIX}"  # strings, not Paths: ~10 us a shard at start-up
    if size is None:
        size = os.stat(shard).st_size
    return _reuse_or_build(shard, expected, strict, write, size, index_heads([path])[0])


def load_indexes(
    shards: list[tuple[str | Path, ShardInfo | None]], sizes: list[int | None], strict: bool = False, names: list[str] | None = None
) -> list["ShardIndex | OSError"]:
    """load_index for many shards (start-up), with every index header read in one C++ call and
    parsed by one json.loads; a shard that cannot be read gives its OSError in its place.
    `sizes`: each shard's size, stat-ed by the caller (None or -1: stat here); `names`: each
    shard's file name, if the caller has them."""
    paths = [os.fspath(p) for p, _ in shards]
    heads = index_heads([p + SUFFIX for p in paths])
    good = [h for h in heads if isinstance(h, bytes)]
    try:  # one parse of all of them: ~40% less than a json.loads each
        parsed = json.loads(b"[" + b",".join(good) + b"]")
    except ValueError:  # a damaged header among them: each is parsed (and named) on its own
        parsed = None
    # A damaged header can also parse as two values (`{..}, {..}`): then the count differs, and
    # each is parsed on its own too. (Each header is also checked against its own shard's name
    # and size before it is used.)
    if isinstance(parsed, list) and len(parsed) == len(good):
        it = iter(parsed)
        heads = [next(it) if isinstance(h, bytes) else h for h in heads]
    out: list[ShardIndex | OSError] = []
    items = zip(paths, (e for _, e in shards), sizes, heads, names or [os.path.basename(p) for p in paths])
    for shard, expected, size, head, name in track(items, "index shards", total=len(shards)) if len(shards) > 50 else items:
        try:
            if size is None or size < 0:  # the caller's stat failed: this one raises why
                size = os.stat(shard).st_size
            out.append(_reuse_or_build(shard, expected, strict, True, size, head, name))
        except OSError as e:
            out.append(e)
    return out


def _reuse_or_build(
    shard: str | Path, expected: ShardInfo | None, strict: bool, write: bool, size: int, head: bytes | str | dict | None,
    name: str | None = None,
) -> ShardIndex:
    """The index whose header is `head` (an index_heads item) when it matches the shard, else one
    built by a scan."""
    path = f"{os.fspath(shard)}{SUFFIX}"
    try:
        if head is not None:
            idx = ShardIndex.from_head(path, head)
            if idx.header["shard_bytes"] == size and idx.header["shard"] == (name or os.path.basename(path[: -len(SUFFIX)])):
                return _checked(idx, shard, expected, strict)
            log.warning("%s: stale (the shard changed since it was indexed); rebuilding", path)
    except DataError as e:
        log.warning("%s; rebuilding", e)
    shard = Path(shard)
    builder = scan_shard(shard, strict)
    if write and os.access(shard.parent, os.W_OK):
        written, _ = write_index(shard, builder)
        return _checked(ShardIndex.read_header(written), shard, expected, strict)
    return _checked(ShardIndex.from_bytes(builder.to_bytes(shard.name, size)), shard, expected, strict)


# Index counters that mean a document was lost or damaged (strict turns them into errors).
STRICT = PROBLEMS | {"missing_text", "missing_json", "bad_json", "too_large"}


def _checked(idx: ShardIndex, shard: Path, expected: ShardInfo | None, strict: bool) -> ShardIndex:
    """Compare with the manifest entry: a clean cut at a block boundary is only visible there.
    With strict, a reused index that recorded problems fails like a fresh scan would."""
    if strict and any(v for k, v in idx.counters.items() if k in STRICT):
        shown = "; ".join(idx.header.get("warnings") or [str(idx.counters)])
        raise DataError(f"{shard}: {shown}")
    if expected is None:
        return idx
    extra: dict[str, int] = {}  # not a Counter: its construction was 3 us a shard of start-up

    def skip(reason: str, msg: str, n: int = 1) -> None:
        if strict:
            raise DataError(msg)
        extra[reason] = extra.get(reason, 0) + n
        log.warning(msg)

    check_expected(shard, expected, int(idx.header["shard_bytes"]), int(idx.header["samples"]), skip)
    if extra:
        idx.header["counters"] = dict(Counter(idx.header["counters"]) + Counter(extra))
    return idx


# ---- `glotta data index` ----------------------------------------------------------------
@dataclass
class IndexReport:
    path: str
    shards: int = 0
    built: int = 0  # indexes written by this run (missing, stale or --force)
    reused: int = 0  # indexes that already matched their shard
    docs: int = 0
    manifest: str = ""  # "updated" (index hashes added), "written" (none existed), "unchanged", or "left to the last rank"
    heads: str = ""  # heads.idx (every header in one file, data/set_heads.py): "written", "not written" or "left to the last rank"
    counters: dict[str, int] = field(default_factory=dict)
    rank: int = 0
    world_size: int = 1

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


INDEX_PARTS_DIR = "index.d"  # per-rank results of a multi-rank `glotta data index`, merged by the last rank


def index_shard_set(
    directory: str | Path, force: bool = False, strict: bool = False, rank: int | None = None, world_size: int | None = None
) -> IndexReport:
    """Write (or refresh) NAME.tar.idx for every shard of a set and record the index hashes in
    manifest.json. A set without manifest.json (shards from elsewhere) gets one from the scan,
    so the loader can later check truncations against it.

    Work is split by RANK/WORLD_SIZE (torchrun) or SLURM_PROCID/SLURM_NTASKS: rank r indexes
    shards r, r + W, r + 2W, ... and saves what the manifest needs of them in `index.d/`; the
    rank that finds every part present and current writes manifest.json (so no rank waits on
    another). A rerun of a rank reuses its indexes that still match their shards."""
    from glotta.data.importer import rank_world
    from glotta.data.manifest import MANIFEST, Manifest, sha256_file
    from glotta.data.shards import shard_entries
    from glotta.progress import track

    rank, world = rank_world(rank, world_size)
    d = Path(directory)
    entries = shard_entries(d)
    had_manifest = (d / MANIFEST).is_file()
    mine = entries[rank::world]
    rep = IndexReport(str(d), shards=len(mine), rank=rank, world_size=world)
    counters: Counter = Counter()
    infos: list[ShardInfo] = []
    checked: list[ShardIndex] = []  # this rank's headers, for heads.idx
    shard_stat = stat_sizes([os.fspath(p) for p, _ in mine])  # before the headers: a later change makes heads.idx stale
    for shard, expected in track(mine, f"index {d.name}" + (f" (rank {rank}/{world})" if world > 1 else "")):
        path = index_path(shard)
        fresh = False
        if not force and path.is_file():
            try:
                h = ShardIndex.read_header(path).header
                fresh = h["shard_bytes"] == shard.stat().st_size and h["shard"] == shard.name
            except DataError:
                fresh = False
        if fresh:
            rep.reused += 1
        else:
            write_index(shard, scan_shard(shard, strict))
            rep.built += 1
        idx = _checked(ShardIndex.read_header(path), shard, expected, strict)
        checked.append(idx)
        counters.update(idx.counters)
        rep.docs += idx.docs
        info = expected or ShardInfo(name=shard.name)
        if expected is None:  # from the scan: what the manifest of an import would say
            info.samples = int(idx.header["samples"])
            info.file_bytes = shard.stat().st_size
            info.sha256 = sha256_file(shard)
            info.langs = {lang: {"samples": int(n), "bytes": int(b)}
                          for lang, n, b in zip(idx.langs, idx.header["lang_docs"], idx.header["lang_bytes"])}  # fmt: skip
            info.bytes = sum(e["bytes"] for e in info.langs.values())
        info.index_sha256 = sha256_file(path)
        infos.append(info)
    rep.counters = {k: int(v) for k, v in sorted(counters.items()) if v}
    if world > 1:
        merged = _merge_index_parts(d, rank, world, entries, infos, counters)
        if merged is None:
            rep.manifest = rep.heads = "left to the last rank"
            return rep
        infos, counters = merged
    if had_manifest:
        manifest = Manifest.load(d)
        before = [s.index_sha256 for s in manifest.shards]
        manifest.shards = infos
        rep.manifest = "unchanged" if before == [s.index_sha256 for s in infos] else "updated"
    else:
        manifest = Manifest(shards=infos, meta={"command": "glotta data index", "counters": dict(counters)})
        rep.manifest = "written"
    if rep.manifest != "unchanged":
        manifest.save(d)
    if world > 1:
        shutil.rmtree(d / INDEX_PARTS_DIR, ignore_errors=True)  # merged: a later run starts clean
    # Every header in one file for the loader's start-up: from the headers just read on one
    # rank; the last of several reads them all again (the others' were read elsewhere).
    from glotta.data.corpus_index import write_heads  # (corpus_index imports this module)
    from glotta.data.set_heads import SetHeads, manifest_stat

    if world == 1:
        heads = SetHeads.from_indexes([p.name for p, _ in mine], checked, shard_stat)
        heads.directory, heads.manifest_stat = str(d), manifest_stat(str(d))
        done = heads.write()
    else:
        done = write_heads(d, strict)
    rep.heads = "written" if done else "not written (folder not writable)"
    return rep


def _stamp(shard: Path) -> list[int]:
    """What says a part still describes the files: shard size, index size and mtime."""
    i = index_path(shard).stat()
    return [shard.stat().st_size, i.st_size, i.st_mtime_ns]


def _merge_index_parts(d: Path, rank: int, world: int, entries, infos, counters):
    """Save this rank's part; when every rank's part is there and still matches the files (a
    stat per shard), return all ranks' (infos in manifest order, summed counters), else None."""
    names = [p.name for p, _ in entries]
    mine = [p for p, _ in entries[rank::world]]
    part = {"complete": True, "names_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest(),
            "shards": [asdict(i) for i in infos], "stamps": [_stamp(p) for p in mine], "counters": dict(counters)}  # fmt: skip
    save_part(d, rank, world, part, parts_dir=INDEX_PARTS_DIR)
    by_name: dict[str, ShardInfo] = {}
    total: Counter = Counter()
    for r in range(world):
        other = part if r == rank else load_part(d, r, world, parts_dir=INDEX_PARTS_DIR)
        if other is None or other.get("names_sha256") != part["names_sha256"]:
            return None
        theirs = [p for p, _ in entries[r::world]]
        if r != rank and other["stamps"] != [_stamp(p) if index_path(p).is_file() else None for p in theirs]:
            return None  # that rank's shards or indexes changed since it ran: it must run again
        by_name.update((s["name"], ShardInfo(**s)) for s in other["shards"])
        total.update(other["counters"])
    return [by_name[n] for n in names], total
