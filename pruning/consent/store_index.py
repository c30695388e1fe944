"""The snapshot store indexed by origin: Parquet files partitioned by a stable hash of the origin,
so a rank of `consent filter` loads only the buckets its documents touch, a few at a time.

Layout: `<store>/index/bucket-BBBBB.parquet` (one row per capture, every Snapshot field) and
`<store>/index/meta.json` (`buckets`, `fingerprint` of the JSONL parts it was built from). The
index is rebuilt when the JSONL parts change (fetch and import append JSONL; the index follows).

Cost model (docs/consent.md): 10^6 origins x ~3 captures x ~4 KiB robots.txt = ~12 GiB of JSONL
-> ~4 GiB of zstd Parquet in 1,024 buckets of ~4 MiB (one bucket per ~1,000 origins). A rank
loads only the buckets its documents touch; with `max_buckets` below the bucket count it also
evicts (least recently loaded first), which pays off when documents come grouped by origin.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from collections import OrderedDict
from dataclasses import fields
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from glotta.data.manifest import atomic_write_text
from glotta.config import StrictModel
from glotta.errors import ConfigError, DataError
from glotta.pruning.consent.snapshots import Snapshot, SnapshotStore
from glotta.pruning.consent.urls import owner

INDEX = "index"
log = logging.getLogger(__name__)
FIELDS = [f.name for f in fields(Snapshot)]
SCHEMA = pa.schema([(f.name, pa.int64() if f.type in ("int", int) else pa.string()) for f in fields(Snapshot)])


def store_hash(store: Path) -> str:
    """sha256 over the JSONL parts: name, size and the first and last 64 KiB of each. Appends
    (fetch, import) change the size and the tail; copies keep it (unlike mtimes); reading the
    whole store (~12 GiB at 10^6 origins) on every filter start would cost more than the check."""
    h = hashlib.sha256()
    for f in sorted(Path(store).glob("*.jsonl")):
        size = f.stat().st_size
        h.update(f"{f.name}\0{size}\0".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 16))
            if size > 1 << 17:
                fh.seek(size - (1 << 16))
            h.update(fh.read(1 << 16))
    return h.hexdigest()


def index_state(store: Path) -> tuple[str, dict]:
    """('missing' | 'stale' | 'current', the index's meta.json or {})."""
    meta_path = Path(store) / INDEX / "meta.json"
    if not meta_path.is_file():
        return "missing", {}
    meta = json.loads(meta_path.read_text())
    return ("current" if meta.get("store_hash") == store_hash(store) else "stale"), meta


def index_current(store: Path) -> bool:
    return index_state(store)[0] == "current"


def stale_message(store: Path, meta: dict) -> str:
    if "store_hash" not in meta:
        why = "it was built by an older glotta, without a store hash"
    else:
        why = (f"it was built from another state of the store (index of {meta['store_hash'][:12]}, store now "
               f"{store_hash(store)[:12]}: JSONL parts were added or changed since it was built)")
    return f"{store}/{INDEX} is stale: {why}. Rebuild it once, before the filter: glotta consent index --store {store}"


def _lines(store: Path, torn: list[int]):
    """(file, line number, text) of every capture line, parts in name order (SnapshotStore.load's
    order, so the later of two lines for one origin and date still wins); torn last lines counted."""
    for file in sorted(store.glob("*.jsonl")):
        with open(file, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if not line.endswith("\n"):  # the torn last line of a killed fetch
                    torn[0] += 1
                    continue
                yield file, n, line


_ORIGIN = re.compile(r'\{"origin": "([^"\\]*)"')  # how SnapshotStore.append writes a line


def _origin_of(file: Path, n: int, line: str) -> str:
    """The origin of a capture line without parsing the rest (its body can be 500 KiB)."""
    m = _ORIGIN.match(line)
    return m.group(1) if m else _snapshot(file, n, line).origin


def _snapshot(file: Path, n: int, line: str) -> Snapshot:
    try:
        return Snapshot(**json.loads(line))
    except (json.JSONDecodeError, TypeError) as e:
        raise DataError(f"{file}:{n}: not a snapshot record: {e}") from None


def build_index(store: Path, buckets: int | None = None, spill_bytes: int = 256 << 20) -> dict:
    """JSONL parts -> Parquet buckets by origin hash (written aside, then renamed into place).
    Default bucket count: one per ~1,000 origins, at most 1,024.

    Streaming, so a 10^6-origin store (~12 GiB of JSONL) never sits in memory: pass 1 counts
    origins (8-byte hashes) and dates; pass 2 routes each line to its bucket, spilling buffered
    lines to per-bucket files past `spill_bytes`; then each bucket is sorted and written alone."""
    store = Path(store)
    if not store.is_dir():
        raise DataError(f"{store}: the origin index needs a store directory")
    t0 = time.monotonic()
    fp = store_hash(store)
    hashes: set[int] = set()
    captures, first, last, torn = 0, None, None, [0]
    for file, n, line in _lines(store, torn):
        hashes.add(owner(_origin_of(file, n, line), 1 << 63))
    origins = len(hashes)
    del hashes
    if buckets is None:
        buckets = max(1, min(1024, origins // 1000))
    tmp = store / f".{INDEX}.tmp{time.time_ns()}"
    tmp.mkdir()
    held: list[list[str]] = [[] for _ in range(buckets)]
    held_bytes, spilled = 0, set()

    def spill() -> None:
        for b, lines in enumerate(held):
            if lines:
                with open(tmp / f"spill-{b:05d}.jsonl", "a", encoding="utf-8") as f:
                    f.writelines(lines)
                spilled.add(b)
                lines.clear()

    for file, n, line in _lines(store, [0]):
        held[owner(_origin_of(file, n, line), buckets)].append(line)
        held_bytes += len(line)
        if held_bytes > spill_bytes:
            spill()
            held_bytes = 0
    for b in range(buckets):
        lines = held[b]
        if b in spilled:  # spilled lines came first: keep the global order
            path = tmp / f"spill-{b:05d}.jsonl"
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True) + lines
            path.unlink()
        part = SnapshotStore([_snapshot(tmp, i, line) for i, line in enumerate(lines, 1)])  # sorted per origin
        held[b] = []
        snaps = [x for lst in part.by_origin.values() for x in lst]
        captures += len(snaps)
        for lst in part.by_origin.values():
            first = lst[0].date if first is None or lst[0].date < first else first
            last = lst[-1].date if last is None or lst[-1].date > last else last
        cols = {name: [getattr(x, name) for x in snaps] for name in FIELDS}
        pq.write_table(pa.table(cols, schema=SCHEMA), tmp / f"bucket-{b:05d}.parquet", compression="zstd")
    meta = {"buckets": buckets, "store_hash": fp, "captures": captures, "origins": origins,
            "torn_lines": torn[0], "parts": len(list(store.glob("*.jsonl"))), "first_date": first, "last_date": last,
            "spilled_buckets": len(spilled)}
    atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=1) + "\n")
    old = store / INDEX
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
    try:
        tmp.rename(old)
    except OSError:  # another rank renamed its (identical) index first
        shutil.rmtree(tmp, ignore_errors=True)
    return meta | {"seconds": round(time.monotonic() - t0, 2), "index": str(old)}


def wait_for_index(store: Path, timeout_s: float) -> None:
    """Ranks other than 0 wait for rank 0 to build a missing index."""
    deadline = time.monotonic() + timeout_s
    while True:
        state, meta = index_state(store)
        if state == "current":
            return
        if state == "stale":
            raise DataError(stale_message(store, meta))
        if time.monotonic() > deadline:
            raise DataError(f"{store}/{INDEX}: not built after {timeout_s:g} s (rank 0 builds a missing one; "
                            f"or run `glotta consent index --store {store}` first)")
        time.sleep(0.5)


class IndexedStore(SnapshotStore):
    """A SnapshotStore that loads an origin's bucket on first use and keeps at most `max_buckets`
    buckets (least recently loaded first out), with their parsed robots.txt."""

    def __init__(self, store: Path, max_buckets: int = 1024):
        super().__init__()
        self.root = Path(store) / INDEX
        meta = json.loads((self.root / "meta.json").read_text())
        self.buckets = int(meta["buckets"])
        self.torn_lines = int(meta.get("torn_lines", 0))
        self.max_buckets = max_buckets
        self.loaded: OrderedDict[int, list[str]] = OrderedDict()  # bucket -> its origins
        self.bucket_loads = 0

    def _ensure(self, origin: str) -> None:
        if origin in self.by_origin:  # its bucket is loaded (evicting a bucket drops its origins)
            return
        b = owner(origin, self.buckets)
        if b in self.loaded:
            return
        if len(self.loaded) >= self.max_buckets:
            _, gone = self.loaded.popitem(last=False)
            for o in gone:
                for s in self.by_origin.pop(o, []):
                    self._robots.pop(s.id, None)
                    self._tdm.pop(s.id, None)
                self._dates.pop(o, None)
        t = pq.read_table(self.root / f"bucket-{b:05d}.parquet")
        origins = []
        for row in t.to_pylist():
            snap = Snapshot(**row)
            if snap.origin not in self.by_origin:
                origins.append(snap.origin)
            self.add(snap)
        self.loaded[b] = origins
        self.bucket_loads += 1

    def at(self, origin: str, date: str | None):
        self._ensure(origin)
        return super().at(origin, date)

    def __len__(self) -> int:
        return json.loads((self.root / "meta.json").read_text())["captures"]


def open_store(store: Path, rank: int = 0, world_size: int = 1, lazy: bool = True, wait_s: float = 3600.0,
               max_buckets: int = 1024) -> SnapshotStore:
    """The store for one rank: through its origin index, or whole (lazy=False, or a single .jsonl
    file). A missing index is built by rank 0 (the others wait); a stale one is refused:
    `glotta consent index` rebuilds it, so a fetch still appending cannot change decisions midway."""
    store = Path(store)
    if not lazy or not store.is_dir():
        return SnapshotStore.load(store)
    state, meta = index_state(store)
    if state == "stale":
        raise DataError(stale_message(store, meta))
    if state == "missing":
        if rank == 0:
            log.info("%s: no origin index yet, building it (`glotta consent index` does this ahead of a run)", store)
            build_index(store)
        else:
            wait_for_index(store, wait_s)
    return IndexedStore(store, max_buckets)


class IndexConfig(StrictModel):
    store: Path | None = None  # the snapshot store directory (JSONL parts)
    buckets: int | None = None  # Parquet buckets by origin hash; default one per ~1,000 origins, at most 1,024
    strict: bool = False  # a torn last line in a JSONL part (a killed fetch) is an error instead of a counted skip


def run_index(cfg: IndexConfig) -> dict:
    """`glotta consent index`: (re)build the origin index of a store, once per store change."""
    if cfg.store is None:
        raise ConfigError("consent index needs store (e.g. --store snapshots/)")
    if cfg.buckets is not None and not 1 <= cfg.buckets <= 65536:
        raise ConfigError(f"buckets: expected 1..65536, got {cfg.buckets}")
    before, _ = index_state(cfg.store) if Path(cfg.store).is_dir() else ("missing", {})
    if cfg.strict:
        counted = [0]
        for _ in _lines(Path(cfg.store), counted):  # no parsing: only the torn last lines are counted
            pass
        torn = counted[0]
        if torn:
            raise DataError(f"{cfg.store}: {torn} torn last line(s) in JSONL parts (a killed fetch; strict). "
                            "Rerun the fetch to resume it, or build without --strict to skip them (counted).")
    return build_index(Path(cfg.store), cfg.buckets) | {"was": before}
