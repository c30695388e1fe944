"""`data holdout`: a stable per-language split whose excluded documents are counted, never held out."""
from __future__ import annotations

from glotta.data import iter_samples, list_shards
from glotta.data.holdout import HoldoutConfig, run_holdout


def test_excluded_documents_are_counted_and_never_held_out(demo_shards, tmp_path):
    ids = [s.id for p in list_shards(demo_shards) for s in iter_samples(p)]
    first = run_holdout(HoldoutConfig(shards=demo_shards, out=tmp_path / "a", fraction=0.5, max_docs_per_lang=10_000))
    held = set((tmp_path / "a" / "train.exclude.txt").read_text().split())
    assert held and held <= set(ids)
    assert first.counters["samples"] == len(ids) and "excluded" not in first.counters
    # Exclude half of what was held out: those are counted and the rest of the split stays put.
    gone = sorted(held)[: len(held) // 2]
    ex = tmp_path / "ex.txt"
    ex.write_text("".join(f"{i}\n" for i in gone))
    second = run_holdout(HoldoutConfig(shards=demo_shards, out=tmp_path / "b", fraction=0.5, max_docs_per_lang=10_000, exclude=[ex]))
    assert second.counters["excluded"] == len(gone)
    assert set((tmp_path / "b" / "train.exclude.txt").read_text().split()) == held - set(gone)
    assert sum(second.held_out.values()) == len(held) - len(gone)
    assert second.to_json()["held_out"] == second.held_out
