"""Budgets that hold: every language's kept units are within one document of its budget, the kept
set is a prefix of the language's ranking, and a budget that cannot be met is reported."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from glotta.pruning.cat.selection import SelectionConfig, select, unmet_languages


def _table(seed: int, n: int = 600) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    langs = rng.choice(["en", "de", "ja", "sw", "yo"], size=n, p=[0.4, 0.25, 0.2, 0.1, 0.05])
    # Heavy-tailed lengths: a few documents are longer than half a small language.
    n_tokens = np.maximum(1, rng.lognormal(5.0, 1.5, size=n).astype(np.int64))
    return pd.DataFrame({"shard": "s.tar", "key": [f"k{i}" for i in range(n)], "lang": langs, "n_tokens": n_tokens,
                         "n_bytes": n_tokens * 3})


CONFIGS = [
    SelectionConfig(fraction=0.5),
    SelectionConfig(fraction=0.1),
    SelectionConfig(fraction=0.9, unit="docs"),
    SelectionConfig(fraction=0.5, allocation="unimax"),
    SelectionConfig(fraction=0.7, cap=20_000),
    SelectionConfig(fraction=0.3, floor=5_000),
]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.fraction}-{c.unit}-{c.allocation}-{c.cap}-{c.floor}")
def test_each_language_is_within_one_document_of_its_budget(seed, cfg):
    df = _table(seed)
    rng = np.random.default_rng(100 + seed)
    scores = rng.normal(size=len(df))
    scores[rng.random(len(df)) < 0.05] = -np.inf  # removed by a pre-step (dedup): never kept
    kept, per_lang = select(df, scores, cfg)
    units = df["n_tokens"].to_numpy(float) if cfg.unit == "tokens" else np.ones(len(df))
    assert not kept[scores == -np.inf].any()
    for row in per_lang.itertuples():
        idx = np.flatnonzero(df["lang"].to_numpy() == row.lang)
        usable = idx[scores[idx] > -np.inf]
        got = units[idx][kept[idx]].sum()
        if row.floor:
            assert kept[usable].all() and row.unmet == 0
            continue
        ranked = usable[np.lexsort((usable, -scores[usable]))]
        n_kept = int(kept[ranked].sum())
        assert kept[ranked[:n_kept]].all(), "the kept set is the top of the language's ranking"
        if units[usable].sum() < row.budget:  # cannot be met: everything usable kept, shortfall reported
            assert n_kept == len(ranked)
            assert row.unmet == pytest.approx(row.budget - got)
            assert row.lang in unmet_languages(per_lang)
            continue
        assert row.unmet == 0
        assert got >= row.budget
        # Overshoot is less than the last kept document, which is at most max(one document, 1%).
        last = units[ranked[n_kept - 1]]
        assert got - row.budget < last
        assert got - row.budget <= max(units[idx].max(), 0.01 * row.budget)
        assert row.overshoot == pytest.approx(got - row.budget)


def test_unmet_budget_is_reported_not_silent():
    df = _table(7)
    scores = np.zeros(len(df))
    de = (df["lang"] == "de").to_numpy()
    scores[de] = -np.inf
    scores[np.flatnonzero(de)[:3]] = 1.0  # only 3 German documents survived the pre-step
    kept, per_lang = select(df, scores, SelectionConfig(fraction=0.5))
    assert unmet_languages(per_lang) == ["de"]
    row = per_lang.set_index("lang").loc["de"]
    assert row.kept_docs == 3 and row.unmet > 0


def test_global_scope_overshoots_by_less_than_one_document():
    df = _table(3)
    scores = np.random.default_rng(0).normal(size=len(df))
    kept, per_lang = select(df, scores, SelectionConfig(fraction=0.4, scope="global"))
    total, got = df["n_tokens"].sum(), df["n_tokens"][kept].sum()
    last = df["n_tokens"].to_numpy()[np.argsort(-scores, kind="stable")][int(kept.sum()) - 1]
    assert 0.4 * total <= got < 0.4 * total + last
    assert unmet_languages(per_lang) == []
