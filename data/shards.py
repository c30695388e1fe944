"""Text shards: webdataset tars where one sample is `KEY.txt` (UTF-8) + `KEY.json` (metadata).

Writing builds the tar members directly (ustar headers, pax for long names, fixed mtime/owner
so reruns are byte identical) into a temporary name that is renamed when the shard is
complete, with its per-shard index next to it. Reading goes
through the C++ reader in glotta._native; this module turns its raw members into `Sample`s
and applies the error policy (count and skip, or raise with --strict).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from glotta.data.manifest import MANIFEST, Manifest, ShardInfo, sha256_file
from glotta.data.native import TarError, TarReader, tar_sample
from glotta.errors import DataError

log = logging.getLogger(__name__)

_json_decode = json.JSONDecoder().decode  # skips json.loads' per-call encoding sniffing
# json.dumps(meta, ensure_ascii=False, sort_keys=True) builds a new encoder on every call (any
# non-default argument does); one encoder made once gives the same bytes.
_META_JSON = json.JSONEncoder(ensure_ascii=False, sort_keys=True).encode
KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*$")


@dataclass
class Sample:
    key: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)
    shard: str = ""  # shard file name, set by the reader (exclude lists use "shard.tar/KEY")

    @property
    def lang(self) -> str:
        return self.meta.get("lang") or "und"

    @property
    def id(self) -> str:
        return f"{self.shard}/{self.key}"


def shard_name(prefix: str, rank: int, index: int) -> str:
    return f"{prefix}-{rank:05d}-{index:06d}.tar"


_ZEROS = bytes(1024)


class ShardWriter:
    """Rolls over to a new shard after `max_samples` samples or `max_bytes` text bytes.

    Members are built in C++ (csrc/tar_write.cpp: ustar headers, pax only for long names), not
    through Python's tarfile, which spent most of the import's time building headers; the
    output is a standard tar that tarfile and webdataset read unchanged. Each shard gets its
    index (`NAME.tar.idx`, data/shard_index.py) from the offsets recorded while writing, and
    both are written under temporary names and renamed when complete.
    `on_shard(info)` is called after each shard is renamed into place (resume bookkeeping).
    """

    def __init__(
        self,
        out_dir: str | Path,
        prefix: str = "shard",
        rank: int = 0,
        max_samples: int = 10_000,
        max_bytes: int = 256 << 20,
        start_index: int = 0,
        on_shard=None,
    ):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix, self.rank = prefix, rank
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.index = start_index
        self.on_shard = on_shard
        self.written: list[ShardInfo] = []
        self._f = None
        self._info: ShardInfo | None = None
        self._keys: set[str] = set()

    def _open(self) -> None:
        from glotta.data.shard_index import IndexBuilder

        name = shard_name(self.prefix, self.rank, self.index)
        self._tmp = self.out_dir / f".{name}.tmp-{os.getpid()}"
        self._f = open(self._tmp, "wb", buffering=1 << 20)
        self._pos = 0
        self._info = ShardInfo(name=name)
        self._keys = set()
        self._idx = IndexBuilder()

    def write(self, sample: Sample, utf8: bytes | None = None) -> None:
        """Append one sample. `utf8`: sample.text already encoded by the caller (the importer
        encodes once for its hash and the shard), else encoded here."""
        if not KEY_RE.match(sample.key):
            raise DataError(f"invalid key {sample.key!r}: use letters, digits, '_', '-' and '/' (no dots)")
        if self._f is None:
            self._open()
        if sample.key in self._keys:
            raise DataError(f"duplicate key {sample.key!r} in shard {self._info.name}")
        self._keys.add(sample.key)
        text = sample.text.encode("utf-8") if utf8 is None else utf8
        meta = _META_JSON(sample.meta).encode("utf-8")
        lang = sample.meta.get("lang") or "und"
        data = tar_sample(sample.key, [("txt", text), ("json", meta)])  # C++: headers, padding, checksums
        self._idx.add(sample.key, self._pos, len(text), str(lang))
        self._idx.samples += 1
        self._f.write(data)
        self._pos += len(data)
        self._info.add(lang, len(text))
        if self._info.samples >= self.max_samples or self._info.bytes >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        """Finish the current shard (if any): end blocks, fsync, hash, index, rename into place."""
        if self._f is None:
            return
        from glotta.data.manifest import atomic_write_bytes
        from glotta.data.shard_index import index_path

        end = _ZEROS + bytes(-(self._pos + 1024) % 10240)  # tarfile's end: 2 zero blocks, 10 KiB records
        self._f.write(end)
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        self._f = None
        final = self.out_dir / self._info.name
        self._info.file_bytes = self._pos + len(end)
        self._info.sha256 = sha256_file(self._tmp)
        blob = self._idx.to_bytes(self._info.name, self._info.file_bytes)
        self._info.index_sha256 = hashlib.sha256(blob).hexdigest()
        atomic_write_bytes(index_path(final), blob)  # before the shard: a shard in place always has its index
        os.replace(self._tmp, final)
        self.written.append(self._info)
        if self.on_shard is not None:
            self.on_shard(self._info)
        self._info = None
        self.index += 1

    def close(self) -> list[ShardInfo]:
        self.flush()
        return self.written

    def abort(self) -> None:
        """Drop the unfinished shard (after an error) so no partial file is left behind."""
        if self._f is not None:
            self._f.close()
            self._tmp.unlink(missing_ok=True)
            self._f = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def load_manifest(d: Path, verify: bool = False) -> Manifest:
    """A shard set's manifest.json; with `verify`, every shard is checked against it first and a
    mismatch is one DataError listing each shard at fault."""
    manifest = Manifest.load(d)
    if verify:
        problems = manifest.verify(d)
        if problems:
            raise DataError(f"{len(problems)} shard(s) do not match {d / MANIFEST}:\n  " + "\n  ".join(problems))
    return manifest


def list_shards(directory: str | Path, verify: bool = False) -> list[Path]:
    """Shards of a set in order: from manifest.json when present, else every *.tar (sorted)."""
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"shard directory not found: {d}")
    if (d / MANIFEST).is_file():
        return [d / s.name for s in load_manifest(d, verify).shards]
    shards = sorted(p for p in d.glob("*.tar") if not p.name.startswith("."))
    packed = sorted(p.name for pat in COMPRESSED for p in d.glob(pat) if not p.name.startswith("."))
    if packed and not shards:
        raise DataError(f"{d}: unsupported: compressed shards ({', '.join(packed[:3])}); glotta reads plain .tar shards")
    if packed:
        log.warning("%s: %d compressed shard(s) ignored (unsupported: compressed shard): %s", d, len(packed), packed[:3])
    if not shards:
        raise DataError(f"{d}: no *.tar shards and no {MANIFEST}")
    return shards


def shard_entries(directory: str | Path) -> list[tuple[Path, ShardInfo | None]]:
    """list_shards with each shard's manifest entry (None without manifest.json)."""
    d = Path(directory)
    if d.is_dir() and (d / MANIFEST).is_file():  # parsed once (10,000 shards: a few MB of JSON at start-up)
        return [(d / s.name, s) for s in Manifest.load(d).shards]
    return [(p, None) for p in list_shards(d)]


Utf8Policy = Literal["replace", "skip"]
COMPRESSED = ("*.tar.gz", "*.tgz", "*.tar.zst", "*.tar.bz2", "*.tar.xz", "*.tar.lz4")


def iter_samples(
    path: str | Path,
    counters: Counter | None = None,
    strict: bool = False,
    utf8: Utf8Policy = "replace",
    offset: int = 0,
    batch: int = 256,
    expected: ShardInfo | None = None,
) -> Iterator[Sample]:
    """Samples of one shard. Problems are counted in `counters` (or raised when strict).

    Damage never ends a shard silently: the reader skips to the next valid header and counts
    what it skipped (see csrc/tar.cpp); a half sample is counted (`missing_text`, skipped, or
    `missing_json`, kept as language `und`). With `expected` (the shard's manifest entry) a
    shard that holds fewer samples than the manifest says counts the difference as
    `lost_documents`. A compressed shard is an error ("unsupported: compressed shard").
    With strict=True every counted problem raises DataError.
    """
    counters = counters if counters is not None else Counter()
    path = Path(path)
    name = path.name
    skip = counting_skip(counters, strict)
    reader = open_counted(path, skip)
    if reader is None:
        return
    seen = 0
    try:
        if offset:
            reader.seek(offset)
        while True:
            raw = reader.read(batch)
            raise_if_damaged(reader, path, strict)
            if not raw:
                break
            seen += len(raw)
            for key, fields in raw:
                sample = _decode(name, key, fields, counters, skip, utf8)
                if sample is not None:
                    counters["samples"] += 1
                    yield sample
        if expected is not None and not offset:
            check_expected(path, expected, reader.size, seen, skip)
    finally:
        close_counted(counters, reader)


# Reader counters that mean data was damaged or dropped (the rest are skips by design).
PROBLEMS = frozenset(
    {"skipped_unsafe_name", "skipped_no_extension", "bad_name", "bad_pax", "misplaced_member",
     "duplicate_member", "damaged", "truncated"}
)  # fmt: skip


def open_reader(path: str | Path, sequential: bool = True, mapped: bool | None = None) -> TarReader:
    """A TarReader; a compressed shard is a DataError naming it, never a 'corrupt' skip.
    sequential=False: document-by-document reads, pread until the reader has served 32 documents,
    then through a mapping; mapped=False preads always (the loader's workers), True maps at once
    (csrc/tar.cpp)."""
    try:
        return TarReader(str(path), sequential, mapped)
    except TarError as e:  # the only TarError the constructor raises: a compressed stream
        raise DataError(str(e)) from None


# ---- iter_samples' error policy, shared by every pass that reads shards sample by sample ----
def counting_skip(counters: Counter, strict: bool):
    """skip(reason, msg, n=1): count the problem under `reason` and log it, or raise DataError
    when strict."""

    def skip(reason: str, msg: str, n: int = 1) -> None:
        if strict:
            raise DataError(msg)
        counters[reason] += n
        log.warning(msg)

    return skip


def open_counted(path: Path, skip) -> TarReader | None:
    """The shard's reader, or None after counting it as `unreadable_shard` (a compressed shard
    still raises: open_reader's DataError names it)."""
    try:
        return open_reader(path)
    except (OSError, RuntimeError) as e:
        skip("unreadable_shard", f"{path}: {e}")
        return None


def raise_if_damaged(reader: TarReader, path: Path, strict: bool) -> None:
    """strict: damage the reader counted (PROBLEMS) so far is an error naming the shard."""
    if strict and any(v for k, v in reader.counters().items() if k in PROBLEMS):
        raise DataError("; ".join(reader.warnings() or [f"{path}: {reader.counters()}"]))


def close_counted(counters: Counter, reader: TarReader) -> None:
    """End of a pass: the reader's own counters and warnings join the caller's; the mapping goes."""
    add_reader_counters(counters, reader)
    for w in reader.warnings():
        log.warning("%s", w)
    reader.close()


def add_reader_counters(counters: Counter, reader: TarReader) -> None:
    for k, v in reader.counters().items():
        if v:
            counters[k] += v


def check_expected(path: Path, expected: ShardInfo, file_bytes: int, seen: int, skip) -> None:
    """Compare what the shard held with its manifest entry: a cut at a block boundary leaves a
    valid-looking archive, only the manifest's sample and byte counts reveal it."""
    if expected.file_bytes and file_bytes != expected.file_bytes:
        skip("size_mismatch", f"{path}: {file_bytes} bytes, {MANIFEST} says {expected.file_bytes} (truncated or replaced?)")
    if seen < expected.samples:
        lost = expected.samples - seen
        skip("lost_documents", f"{path}: {seen} samples read, {MANIFEST} lists {expected.samples}: {lost} lost", lost)


def _decode(shard: str, key: str, fields: dict[str, bytes], counters: Counter, skip, utf8: Utf8Policy):
    where = f"{shard}/{key}"
    if "txt" not in fields:
        skip("missing_text", f"{where}: sample has no .txt member (has: {sorted(fields)})")
        return None
    if "json" not in fields:  # a half sample: kept (the text is intact) as language 'und', counted
        skip("missing_json", f"{where}: sample has no .json member (language unknown)")
    raw = fields["txt"]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if utf8 == "skip":
            skip("invalid_utf8", f"{where}: invalid UTF-8 at byte {e.start}; skipped")
            return None
        counters["utf8_replaced"] += 1
        text = raw.decode("utf-8", errors="replace")
    meta: dict[str, Any] = {}
    if "json" in fields:
        try:
            meta = _json_decode(fields["json"].decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            skip("bad_json", f"{where}: .json is not valid JSON: {e}")
            return None
        if not isinstance(meta, dict):
            skip("bad_json", f"{where}: .json must hold an object")
            return None
    return Sample(key=key, text=text, meta=meta, shard=shard)
