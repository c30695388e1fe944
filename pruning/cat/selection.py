"""Which documents to keep, given one score per document (higher = keep first).

Budgets are counted in `unit`s (tokens by default: training compute is spent per token; or
documents). Per language (the default, as CAT pruned each language pair separately, and as
CCNet / FineWeb2-HQ threshold per language) each language keeps `fraction` of its own units,
walking its ranking until the budget is reached. Languages with at most `floor` units are kept
whole. `allocation: unimax` instead spreads the total budget
`fraction x all units` as evenly as possible over languages, never more than a language has
(UniMax, Chung et al. 2023, with at most one epoch). `cap` bounds any language's kept units.
`scope: global` ranks all documents together (to show what that does to small languages).

Budgets hold: the walk stops at the first document that reaches the budget, so a language's kept
units exceed its budget by less than that one document (`overshoot`; within max(one document,
1%) by construction). Documents are selected whole even when they were scored per window.
Documents with a score of -inf (a pre-step such as deduplication removed them, or the score is
undefined) are never kept; a language whose remaining documents cannot fill its budget keeps all
of them and is reported (`unmet` > 0, the missing units), never silently.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from glotta.config import StrictModel


class SelectionConfig(StrictModel):
    fraction: float = Field(0.5, description="share of units to keep, in (0, 1]")
    unit: Literal["tokens", "docs"] = "tokens"
    scope: Literal["language", "global"] = "language"
    allocation: Literal["fraction", "unimax"] = "fraction"
    floor: int = Field(0, ge=0, description="languages with at most this many units are kept whole")
    cap: int | None = Field(None, gt=0, description="most units any language keeps")

    @model_validator(mode="after")
    def _check(self):
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"keep fraction must be in (0, 1], got {self.fraction}")
        if self.scope == "global" and self.allocation == "unimax":
            raise ValueError("allocation=unimax allocates per language; it needs scope=language")
        if self.cap is not None and self.floor > self.cap:
            raise ValueError(f"floor ({self.floor}) is above cap ({self.cap}): a floor language could not be kept whole")
        return self


def _units(df: pd.DataFrame, unit: str) -> np.ndarray:
    return df["n_tokens"].to_numpy(dtype=np.float64) if unit == "tokens" else np.ones(len(df))


def unimax_budgets(sizes: dict[str, float], total: float) -> dict[str, float]:
    """Water-filling: smallest languages first, each gets min(its size, an equal share of what is left)."""
    out, left = {}, total
    order = sorted(sizes, key=lambda k: sizes[k])
    for i, lang in enumerate(order):
        out[lang] = min(sizes[lang], left / (len(order) - i))
        left -= out[lang]
    return out


def budgets(df: pd.DataFrame, cfg: SelectionConfig) -> pd.DataFrame:
    """Per-language sizes and budgets (in units) before any document is chosen."""
    units = _units(df, cfg.unit)
    sizes = pd.Series(units).groupby(df["lang"].to_numpy()).sum()
    floor = sizes <= cfg.floor
    if cfg.allocation == "unimax":
        total = cfg.fraction * sizes.sum() - sizes[floor].sum()
        alloc = unimax_budgets(sizes[~floor].to_dict(), max(total, 0.0))
        budget = pd.Series({lang: sizes[lang] if floor[lang] else alloc[lang] for lang in sizes.index})
    else:
        budget = sizes * cfg.fraction
        budget[floor] = sizes[floor]
    if cfg.cap is not None:
        budget[~floor] = budget[~floor].clip(upper=cfg.cap)
    return pd.DataFrame({"size": sizes, "budget": budget, "floor": floor})


def select(df: pd.DataFrame, scores: np.ndarray, cfg: SelectionConfig) -> tuple[np.ndarray, pd.DataFrame]:
    """(kept mask aligned with df rows, per-language table)."""
    if len(scores) != len(df):
        raise ValueError("one score per document")
    scores = np.asarray(scores, dtype=np.float64)
    units = _units(df, cfg.unit)
    langs = df["lang"].to_numpy()
    plan = budgets(df, cfg)
    # Highest score first; ties keep row order (the table is in shard order, so this is deterministic).
    order = np.lexsort((np.arange(len(df)), -scores))
    lang_o, units_o = langs[order], units[order]
    usable_o = scores[order] > -np.inf  # removed by a pre-step (dedup) or undefined: never kept
    counted_o = np.where(usable_o, units_o, 0.0)
    # Usable units of the same language ranked above each document (exclusive cumulative sum per language).
    before_lang = pd.Series(counted_o).groupby(lang_o).cumsum().to_numpy() - counted_o
    is_floor = plan["floor"].reindex(lang_o).to_numpy()
    lang_budget = plan["budget"].reindex(lang_o).to_numpy()
    if cfg.scope == "language":
        keep_o = usable_o & (is_floor | (before_lang < lang_budget))
    else:
        # Floor languages are kept whole; the rest compete for what remains of the global budget.
        total = cfg.fraction * units.sum() - plan["size"][plan["floor"]].sum()
        eligible = ~is_floor & usable_o
        if cfg.cap is not None:
            eligible &= before_lang < cfg.cap
        cum = np.cumsum(np.where(eligible, units_o, 0.0)) - np.where(eligible, units_o, 0.0)
        keep_o = usable_o & (is_floor | (eligible & (cum < total)))
    kept = np.zeros(len(df), dtype=bool)
    kept[order] = keep_o
    return kept, summarize(df, kept, plan, cfg, usable=scores > -np.inf)


def summarize(df: pd.DataFrame, kept: np.ndarray, plan: pd.DataFrame, cfg: SelectionConfig | None = None,
              usable: np.ndarray | None = None) -> pd.DataFrame:
    """Per language: documents, tokens, kept, budget, `overshoot` (kept units above the budget) and
    `unmet` (budget units that could not be filled because too few usable documents were left)."""
    tokens = df["n_tokens"].to_numpy(dtype=np.int64)
    usable = np.ones(len(df), dtype=bool) if usable is None else usable
    g = pd.DataFrame({"lang": df["lang"].to_numpy(), "docs": 1, "tokens": tokens, "usable_docs": usable.astype(int),
                      "kept_docs": kept.astype(int), "kept_tokens": np.where(kept, tokens, 0)}).groupby("lang").sum()
    g["kept_frac_docs"] = g["kept_docs"] / g["docs"]
    g["kept_frac_tokens"] = g["kept_tokens"] / g["tokens"].clip(lower=1)
    g["floor"] = plan["floor"].reindex(g.index)
    g["budget"] = plan["budget"].reindex(g.index)
    unit = cfg.unit if cfg is not None else "tokens"
    kept_units = g["kept_tokens"] if unit == "tokens" else g["kept_docs"]
    if cfg is not None and cfg.scope == "global":  # no per-language budget, only the cap
        cap = np.inf if cfg.cap is None else float(cfg.cap)
        g["overshoot"] = (kept_units - cap).clip(lower=0).where(~g["floor"], 0.0) if cap < np.inf else 0.0
        g["unmet"] = 0.0
    else:
        g["overshoot"] = (kept_units - g["budget"]).clip(lower=0)
        # A floor language keeps every usable document by definition: nothing to report there.
        g["unmet"] = (g["budget"] - kept_units).clip(lower=0).where(~g["floor"], 0.0)
    return g.reset_index()


def unmet_languages(per_lang: pd.DataFrame) -> list[str]:
    """Languages whose budget could not be filled (after pre-steps removed documents)."""
    return [str(x) for x in per_lang.loc[per_lang["unmet"] > 0, "lang"]]
