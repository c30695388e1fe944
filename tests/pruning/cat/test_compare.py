"""The benchmark's statistics on synthetic held-out losses with known answers."""
from __future__ import annotations

import numpy as np
import pytest

from glotta.pruning.cat.compare import HeldOut, compare, decide

LANGS = ["de", "en", "ja"]


def _world(rng, shifts: dict[str, dict[str, float]], seeds: int = 3, docs: int = 60, seed_sd: float = 0.05):
    """Per-document NLL = document difficulty + language level + arm's true shift in that language
    + a per-(arm, seed) training effect + per-(arm, seed, document) noise."""
    langs = np.repeat(LANGS, docs)
    tokens = rng.integers(20, 400, size=len(langs))
    level = {"de": 5.0, "en": 4.8, "ja": 5.6}
    difficulty = rng.normal(0, 0.6, size=len(langs)) + np.array([level[x] for x in langs])
    nll = {}
    for arm, shift in shifts.items():
        s = np.array([shift.get(x, 0.0) for x in langs])
        seed_effect = rng.normal(0, seed_sd, size=(seeds, 1))
        nll[arm] = difficulty[None] + s[None] + seed_effect + rng.normal(0, 0.1, size=(seeds, len(langs)))
    return HeldOut(langs, tokens, nll)


def test_random_under_another_name_gets_an_interval_containing_zero():
    # Calibration: over many worlds, a null arm's corrected interval holds 0 in (nearly) all of them.
    contains, contains95 = 0, 0
    for i in range(60):
        rng = np.random.default_rng(i)
        c = compare(_world(rng, {"random": {}, "renamed_random": {}, "other": {}}), bootstrap=300, seed=i)
        iv = c.methods["renamed_random"].mean
        contains += iv.low <= 0 <= iv.high
        contains95 += iv.low95 <= 0 <= iv.high95
        assert iv.low < iv.high
    assert contains >= 56  # corrected level 97.5%: expect ~58.5 of 60
    assert contains95 >= 53  # 95%: expect 57 of 60; ignoring the seed noise would cover far less


def test_a_real_improvement_is_found_and_its_size_recovered():
    rng = np.random.default_rng(1)
    c = compare(_world(rng, {"random": {}, "good": {"de": -0.3, "en": -0.3, "ja": -0.3}, "null": {}}), bootstrap=500)
    good = c.methods["good"]
    assert good.mean.high < 0 and good.mean.better
    assert good.mean.low <= -0.3 <= good.mean.high
    assert good.worst.better  # ja is worst for both; it improved by 0.3
    assert good.better_mean_and_worst
    assert not c.methods["null"].better_mean_and_worst
    assert c.methods["good"].mean.p_holm < 0.05


def test_helping_the_mean_but_hurting_the_worst_language_is_not_a_win():
    rng = np.random.default_rng(2)
    # Better on de/en by 0.4 (mean better), worse on ja (the worst language) by 0.3.
    c = compare(_world(rng, {"random": {}, "skewed": {"de": -0.4, "en": -0.4, "ja": 0.3}}, seed_sd=0.01),
                bootstrap=500)
    sk = c.methods["skewed"]
    assert sk.mean.better
    assert sk.worst.worse
    assert sk.langs["ja"].worse and sk.langs["de"].better
    assert not sk.better_mean_and_worst


def test_seed_noise_widens_the_interval():
    quiet = compare(_world(np.random.default_rng(3), {"random": {}, "m": {}}, seed_sd=0.0), bootstrap=300)
    loud = compare(_world(np.random.default_rng(3), {"random": {}, "m": {}}, seed_sd=0.3), bootstrap=300)
    width = lambda c: c.methods["m"].mean.high - c.methods["m"].mean.low  # noqa: E731
    assert width(loud) > 3 * width(quiet)
    assert loud.methods["m"].mean.se_seeds > loud.methods["m"].mean.se_docs


def test_bonferroni_widens_with_the_number_of_methods():
    rng = np.random.default_rng(4)
    w = _world(rng, {"random": {}, "a": {"de": -0.05}, "b": {}, "c": {}, "d": {}})
    two = compare(HeldOut(w.langs, w.tokens, {k: w.nll[k] for k in ("random", "a")}), bootstrap=300)
    five = compare(w, bootstrap=300)
    assert five.corrected_for == 4 and two.corrected_for == 1
    assert five.methods["a"].mean.delta == pytest.approx(two.methods["a"].mean.delta)
    assert (five.methods["a"].mean.high - five.methods["a"].mean.low) > (two.methods["a"].mean.high - two.methods["a"].mean.low)


def test_decision_is_made_on_validation_and_confirmed_on_test():
    valid = compare(_world(np.random.default_rng(5), {"random": {}, "good": {"de": -0.3, "en": -0.3, "ja": -0.3},
                                                      "meh": {"de": -0.1}}), bootstrap=300)
    test = compare(_world(np.random.default_rng(6), {"random": {}, "good": {"de": -0.3, "en": -0.3, "ja": -0.3},
                                                     "meh": {"de": -0.1}}), bootstrap=300)
    d = decide(valid, test)
    assert d.default == "good" and d.evidence and d.validation_best == "good"
    # Nothing beats random anywhere: say so, keep random.
    null_v = compare(_world(np.random.default_rng(7), {"random": {}, "x": {"de": 0.2}}), bootstrap=300)
    null_t = compare(_world(np.random.default_rng(8), {"random": {}, "x": {"de": 0.2}}), bootstrap=300)
    d = decide(null_v, null_t)
    assert d.default == "random" and not d.evidence


def test_arms_must_be_paired_by_seed():
    w = _world(np.random.default_rng(9), {"random": {}, "m": {}})
    w.nll["m"] = w.nll["m"][:2]
    with pytest.raises(ValueError, match="paired by seed"):
        compare(w, bootstrap=10)


def test_the_null_control_is_never_the_default():
    arms = {"random": {}, "random_alt": {"de": -0.3, "en": -0.3, "ja": -0.3}, "m": {"de": 0.1}}
    d = decide(compare(_world(np.random.default_rng(10), arms), bootstrap=200),
               compare(_world(np.random.default_rng(11), arms), bootstrap=200))
    assert d.default == "random" and "random_alt" not in d.winners_on_test
