"""Mixing proportions (natural, temperature, UniMax, explicit, family law) and the C++ schedule."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from glotta.data.demo_corpus import find_catalogs
from glotta.data.mixing import MixConfig, Schedule, doc_caps, family_law, load_families, mix_weights, unimax
from glotta.data.native import BlendSchedule, permutation
from glotta.errors import ConfigError, DataError

SIZES = {"en": 9000.0, "de": 3000.0, "yo": 100.0}


def test_natural_and_temperature():
    assert mix_weights(MixConfig(), SIZES) == pytest.approx({"de": 3000 / 12100, "en": 9000 / 12100, "yo": 100 / 12100})
    p = mix_weights(MixConfig(method="temperature", alpha=0.5), SIZES)
    z = 9000**0.5 + 3000**0.5 + 10
    assert p == pytest.approx({"en": 9000**0.5 / z, "de": 3000**0.5 / z, "yo": 10 / z})
    # A lower alpha flattens the distribution towards uniform.
    flat = mix_weights(MixConfig(method="temperature", alpha=0.1), SIZES)
    assert flat["yo"] > p["yo"] and flat["en"] < p["en"]


def test_unimax_spreads_budget_and_caps_small_languages():
    # Budget 6000 over 3 languages, at most 5 epochs: yo gets 5*100 = 500, the rest share 5500.
    p = unimax(SIZES, budget=6000, max_epochs=5)
    assert p == pytest.approx({"yo": 500 / 6000, "de": 2750 / 6000, "en": 2750 / 6000})
    # Via the config (max_epochs defaults to 1): yo is capped at its size, de and en share the rest.
    q = mix_weights(MixConfig(method="unimax", budget=6000), SIZES)
    assert q == pytest.approx({"yo": 100 / 6000, "de": 2950 / 6000, "en": 2950 / 6000})
    # With the whole corpus as budget and one epoch, UniMax is the natural mix.
    assert mix_weights(MixConfig(method="unimax"), SIZES) == pytest.approx(mix_weights(MixConfig(), SIZES))


def test_explicit_weights_are_checked():
    assert mix_weights(MixConfig(method="explicit", weights={"en": 3, "yo": 1}), SIZES) == {"en": 0.75, "yo": 0.25}
    with pytest.raises(ConfigError, match="sum to a positive number"):
        mix_weights(MixConfig(method="explicit", weights={"en": 0, "de": 0}), SIZES)
    with pytest.raises(ConfigError, match="finite and >= 0"):
        mix_weights(MixConfig(method="explicit", weights={"en": -1, "de": 2}), SIZES)
    with pytest.raises(DataError, match="'sw'"):
        mix_weights(MixConfig(method="explicit", weights={"en": 1, "sw": 1}), SIZES)
    with pytest.raises(ConfigError, match="needs weights"):
        mix_weights(MixConfig(method="explicit"), SIZES)


def test_family_law_minimises_the_weighted_loss():
    gamma = {"germanic": 0.2, "romance": 0.05, "niger-congo": 0.4}
    weight = {"germanic": 1.0, "romance": 2.0, "niger-congo": 0.5}
    p = family_law(gamma, weight, {})
    fams = sorted(gamma)
    loss = lambda x: sum(weight[f] * x[i] ** -gamma[f] for i, f in enumerate(fams))  # noqa: E731
    res = minimize(
        loss,
        np.full(3, 1 / 3),
        method="SLSQP",
        bounds=[(1e-6, 1)] * 3,
        constraints={"type": "eq", "fun": lambda x: x.sum() - 1},
        options={"ftol": 1e-12},
    )
    assert [p[f] for f in fams] == pytest.approx(res.x, abs=1e-4)
    # Equal γ: p ∝ w^(1/(1+γ)), a closed form.
    q = family_law({"a": 0.5, "b": 0.5}, {"a": 1.0, "b": 8.0}, {})
    assert q["b"] / q["a"] == pytest.approx(8 ** (1 / 1.5))


def test_family_law_through_the_table():
    cfg = MixConfig(method="family_law", family_gamma={"indo-european/germanic": 0.2, "niger-congo": 0.4})
    p = mix_weights(cfg, SIZES)
    # en and de share the Germanic share by size; yo holds the whole Niger-Congo share.
    assert p["en"] / p["de"] == pytest.approx(3.0)
    assert sum(p.values()) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="niger-congo"):
        mix_weights(MixConfig(method="family_law", family_gamma={"indo-european/germanic": 0.2}), SIZES)


def test_families_table_covers_the_demo_corpus():
    table = load_families()
    langs = {c.lang for c in find_catalogs()} | {"en"}
    assert len(langs) > 100, "this machine has few gettext catalogs"
    assert sorted(langs - set(table)) == []


def test_largest_error_schedule_tracks_weights_at_every_prefix():
    w = np.array([0.5, 0.3, 0.15, 0.05])
    lang, occ = BlendSchedule(w.tolist(), [-1] * 4).next(20000)
    counts = np.zeros(4)
    worst = 0.0
    for i, l in enumerate(lang):
        assert occ[i] == counts[l]
        counts[l] += 1
        worst = max(worst, np.abs(counts - w * (i + 1)).max())
    assert worst <= 1.0  # stated tolerance: never more than one document off its share


def test_capped_language_leaves_and_the_rest_keep_their_ratio():
    # 'a' may contribute 100 documents, then b:c must stay 2:1.
    lang, _ = BlendSchedule([0.2, 0.4, 0.2], [100, -1, -1]).next(3000)
    assert (lang == 0).sum() == 100
    after = lang[np.flatnonzero(lang == 0)[-1] + 1 :]
    assert abs((after == 1).sum() / len(after) - 2 / 3) < 1e-3
    # Every language capped: the schedule ends.
    lang, _ = BlendSchedule([1.0, 1.0], [3, 5]).next(100)
    assert len(lang) == 8


def test_schedule_maps_slots_to_each_document_once_per_epoch():
    n_docs = [7, 3]
    s = Schedule([0.5, 0.5], n_docs, doc_caps(MixConfig(max_epochs=2), n_docs), seed=11, shuffle=True)
    lang, doc, epoch = s.lookup(np.arange(30))
    assert s.length == 20 and (lang[20:] == -1).all()
    for lg, n in enumerate(n_docs):
        for e in range(2):
            assert sorted(doc[(lang == lg) & (epoch == e)].tolist()) == list(range(n))
    # Epochs are shuffled differently; a fresh schedule gives the same order.
    assert doc[(lang == 0) & (epoch == 0)].tolist() != doc[(lang == 0) & (epoch == 1)].tolist()
    again = Schedule([0.5, 0.5], n_docs, doc_caps(MixConfig(max_epochs=2), n_docs), seed=11, shuffle=True)
    assert again.lookup(np.arange(30))[1].tolist() == doc.tolist()


def test_schedule_keeps_only_the_window_still_needed():
    n_docs = [50, 20, 5]
    args = ([0.5, 0.3, 0.2], n_docs, [-1, -1, -1], 3, True)
    ref = Schedule(*args).lookup(np.arange(300_000))
    s = Schedule(*args)
    got = []
    for start in range(0, 300_000, 30_000):
        got.append(s.lookup(np.arange(start, start + 30_000)))
        s.forget(start + 30_000)
    for a, b in zip(ref, (np.concatenate([g[i] for g in got]) for i in range(3))):
        assert np.array_equal(a, b)
    assert s._base > 200_000 and len(s._lang) < 100_000  # the prefix was dropped
    with pytest.raises(ValueError, match="forgotten"):
        s.lookup(np.array([10]))
    # A snapshot of the window start resumes without replaying from slot 0.
    snap = s.snapshot()
    assert snap["pos"] == s._base
    t = Schedule(*args)
    t.restore(snap)
    tail = np.arange(snap["pos"], 300_000)
    for a, b in zip(t.lookup(tail), Schedule(*args).lookup(tail)):
        assert np.array_equal(a, b)


def test_permutation_is_pinned_across_platforms():
    # Our own splitmix64 + Lemire draw: the order must never change, or old loader states break.
    assert permutation(10, 42).tolist() == [8, 3, 6, 5, 4, 0, 9, 2, 1, 7]
    p = permutation(100_000, 5)
    assert np.array_equal(np.sort(p), np.arange(100_000))
    assert permutation(0, 1).size == 0


def test_drop_policy_caps_at_one_epoch():
    assert doc_caps(MixConfig(exhausted="drop"), [4, 9]) == [4, 9]
    assert doc_caps(MixConfig(max_epochs=2.5), [4, 9]) == [10, 23]
    assert doc_caps(MixConfig(), [4, 9]) == [-1, -1]
