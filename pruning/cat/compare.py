"""Paired comparison of selection methods against random, with confidence intervals that count
both sources of noise: which test documents were drawn, and which seed trained the model.

Input: for every arm (method) and seed, the token-mean NLL of every held-out document under the
model trained on that arm's selection with that seed. Arms are paired by seed: seed s of a method
and seed s of random share the training seed (initialisation and data order) and the selection
seed. Per language, the loss is token-weighted over its documents; the "mean" loss is the
unweighted mean over languages (every language counts once), the "worst" loss is the highest
language loss.

For a method m, delta = loss(m) - loss(random) (negative = m is better), for every language, the
mean and the worst language:
  * point estimate: the mean over seeds of the per-seed paired delta;
  * document noise: a stratified bootstrap over documents (resampled within each language, the
    same resample for every arm and seed, so the pairing is kept) of the seed-averaged delta;
  * seed noise: the standard error of the per-seed deltas, sd / sqrt(S);
  * the two variances add (they are independent draws), and the interval uses Student's t with
    S - 1 degrees of freedom (conservative), so 3 seeds give wide intervals, as they should;
  * multiple comparisons: intervals at level 1 - alpha / M (Bonferroni over the M methods
    compared with random), and Holm-adjusted p-values. Requiring a method to win on both the
    mean and the worst language is an intersection-union test: no further correction.
With one seed there is no seed variance to estimate: the interval is the document bootstrap only
and `seed_noise_known` is False.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats

BASELINE = "random"
NULL_CONTROLS = ("random_alt",)  # bench/prune_eval.py --null-control


@dataclass
class HeldOut:
    """NLL of every held-out document under every (arm, seed) model."""

    langs: np.ndarray  # [D] language of each document
    tokens: np.ndarray  # [D] tokens predicted per document (weights)
    nll: dict[str, np.ndarray]  # arm -> [S, D] token-mean NLL

    def __post_init__(self):
        self.langs = np.asarray(self.langs).astype(str)
        self.tokens = np.asarray(self.tokens, dtype=np.float64)
        d = len(self.langs)
        for arm, x in self.nll.items():
            x = np.asarray(x, dtype=np.float64)
            if x.ndim != 2 or x.shape[1] != d:
                raise ValueError(f"{arm}: NLL must be [seeds, {d} documents], got {x.shape}")
            if not np.isfinite(x).all():
                raise ValueError(f"{arm}: non-finite NLL")
            self.nll[arm] = x

    @property
    def lang_names(self) -> list[str]:
        return sorted(set(self.langs))


@dataclass
class Interval:
    delta: float  # mean over seeds of (method - random); negative = better than random
    low: float  # corrected interval (level 1 - alpha / M)
    high: float
    low95: float  # uncorrected 95% interval
    high95: float
    p: float  # two-sided p-value of delta = 0
    p_holm: float = float("nan")
    per_seed: list[float] = field(default_factory=list)
    se_docs: float = 0.0
    se_seeds: float = 0.0
    df: float = float("inf")

    @property
    def better(self) -> bool:
        """The whole corrected interval is below zero: the method beats random."""
        return bool(self.high < 0)

    @property
    def worse(self) -> bool:
        return bool(self.low > 0)


@dataclass
class MethodComparison:
    method: str
    seeds: int
    loss: dict[str, float]  # language / "mean" / "worst" -> loss of the method, mean over seeds
    mean: Interval
    worst: Interval
    langs: dict[str, Interval]

    @property
    def better_mean_and_worst(self) -> bool:
        return self.mean.better and self.worst.better


@dataclass
class Comparison:
    baseline_loss: dict[str, float]
    methods: dict[str, MethodComparison]
    alpha: float
    corrected_for: int
    bootstrap: int
    seed_noise_known: bool
    langs: list[str]


def _lang_losses(nll: np.ndarray, tokens: np.ndarray, onehot: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[S, D] NLL, [B, D] document weights -> [S, B, L] token-weighted loss per language."""
    num = np.einsum("bd,sd,dl->sbl", weights, nll * tokens[None, :], onehot, optimize=True)
    den = np.einsum("bd,d,dl->bl", weights, tokens, onehot, optimize=True)
    return num / np.maximum(den, 1e-12)[None]


def _interval(point_s: np.ndarray, boot: np.ndarray, alpha: float, m: int) -> Interval:
    """point_s: [S] per-seed delta on the real documents; boot: [B] seed-averaged delta per resample."""
    s = len(point_s)
    est = float(point_s.mean())
    se_docs = float(boot.std(ddof=1)) if len(boot) > 1 else 0.0
    se_seeds = float(point_s.std(ddof=1) / np.sqrt(s)) if s > 1 else 0.0
    se = float(np.hypot(se_docs, se_seeds))
    # Student's t with S - 1 degrees of freedom: with 3 seeds the seed variance is itself very
    # uncertain, and Welch-Satterthwaite (which lets the df grow when the seeds happen to agree)
    # covered only ~89% in simulation; S - 1 is the conservative bound and covers >= 95%.
    df = float(s - 1) if s > 1 else float("inf")
    t = stats.t if np.isfinite(df) else stats.norm
    kw = {"df": df} if np.isfinite(df) else {}
    q, q95 = t.ppf(1 - alpha / (2 * m), **kw), t.ppf(0.975, **kw)
    p = float(2 * t.sf(abs(est) / se, **kw)) if se > 0 else (0.0 if est != 0 else 1.0)
    return Interval(est, est - q * se, est + q * se, est - q95 * se, est + q95 * se, p,
                    per_seed=[float(x) for x in point_s], se_docs=se_docs, se_seeds=se_seeds, df=df)


def _holm(ps: list[float]) -> list[float]:
    order = np.argsort(ps)
    m, out, running = len(ps), [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        out[i] = running
    return out


def compare(held: HeldOut, baseline: str = BASELINE, alpha: float = 0.05, bootstrap: int = 2000,
            seed: int = 0) -> Comparison:
    if baseline not in held.nll:
        raise ValueError(f"no {baseline!r} arm to compare against (arms: {', '.join(held.nll)})")
    methods = [a for a in held.nll if a != baseline]
    seeds = held.nll[baseline].shape[0]
    for a in methods:
        if held.nll[a].shape[0] != seeds:
            raise ValueError(f"{a}: {held.nll[a].shape[0]} seeds, {baseline} has {seeds}: arms are paired by seed")
    names = held.lang_names
    idx = np.searchsorted(names, held.langs)
    onehot = np.eye(len(names))[idx]
    rng = np.random.default_rng(seed)
    # Stratified bootstrap: resample documents within each language; one weight row per resample.
    weights = np.zeros((bootstrap, len(held.langs)))
    for li in range(len(names)):
        members = np.flatnonzero(idx == li)
        draws = rng.integers(0, len(members), size=(bootstrap, len(members)))
        np.add.at(weights, (np.arange(bootstrap)[:, None], members[draws]), 1.0)
    ones = np.ones((1, len(held.langs)))
    point = {a: _lang_losses(x, held.tokens, onehot, ones)[:, 0] for a, x in held.nll.items()}  # [S, L]
    boot = {a: _lang_losses(x, held.tokens, onehot, weights).mean(axis=0) for a, x in held.nll.items()}  # [B, L]
    # Worst language per resample needs per-seed losses; seed-average the max over languages.
    boot_worst = {a: _lang_losses(x, held.tokens, onehot, weights).max(axis=2).mean(axis=0)
                  for a, x in held.nll.items()}  # [B]
    m = max(1, len(methods))

    def summary(a: str) -> dict[str, float]:
        p = point[a]
        d = {lang: float(p[:, i].mean()) for i, lang in enumerate(names)}
        d["mean"] = float(p.mean(axis=1).mean())
        d["worst"] = float(p.max(axis=1).mean())
        return d

    out: dict[str, MethodComparison] = {}
    for a in methods:
        pb, bb = point[baseline], boot[baseline]
        mean_iv = _interval(point[a].mean(axis=1) - pb.mean(axis=1), boot[a].mean(axis=1) - bb.mean(axis=1), alpha, m)
        worst_iv = _interval(point[a].max(axis=1) - pb.max(axis=1), boot_worst[a] - boot_worst[baseline], alpha, m)
        langs = {lang: _interval(point[a][:, i] - pb[:, i], boot[a][:, i] - bb[:, i], alpha, m)
                 for i, lang in enumerate(names)}
        out[a] = MethodComparison(a, seeds, summary(a), mean_iv, worst_iv, langs)
    for key in ("mean", "worst"):
        ivs = [getattr(out[a], key) for a in methods]
        for iv, ph in zip(ivs, _holm([iv.p for iv in ivs])):
            iv.p_holm = ph
    return Comparison(summary(baseline), out, alpha, m, bootstrap, seeds > 1, names)


@dataclass
class Decision:
    default: str
    validation_best: str | None
    evidence: bool  # the default's corrected test interval is below zero in mean AND worst language
    winners_on_test: list[str]
    reason: str


def decide(valid: Comparison, test: Comparison) -> Decision:
    """Validation ranks the methods (mean delta); test only confirms. The default is the
    validation-best among methods whose corrected test interval beats random on the mean and the
    worst language; if none does, the validation-best with a caveat, or random if nothing beat
    random on validation either."""
    # Null controls (random under another name) calibrate the statistics; they are never a default.
    ranked = sorted((c for c in valid.methods.values() if c.method not in NULL_CONTROLS), key=lambda c: c.mean.delta)
    best = ranked[0].method if ranked else None
    winners = [c.method for c in ranked if c.method in test.methods and test.methods[c.method].better_mean_and_worst]
    if winners:
        return Decision(winners[0], best, True, winners,
                        f"{winners[0]} beats random on test in mean and worst-language loss (corrected intervals)")
    if best is None or valid.methods[best].mean.delta >= 0:
        return Decision(BASELINE, best, False, [], "no method beats random on validation; keep a random subset")
    return Decision(best, best, False, [],
                    f"no method's test interval is below zero in both mean and worst-language loss; "
                    f"{best} is best on validation (caveat: not shown to beat random)")
