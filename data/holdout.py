"""Held-out documents per language: a validation shard set plus the exclude list that keeps them
out of training (and out of CAT scoring), so every later stage sees the same split.

A document is held out when a stable hash of (seed, shard, key) falls below `fraction`, up to
`max_docs_per_lang` per language; the choice does not depend on the number of shards or ranks.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import Field

from glotta.config import StrictModel
from glotta.data.exclude import read_exclude
from glotta.data.manifest import Manifest, atomic_write_text
from glotta.data.shards import ShardWriter, iter_samples, list_shards
from glotta.errors import ConfigError
from glotta.progress import track
from glotta.seeding import stable_seed

EXCLUDE = "train.exclude.txt"


class HoldoutConfig(StrictModel):
    shards: Path | None = None
    out: Path | None = None
    fraction: float = Field(0.05, gt=0, lt=1)
    max_docs_per_lang: int = Field(50, gt=0)
    seed: int = 0
    exclude: list[Path] = []  # documents already removed (e.g. by consent filtering)
    strict: bool = False


@dataclass
class HoldoutResult:
    valid: str  # the validation shard set
    exclude: str  # the exclude list that keeps those documents out of training
    held_out: dict[str, int]  # documents per language
    counters: dict[str, int]  # what reading the shards skipped, by reason

    def to_json(self) -> dict:
        return asdict(self)


def run_holdout(cfg: HoldoutConfig) -> HoldoutResult:
    if cfg.shards is None or cfg.out is None:
        raise ConfigError("holdout needs shards and out")
    out = Path(cfg.out)
    excluded = read_exclude(cfg.exclude)
    counters: Counter = Counter()
    held: dict[str, int] = Counter()
    ids: list[str] = []
    threshold = int(cfg.fraction * (1 << 63))
    with ShardWriter(out / "valid", prefix="valid", max_samples=10_000) as w:
        for path in track(list_shards(cfg.shards), "holdout"):
            for s in iter_samples(path, counters, strict=cfg.strict):
                if s.id in excluded:
                    counters["excluded"] += 1  # removed before (e.g. by consent filtering)
                    continue
                if stable_seed(cfg.seed, s.shard, s.key) < threshold and held[s.lang] < cfg.max_docs_per_lang:
                    held[s.lang] += 1
                    ids.append(s.id)
                    w.write(s)
    Manifest(shards=w.written, meta={"holdout_of": str(cfg.shards), "fraction": cfg.fraction}).save(out / "valid")
    atomic_write_text(out / EXCLUDE, "".join(f"{i}\n" for i in ids))
    return HoldoutResult(str(out / "valid"), str(out / EXCLUDE), dict(sorted(held.items())), dict(counters))
