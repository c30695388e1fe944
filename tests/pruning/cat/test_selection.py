"""Per-language budgets, the floor, UniMax allocation, caps and global ranking on real scores."""
from __future__ import annotations

import math

import numpy as np
import pytest

from glotta.config import load_config
from glotta.errors import ConfigError
from glotta.pruning.cat import statistics as st
from glotta.pruning.cat.selection import SelectionConfig, select, unimax_budgets
from glotta.pruning.cat.table import nll_matrix, read_scores


@pytest.fixture(scope="module")
def scored(scores_dir):
    df, meta = read_scores(scores_dir)
    return df, nll_matrix(df, meta.k)


@pytest.mark.parametrize("method", ["cat", "zscore", "random"])
@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7])
def test_each_language_keeps_its_fraction_of_tokens(scored, method, fraction):
    df, nll = scored
    kept, per_lang = select(df, st.score(method, df, nll), SelectionConfig(fraction=fraction))
    assert len(per_lang) == 10
    for lang, part in df.assign(kept=kept).groupby("lang"):
        total, got = part["n_tokens"].sum(), part["n_tokens"][part["kept"]].sum()
        # The walk stops at the first document that reaches the budget: overshoot < one document.
        assert fraction * total <= got < fraction * total + part["n_tokens"].max(), lang
    assert per_lang["kept_frac_tokens"].between(fraction, fraction + 0.1).all()


def test_docs_unit_keeps_exact_counts(scored):
    df, nll = scored
    kept, per_lang = select(df, st.score("cat", df, nll), SelectionConfig(fraction=0.33, unit="docs"))
    for row in per_lang.itertuples():
        assert row.kept_docs == math.ceil(0.33 * row.docs)


def test_floor_keeps_small_languages_whole(scored):
    df, nll = scored
    sizes = df.groupby("lang")["n_tokens"].sum().sort_values()
    floor = int(sizes.iloc[2])  # the three smallest languages are at or under the floor
    kept, per_lang = select(df, st.score("cat", df, nll), SelectionConfig(fraction=0.5, floor=floor))
    per_lang = per_lang.set_index("lang")
    small = set(sizes.index[:3])
    assert set(per_lang.index[per_lang["floor"]]) == small
    for lang in small:
        assert per_lang.loc[lang, "kept_docs"] == per_lang.loc[lang, "docs"]
    for lang in set(sizes.index) - small:
        assert 0.5 <= per_lang.loc[lang, "kept_frac_tokens"] < 0.6


def test_unimax_spreads_the_budget_evenly():
    assert unimax_budgets({"a": 10, "b": 100, "c": 1000}, 300) == {"a": 10, "b": 100, "c": 190}
    assert unimax_budgets({"a": 10, "b": 100, "c": 1000}, 90) == {"a": 10, "b": 40, "c": 40}


def test_unimax_and_cap_on_real_scores(scored):
    df, nll = scored
    scores = st.score("nll_var", df, nll)
    total = df["n_tokens"].sum()
    kept, per_lang = select(df, scores, SelectionConfig(fraction=0.5, allocation="unimax"))
    # Every language gets the same token budget (none is smaller than its share here).
    assert per_lang["budget"].to_numpy() == pytest.approx(np.full(10, 0.5 * total / 10))
    biggest = df["n_tokens"].max()
    assert (per_lang["kept_tokens"] - per_lang["budget"]).between(0, biggest).all()
    cap = 30_000
    kept, per_lang = select(df, scores, SelectionConfig(fraction=0.9, cap=cap))
    assert (per_lang["kept_tokens"] < cap + biggest).all()


def test_global_scope_keeps_the_global_fraction_but_not_per_language(scored):
    df, nll = scored
    kept, per_lang = select(df, st.score("cat", df, nll), SelectionConfig(fraction=0.5, scope="global"))
    total = df["n_tokens"].sum()
    assert 0.5 * total <= df["n_tokens"][kept].sum() < 0.5 * total + df["n_tokens"].max()
    # Raw perplexity variance is not comparable across languages: one global cut skews the mix.
    assert per_lang["kept_frac_tokens"].max() - per_lang["kept_frac_tokens"].min() > 0.2


def test_keep_fraction_must_be_in_0_1():
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ConfigError, match=r"keep fraction must be in \(0, 1\]"):
            load_config(SelectionConfig, overrides=[f"fraction={bad}"])
    with pytest.raises(ConfigError, match="unimax allocates per language"):
        load_config(SelectionConfig, overrides=["scope=global", "allocation=unimax"])
    df_all = SelectionConfig(fraction=1.0)
    assert df_all.fraction == 1.0


def test_keep_everything(scored):
    df, nll = scored
    kept, _ = select(df, st.score("cat", df, nll), SelectionConfig(fraction=1.0))
    assert kept.all()
    assert np.isfinite(st.score("cat", df, nll)).all()
