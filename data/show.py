"""`glotta data show`: look at a few samples of a shard set (key, language, URL, first lines).

With `lang`, only shards whose index lists that language are opened (shard_index.py), so
finding a rare language does not read the whole set.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glotta.config import StrictModel
from glotta.data.shard_index import ShardIndex, index_path
from glotta.data.shards import iter_samples, shard_entries
from glotta.errors import DataError


class ShowConfig(StrictModel):
    path: str
    lang: str | None = None
    n: int = 5
    lines: int = 3  # first lines of text shown per sample
    strict: bool = False


@dataclass
class Shown:
    id: str
    lang: str
    url: str
    chars: int
    head: list[str]

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _may_hold(shard: Path, lang: str) -> bool:
    path = index_path(shard)
    if not path.is_file():
        return True  # no index: read it to find out
    try:
        return lang in ShardIndex.read_header(path).langs
    except DataError:
        return True


def show_samples(cfg: ShowConfig) -> tuple[list[Shown], dict[str, int]]:
    """The first `n` samples (of language `lang`) in shard order, and the read counters."""
    if cfg.n < 1:
        raise DataError(f"n must be >= 1, got {cfg.n}")
    counters: Counter = Counter()
    out: list[Shown] = []
    for shard, _ in shard_entries(Path(cfg.path)):
        if cfg.lang and not _may_hold(shard, cfg.lang):
            continue
        for s in iter_samples(shard, counters, strict=cfg.strict):
            if cfg.lang and s.lang != cfg.lang:
                continue
            lines = [x for x in s.text.splitlines() if x.strip()][: cfg.lines]
            out.append(Shown(s.id, s.lang, str(s.meta.get("url") or ""), len(s.text), lines))
            if len(out) >= cfg.n:
                return out, dict(counters)
    if cfg.lang and not out:
        raise DataError(f"{cfg.path}: no sample with language {cfg.lang!r}")
    return out, dict(counters)
