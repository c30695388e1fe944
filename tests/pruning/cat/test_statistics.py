"""Each score statistic on tables small enough to check by hand."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from glotta.errors import ConfigError
from glotta.pruning.cat import statistics as st
from glotta.pruning.cat.selection import SelectionConfig, select


def table(langs, n_tokens=None):
    n = len(langs)
    return pd.DataFrame({"shard": ["a.tar"] * n, "key": [f"k{i}" for i in range(n)], "lang": langs,
                         "n_tokens": n_tokens or [10] * n, "n_bytes": [40] * n})


# One document whose perplexity goes 4 -> 2 -> 1 over three checkpoints.
PPL = [4.0, 2.0, 1.0]
NLL = np.log(np.array([PPL]))
DF1 = table(["en"])


def test_cat_is_population_variance_of_perplexity():
    # mean 7/3; deviations 5/3, -1/3, -4/3; squares sum to 42/9; divided by 3 -> 14/9
    assert st.score("cat", DF1, NLL)[0] == pytest.approx(14 / 9)
    assert st.score("std", DF1, NLL)[0] == pytest.approx(math.sqrt(14 / 9))


def test_change_and_drop():
    assert st.score("mean_abs_change", DF1, NLL)[0] == pytest.approx((2 + 1) / 2)
    assert st.score("drop", DF1, NLL)[0] == pytest.approx(math.log(4))  # NLL first minus last


def test_scale_free_variants():
    # NLL = 2 ln2, ln2, 0: mean ln2, squared deviations ln2^2, 0, ln2^2
    assert st.score("nll_var", DF1, NLL)[0] == pytest.approx(2 / 3 * math.log(2) ** 2)
    assert st.score("cv", DF1, NLL)[0] == pytest.approx(math.sqrt(14 / 9) / (7 / 3))
    # Multiplying every perplexity by 10 changes cat 100-fold but leaves cv and nll_var unchanged.
    shifted = NLL + math.log(10)
    assert st.score("cat", DF1, shifted)[0] == pytest.approx(100 * 14 / 9)
    assert st.score("cv", DF1, shifted)[0] == pytest.approx(st.score("cv", DF1, NLL)[0])
    assert st.score("nll_var", DF1, shifted)[0] == pytest.approx(st.score("nll_var", DF1, NLL)[0])


def test_rank_change_uses_percentile_ranks_within_language():
    df = table(["en", "en", "en", "de", "de"])
    # en: ranks by NLL at ck1 A<B<C (0, .5, 1); at ck2 B<C<A (A 1, B 0, C .5). de: order unchanged.
    nll = np.array([[1.0, 3.0], [2.0, 1.0], [3.0, 2.0], [5.0, 6.0], [7.0, 8.0]])
    assert st.score("rank_change", df, nll).tolist() == pytest.approx([1.0, 0.5, 0.5, 0.0, 0.0])


def test_zscore_is_per_language_and_ignores_scale():
    rng = np.random.default_rng(0)
    base = rng.normal(2.0, 0.5, size=(6, 3))
    # Language b: the same documents with every perplexity x10 (cat x100).
    nll = np.vstack([base, base + math.log(10)])
    df = table(["a"] * 6 + ["b"] * 6)
    opt = st.Options(length_buckets=1)
    z = st.score("zscore", df, nll, opt)
    assert z[:6] == pytest.approx(z[6:])
    assert z[:6].mean() == pytest.approx(0.0, abs=1e-12) and z[:6].std() == pytest.approx(1.0)
    cat = st.score("cat", df, nll)
    assert cat[6:] == pytest.approx(100 * cat[:6])


def test_zscore_cells_split_by_length():
    # Two length buckets inside one language: each bucket is standardised on its own.
    df = table(["en"] * 4, n_tokens=[5, 6, 100, 200])
    nll = np.array([[1.0, 2.0], [1.0, 3.0], [1.0, 1.5], [1.0, 1.2]])
    z = st.score("zscore", df, nll, st.Options(length_buckets=2))
    assert z[0] == pytest.approx(-1.0) and z[1] == pytest.approx(1.0)
    assert z[2] == pytest.approx(1.0) and z[3] == pytest.approx(-1.0)


def test_single_checkpoint_baselines():
    df = table(["en"] * 5)
    nll = np.array([[9.0, 1.0], [9.0, 2.0], [9.0, 3.0], [9.0, 4.0], [9.0, 5.0]])
    assert st.score("ppl_high", df, nll).tolist() == [1, 2, 3, 4, 5]  # last checkpoint by default
    assert st.score("ppl_low", df, nll, st.Options(checkpoint=1)).tolist() == [-9] * 5
    cfg = SelectionConfig(fraction=0.6, unit="docs")
    kept, _ = select(df, st.score("ppl_mid", df, nll), cfg)
    assert kept.tolist() == [False, True, True, True, False]  # the middle three
    kept, _ = select(df, st.score("ppl_low", df, nll), cfg)
    assert kept.tolist() == [True, True, True, False, False]
    with pytest.raises(ConfigError, match="checkpoint: 3 is not one of 1..2"):
        st.score("ppl_low", df, nll, st.Options(checkpoint=3))


def test_length_and_random():
    df = table(["en"] * 4, n_tokens=[3, 30, 7, 1])
    nll = np.zeros((4, 1))
    assert st.score("length", df, nll).tolist() == [3, 30, 7, 1]
    r0 = st.score("random", df, nll, st.Options(seed=0))
    # Depends on (seed, shard, key) only: the same document gets the same draw in another row order.
    rev = st.score("random", df.iloc[::-1].reset_index(drop=True), nll, st.Options(seed=0))
    assert rev[::-1].tolist() == r0.tolist()
    assert st.score("random", df, nll, st.Options(seed=1)).tolist() != r0.tolist()
    assert ((r0 >= 0) & (r0 < 1)).all()


def test_dynamics_need_two_checkpoints():
    with pytest.raises(ConfigError, match="needs scores at >= 2 checkpoints; the table has 1"):
        st.score("cat", DF1, NLL[:, :1])
    assert st.score("ppl_mid", DF1, NLL[:, :1]).shape == (1,)
    with pytest.raises(ConfigError, match="unknown 'vog'"):
        st.score("vog", DF1, NLL)
