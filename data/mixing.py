"""Multilingual mixing: target proportions per language and the deterministic document schedule.

Proportions are shares of the *data volume* (UTF-8 bytes, the size every shard manifest and
the loader's index know before tokenizing). The schedule works in documents, so a language's
document rate is its share divided by its mean document size; over a long run the byte (and
so, per script, roughly the token) shares follow the weights. `loader.stats()` reports the
tokens actually delivered per language.

Methods (`MixConfig.method`):
  natural      p_l ∝ n_l (every document once per epoch)
  temperature  p_l ∝ n_l^alpha (alpha = 1/T; XLM-R and mT5 used 0.3)
  unimax       Chung et al. 2023: spread a budget uniformly, capping every language at
               max_epochs of its data; smallest languages first, the rest goes to the larger ones
  explicit     p_l from `weights` (normalised)
  family_law   He et al. 2024: L_f = C_f · p_f^(-γ_f) per family; minimising Σ w_f L_f under Σ p = 1
               gives p_f = (w_f γ_f C_f / λ)^(1/(1+γ_f)) with λ found by bisection; a family's
               share is split among its languages by size
"""
from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from glotta.config import StrictModel
from glotta.data.native import BlendSchedule, permute
from glotta.errors import ConfigError, DataError
from glotta.seeding import stable_seed

_MASK64 = (1 << 64) - 1


class MixConfig(StrictModel):
    method: Literal["natural", "temperature", "unimax", "explicit", "family_law"] = "natural"
    alpha: float = Field(0.3, gt=0, le=1, description="temperature exponent: p ∝ n^alpha")
    weights: dict[str, float] | None = Field(None, description="explicit: language -> weight")
    budget: float | None = Field(None, gt=0, description="unimax: total budget in bytes (default: corpus size)")
    max_epochs: float | None = Field(None, gt=0, description="cap per language in epochs of its data (None = no cap)")
    exhausted: Literal["repeat", "drop"] = Field(
        "repeat", description="a language that runs out starts another epoch (up to max_epochs) or leaves the mix"
    )
    family_gamma: dict[str, float] | None = Field(None, description="family_law: γ_f per family")
    family_weight: dict[str, float] = Field(default_factory=dict, description="family_law: w_f (default 1)")
    family_scale: dict[str, float] = Field(default_factory=dict, description="family_law: C_f = E+A/N^α+B/D^β (default 1)")
    families: str | None = Field(None, description="language -> family JSON (default: the shipped table)")
    langs: list[str] | None = Field(None, description="use only these languages")
    shuffle: bool = Field(True, description="shuffle each language's documents per epoch (seeded)")


# ---- proportions ----------------------------------------------------------------------------
def load_families(path: str | None = None) -> dict[str, str]:
    if path is None:
        text = resources.files("glotta.data").joinpath("families.json").read_text(encoding="utf-8")
        where = "glotta/data/families.json"
    else:
        if not Path(path).is_file():
            raise ConfigError(f"mix.families: file not found: {path}")
        text, where = Path(path).read_text(encoding="utf-8"), path
    try:
        data = json.loads(text)
        table = data["families"] if isinstance(data, dict) and "families" in data else data
        return {str(k): str(v) for k, v in table.items()}
    except (json.JSONDecodeError, AttributeError, TypeError) as e:
        raise ConfigError(f"mix.families: {where} is not a language -> family JSON object: {e}") from None


def _normalise(w: dict[str, float], what: str) -> dict[str, float]:
    bad = {k: v for k, v in w.items() if not (v >= 0 and math.isfinite(v))}
    if bad:
        raise ConfigError(f"{what}: weights must be finite and >= 0, got {bad}")
    total = sum(w.values())
    if not total > 0:
        raise ConfigError(f"{what}: weights must sum to a positive number (sum = {total})")
    return {k: v / total for k, v in w.items()}


def unimax(sizes: dict[str, float], budget: float, max_epochs: float) -> dict[str, float]:
    """Chung et al. 2023, Algorithm 1: uniform budget per language, capped at max_epochs of its data."""
    left, n_left = float(budget), len(sizes)
    alloc = {}
    for lang, size in sorted(sizes.items(), key=lambda kv: (kv[1], kv[0])):
        alloc[lang] = min(left / n_left, max_epochs * size)
        left -= alloc[lang]
        n_left -= 1
    return _normalise(alloc, "mix (unimax)")


def family_law(gamma: dict[str, float], weight: dict[str, float], scale: dict[str, float]) -> dict[str, float]:
    """argmin Σ w_f C_f p_f^(-γ_f) s.t. Σ p_f = 1: p_f = (w_f γ_f C_f / λ)^(1/(1+γ_f)), λ by bisection."""
    for f, g in gamma.items():
        if not (g > 0 and math.isfinite(g)):
            raise ConfigError(f"mix.family_gamma.{f}: γ must be a positive number, got {g}")
    k = {f: weight.get(f, 1.0) * g * scale.get(f, 1.0) for f, g in gamma.items()}
    if any(not (v > 0) for v in k.values()):
        raise ConfigError("mix.family_weight / mix.family_scale must be positive")

    def shares(log_lam: float) -> dict[str, float]:
        return {f: math.exp((math.log(k[f]) - log_lam) / (1 + gamma[f])) for f in gamma}

    lo, hi = -200.0, 200.0  # Σ p is decreasing in λ; this bracket covers any sane γ, w, C
    for _ in range(200):
        mid = (lo + hi) / 2
        if sum(shares(mid).values()) > 1:
            lo = mid
        else:
            hi = mid
    p = shares((lo + hi) / 2)
    total = sum(p.values())
    return {f: v / total for f, v in p.items()}


def mix_weights(cfg: MixConfig, sizes: dict[str, float]) -> dict[str, float]:
    """Target share of each language (sums to 1; languages with share 0 are left out)."""
    sizes = {lang: float(s) for lang, s in sizes.items()}
    if cfg.method == "natural":
        p = _normalise(sizes, "mix (natural)")
    elif cfg.method == "temperature":
        p = _normalise({lang: s**cfg.alpha if s > 0 else 0.0 for lang, s in sizes.items()}, "mix (temperature)")
    elif cfg.method == "unimax":
        budget = cfg.budget if cfg.budget is not None else sum(sizes.values())
        p = unimax(sizes, budget, cfg.max_epochs or 1.0)
    elif cfg.method == "explicit":
        if not cfg.weights:
            raise ConfigError("mix.weights: method 'explicit' needs weights (language -> weight)")
        missing = sorted(lang for lang, w in cfg.weights.items() if w > 0 and sizes.get(lang, 0) <= 0)
        if missing:
            raise DataError(f"mix.weights: no documents for language(s) {missing} (empty or excluded)")
        p = _normalise({lang: float(w) for lang, w in cfg.weights.items() if lang in sizes}, "mix.weights")
    elif cfg.method == "family_law":
        if not cfg.family_gamma:
            raise ConfigError("mix.family_gamma: method 'family_law' needs γ per family")
        table = load_families(cfg.families)
        fam_of = {lang: table.get(lang, f"lang:{lang}") for lang in sizes}
        present = sorted(set(fam_of.values()))
        missing = [f for f in present if f not in cfg.family_gamma]
        if missing:
            raise ConfigError(
                f"mix.family_gamma: no γ for famil{'y' if len(missing) == 1 else 'ies'} {missing} "
                f"(languages: {sorted(lang for lang, f in fam_of.items() if f in missing)})"
            )
        pf = family_law({f: cfg.family_gamma[f] for f in present}, cfg.family_weight, cfg.family_scale)
        fam_size = {f: sum(s for lang, s in sizes.items() if fam_of[lang] == f) for f in present}
        p = {lang: pf[fam_of[lang]] * s / fam_size[fam_of[lang]] for lang, s in sizes.items() if s > 0}
    else:  # pragma: no cover - pydantic restricts the literal
        raise ConfigError(f"mix.method: unknown method {cfg.method!r}")
    return {lang: v for lang, v in sorted(p.items()) if v > 0}


# ---- the document schedule ------------------------------------------------------------------
class Schedule:
    """Global document order: slot j -> (language, document index within that language).

    The language sequence is the C++ largest-error interleave; the document is the language's
    occurrence number mapped through a per-(seed, language, epoch) permutation. Everything is a
    pure function of the config, so every rank computes the same order without talking.
    """

    CHUNK = 1 << 16

    def __init__(self, doc_rates: list[float], n_docs: list[int], caps: list[int], seed: int, shuffle: bool):
        self.n_docs, self.seed, self.shuffle = n_docs, seed, shuffle
        self._blend = BlendSchedule([float(r) for r in doc_rates], [int(c) for c in caps])
        self._shadow = BlendSchedule([float(r) for r in doc_rates], [int(c) for c in caps])  # stays at _base
        # Generated slots [_base, _base + len(_lang)); slots before _keep are dropped as generation goes on,
        # so a long run (or a resume deep into one) keeps only the window the lanes still need.
        self._base, self._keep = 0, 0
        self._lang = np.empty(0, np.int32)
        self._occ = np.empty(0, np.int64)
        self.length: int | None = None  # known once the schedule ran dry
        self._seeds: dict[tuple[int, int], int] = {}
        self._by_epoch: dict[int, np.ndarray] = {}

    def forget(self, before: int) -> None:
        """Slots below `before` will not be looked up again."""
        self._keep = max(self._keep, before)
        self._trim()

    def _trim(self) -> None:
        drop = min(self._keep - self._base, len(self._lang))
        if drop >= self.CHUNK:
            self._lang, self._occ = self._lang[drop:].copy(), self._occ[drop:].copy()
            self._base += drop
            self._shadow.next(drop)  # replays the dropped slots so its state is the state at _base

    def snapshot(self) -> dict:
        """Generator state at the start of the window (plain types, for the loader state)."""
        st = self._shadow.state()
        return {k: (list(v) if isinstance(v, list) else int(v)) for k, v in st.items()}

    def restore(self, snap: dict) -> None:
        """Start the window at a snapshot() instead of replaying the schedule from slot 0."""
        args = (int(snap["pos"]), int(snap["seg_pos"]), list(snap["counts"]), list(snap["seg_counts"]), list(snap["active"]))
        self._blend.restore(*args)
        self._shadow.restore(*args)
        self._base = self._keep = args[0]
        self._lang = np.empty(0, np.int32)
        self._occ = np.empty(0, np.int64)
        self.length = None

    def _extend(self, upto: int) -> None:
        while self.length is None and self._base + len(self._lang) < upto:
            # Chunks grow from CHUNK/16 to CHUNK: the first batch waits for ~4,000 slots, not
            # 65,536 (13-26 ms with 24-160 languages); the slots do not depend on the chunking.
            step = min(self.CHUNK, max(self.CHUNK >> 4, 2 * len(self._lang)))
            want = min(max(step, upto - self._base - len(self._lang)), 16 * self.CHUNK)
            lang, occ = self._blend.next(want)
            self._lang = np.concatenate([self._lang, lang])
            self._occ = np.concatenate([self._occ, occ])
            if len(lang) < want:
                self.length = self._base + len(self._lang)
            self._trim()

    def _perm_seed(self, lang: int, epoch: int) -> int:
        key = (lang, epoch)
        seed = self._seeds.get(key)
        if seed is None:
            if len(self._seeds) > 4096:
                self._seeds.clear()
            seed = self._seeds[key] = stable_seed(self.seed, "perm", lang, epoch) & _MASK64
        return seed

    def _epoch_seeds(self, epoch: int) -> np.ndarray:
        """uint64 seed of every language's permutation in `epoch` (the _perm_seed values), kept
        per epoch: np.unique cost ~40 us a call on numpy 2, a third of a task's schedule lookup."""
        seeds = self._by_epoch.get(epoch)
        if seeds is None:
            if len(self._by_epoch) > 64:
                self._by_epoch.clear()
            seeds = self._by_epoch[epoch] = np.array([self._perm_seed(i, epoch) for i in range(len(self.n_docs))], np.uint64)
        return seeds

    def lookup(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lang, doc within language, epoch) per slot; lang = -1 past the end of the schedule."""
        slots = np.asarray(slots, dtype=np.int64)
        if slots.size and slots.min() < self._base:
            raise ValueError(f"schedule slot {int(slots.min())} was already forgotten (window starts at {self._base})")
        self._extend(int(slots.max(initial=-1)) + 1)
        ok = slots < self._base + len(self._lang)
        lang = np.full(len(slots), -1, np.int32)
        doc = np.full(len(slots), -1, np.int64)
        epoch = np.zeros(len(slots), np.int64)
        lang[ok] = self._lang[slots[ok] - self._base]
        occ = self._occ[slots[ok] - self._base]
        nd = np.asarray(self.n_docs, dtype=np.int64)[lang[ok]]
        ep, pos = occ // nd, occ % nd
        epoch[ok] = ep
        d = pos.copy()
        if self.shuffle and len(pos):
            # One seeded bijection per (language, epoch), evaluated per document: no per-language
            # array, so a rank's memory does not grow with the corpus (csrc/mix.cpp: feistel).
            # One seed per distinct (language, epoch) of the call, not one Python step per slot.
            e0, ue = int(ep.min()), int(ep.max()) + 1
            if ue - e0 == 1:  # the common case, one epoch: a gather from that epoch's seed per language
                seeds = self._epoch_seeds(e0)[lang[ok]]
            else:  # small languages cycling within the call: one seed per distinct (language, epoch)
                uniq, inv = np.unique(lang[ok].astype(np.int64) * ue + ep, return_inverse=True)
                useeds = np.fromiter((self._perm_seed(u // ue, u % ue) for u in uniq.tolist()), np.uint64, len(uniq))
                seeds = useeds[inv.reshape(-1)]
            d = permute(pos, nd, seeds)
        doc[ok] = d
        return lang, doc, epoch


def doc_caps(cfg: MixConfig, n_docs: list[int]) -> list[int]:
    """Documents each language may contribute before it leaves the mix (-1 = never leaves)."""
    if cfg.exhausted == "drop":
        epochs = min(cfg.max_epochs, 1.0) if cfg.max_epochs else 1.0
    elif cfg.max_epochs is not None:
        epochs = cfg.max_epochs
    elif cfg.method == "unimax":
        epochs = 1.0
    else:
        return [-1] * len(n_docs)
    return [max(1, math.ceil(epochs * n)) for n in n_docs]
