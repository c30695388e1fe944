"""`glotta data inspect`: what a shard set holds, per language, from manifest.json (fast).

A directory without manifest.json is scanned sample by sample with iter_samples (slow, and
the report says so). `verify=True` checks every shard's size and sha256 against the manifest.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glotta.config import StrictModel
from glotta.data.manifest import MANIFEST
from glotta.data.shards import iter_samples, list_shards, load_manifest
from glotta.errors import DataError
from glotta.progress import track


class InspectConfig(StrictModel):
    path: str
    verify: bool = False
    strict: bool = False  # scan mode only: fail on the first unreadable sample


@dataclass
class InspectReport:
    path: str
    source: str  # "manifest" or "scan"
    shards: int
    langs: dict[str, dict[str, int]]  # lang -> {samples, bytes}
    verified: bool = False
    counters: dict[str, int] = field(default_factory=dict)  # scan problems, or the import's counters
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return sum(e["samples"] for e in self.langs.values())

    @property
    def bytes(self) -> int:
        return sum(e["bytes"] for e in self.langs.values())

    def rows(self) -> list[dict[str, Any]]:
        """Per language, largest first by bytes: docs, bytes and both shares."""
        docs, nbytes = max(1, self.samples), max(1, self.bytes)
        order = sorted(self.langs.items(), key=lambda kv: (-kv[1]["bytes"], kv[0]))
        return [
            {"lang": lang, "docs": e["samples"], "bytes": e["bytes"],
             "docs_share": e["samples"] / docs, "bytes_share": e["bytes"] / nbytes}
            for lang, e in order
        ]  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path, "source": self.source, "verified": self.verified, "shards": self.shards,
            "docs": self.samples, "bytes": self.bytes, "languages": len(self.langs), "langs": self.rows(),
            "counters": self.counters, "meta": self.meta,
        }  # fmt: skip


def inspect_shards(path: str | Path, verify: bool = False, strict: bool = False) -> InspectReport:
    d = Path(path)
    if not d.is_dir():
        raise DataError(f"shard directory not found: {d}")
    if (d / MANIFEST).is_file():
        manifest = load_manifest(d, verify)
        meta = {k: v for k, v in manifest.meta.items() if k != "counters"}
        return InspectReport(
            str(d), "manifest", len(manifest.shards), manifest.langs(), verify,
            dict(manifest.meta.get("counters", {})), meta,
        )  # fmt: skip
    shards = list_shards(d)  # raises when there is nothing to scan
    counters: Counter = Counter()
    langs: dict[str, dict[str, int]] = {}
    for shard in track(shards, f"scan {d.name}"):
        for s in iter_samples(shard, counters, strict=strict):
            e = langs.setdefault(s.lang, {"samples": 0, "bytes": 0})
            e["samples"] += 1
            e["bytes"] += len(s.text.encode("utf-8", errors="replace"))
    return InspectReport(str(d), "scan", len(shards), dict(sorted(langs.items())), False, dict(counters))
