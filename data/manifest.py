"""manifest.json: what a shard set holds (per shard, per language) and how to verify it.

Each writing rank keeps its own part in `manifest.d/rank-RRRRR-of-WWWWW.json` (rewritten
atomically after every shard, so a restarted rank knows which shards are done). The rank that
finishes last merges the parts into `manifest.json`; two ranks finishing together write the
same bytes, so no barrier or coordinator is needed.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from glotta.errors import DataError

MANIFEST = "manifest.json"
PARTS_DIR = "manifest.d"
VERSION = 1


@dataclass
class ShardInfo:
    name: str
    samples: int = 0
    bytes: int = 0  # UTF-8 text bytes (not tar bytes)
    file_bytes: int = 0
    sha256: str = ""
    index_sha256: str = ""  # NAME.tar.idx, the per-shard index (data/shard_index.py)
    langs: dict[str, dict[str, int]] = field(default_factory=dict)  # lang -> {samples, bytes}

    def add(self, lang: str, nbytes: int) -> None:
        self.samples += 1
        self.bytes += nbytes
        entry = self.langs.setdefault(lang, {"samples": 0, "bytes": 0})
        entry["samples"] += 1
        entry["bytes"] += nbytes


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: str | Path, text: str) -> None:
    """atomic_write_bytes for text (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, fsync, rename (readers never see half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write leaves nothing behind
        raise


@dataclass
class Manifest:
    shards: list[ShardInfo] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # who wrote it and how (command, config)

    # ---- totals -------------------------------------------------------------------------
    def langs(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for s in self.shards:
            for lang, e in s.langs.items():
                t = out.setdefault(lang, {"samples": 0, "bytes": 0})
                t["samples"] += e["samples"]
                t["bytes"] += e["bytes"]
        return dict(sorted(out.items()))

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    # ---- io -----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "meta": self.meta,
            "totals": {"samples": self.samples, "bytes": self.bytes, "langs": self.langs()},
            "shards": [asdict(s) for s in self.shards],
        }

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST
        atomic_write_text(path, json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = MANIFEST) -> "Manifest":
        if data.get("version") != VERSION:
            raise DataError(f"{source}: unsupported manifest version {data.get('version')!r} (expected {VERSION})")
        try:
            shards = [ShardInfo(**s) for s in data["shards"]]
        except (KeyError, TypeError) as e:
            raise DataError(f"{source}: malformed shard entry: {e}") from None
        return cls(shards=shards, meta=data.get("meta", {}))

    @classmethod
    def load(cls, directory: str | Path) -> "Manifest":
        path = Path(directory) / MANIFEST
        if not path.is_file():
            raise DataError(f"{directory}: no {MANIFEST} (not a finished shard set; run the import first)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON: {e}") from None
        return cls.from_json(data, str(path))

    def verify(self, directory: str | Path, check_hash: bool = True) -> list[str]:
        """Problems found (missing shard, size or sha256 mismatch), each naming the shard."""
        problems = []
        for s in self.shards:
            p = Path(directory) / s.name
            if not p.is_file():
                problems.append(f"{p}: listed in {MANIFEST} but missing")
            elif p.stat().st_size != s.file_bytes:
                problems.append(f"{p}: size {p.stat().st_size} != {s.file_bytes} in {MANIFEST}")
            elif check_hash and sha256_file(p) != s.sha256:
                problems.append(f"{p}: sha256 does not match {MANIFEST}")
            idx = p.with_name(p.name + ".idx")
            if check_hash and s.index_sha256 and idx.is_file() and sha256_file(idx) != s.index_sha256:
                problems.append(f"{idx}: index sha256 does not match {MANIFEST} (rebuild: glotta data index)")
        return problems


# ---- per-rank parts ---------------------------------------------------------------------
def part_path(directory: str | Path, rank: int, world_size: int, parts_dir: str = PARTS_DIR) -> Path:
    return Path(directory) / parts_dir / f"rank-{rank:05d}-of-{world_size:05d}.json"


def load_part(directory: str | Path, rank: int, world_size: int, parts_dir: str = PARTS_DIR) -> dict[str, Any] | None:
    p = part_path(directory, rank, world_size, parts_dir)
    if not p.is_file():
        return None
    return json.loads(p.read_text(encoding="utf-8"))


def save_part(directory: str | Path, rank: int, world_size: int, part: dict[str, Any], parts_dir: str = PARTS_DIR) -> None:
    p = part_path(directory, rank, world_size, parts_dir)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, json.dumps(part, indent=1, ensure_ascii=False) + "\n")


def merge_parts(directory: str | Path, world_size: int, meta: dict[str, Any]) -> Manifest | None:
    """Write manifest.json once every rank's part says complete; returns it, or None if not yet."""
    parts = []
    for r in range(world_size):
        part = load_part(directory, r, world_size)
        if part is None or not part.get("complete"):
            return None
        parts.append(part)
    shards = [ShardInfo(**s) for part in parts for s in part["shards"]]
    manifest = Manifest(shards=sorted(shards, key=lambda s: s.name), meta=meta)
    manifest.save(directory)
    return manifest
