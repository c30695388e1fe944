"""How much does CAT's selection depend on choices the paper leaves open? Selection-level answers
from one scores table (no retraining): which checkpoints, budget unit, window handling, and how
the CAT ranking correlates with the perplexity level and the length of documents, per language.

Every comparison is the Jaccard overlap of the kept sets (same budget, per language) against CAT
with all checkpoints, token budget and the table's window handling; two independent random 50%
selections overlap by about 1/3, which is the "unrelated" level.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from glotta.pruning.cat import statistics as st
from glotta.pruning.cat.selection import SelectionConfig, select


@dataclass
class LangCorrelation:
    lang: str
    docs: int
    with_first_nll: float  # Spearman rho of var(PPL) with NLL at the first checkpoint (perplexity level)
    with_last_nll: float
    with_length: float  # with n_tokens


@dataclass
class Variant:
    name: str
    jaccard_vs_cat: float  # overlap of kept documents with the reference CAT selection


@dataclass
class Sensitivity:
    correlations: list[LangCorrelation]
    variants: list[Variant]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def analyse(df: pd.DataFrame, nll: np.ndarray, keep: float = 0.5, other_nll: dict[str, np.ndarray] | None = None,
            seed: int = 0) -> Sensitivity:
    """`other_nll`: the same documents scored another way (e.g. windows with carried context)."""
    cat = st.score("cat", df, nll)
    corr = []
    for lang, idx in sorted(df.groupby("lang").indices.items()):
        if len(idx) < 3:
            continue
        rho = lambda y: float(spearmanr(cat[idx], y[idx]).statistic)  # noqa: E731
        corr.append(LangCorrelation(str(lang), len(idx), rho(nll[:, 0]), rho(nll[:, -1]),
                                    rho(df["n_tokens"].to_numpy(dtype=float))))
    tokens = SelectionConfig(fraction=keep)
    ref, _ = select(df, cat, tokens)
    k = nll.shape[1]
    variants = []

    def add(name: str, scores: np.ndarray, cfg: SelectionConfig = tokens):
        kept, _ = select(df, scores, cfg)
        variants.append(Variant(name, jaccard(ref, kept)))

    if k >= 3:
        add(f"cat, checkpoints 1-2 of {k}", st.score("cat", df, nll[:, :2]))
        add(f"cat, checkpoints {k - 1}-{k} of {k}", st.score("cat", df, nll[:, -2:]))
        add(f"cat, checkpoints 1 and {k}", st.score("cat", df, nll[:, [0, k - 1]]))
    add("cat, document budget", cat, SelectionConfig(fraction=keep, unit="docs"))
    for name, other in (other_nll or {}).items():
        add(f"cat, {name}", st.score("cat", df, other))
    add("nll_var (scale-free)", st.score("nll_var", df, nll))
    add("zscore (per language x length)", st.score("zscore", df, nll))
    add(f"ppl_high (checkpoint 1)", st.score("ppl_high", df, nll, st.Options(checkpoint=1)))
    add("length", st.score("length", df, nll))
    add("random", st.score("random", df, nll, st.Options(seed=seed)))
    return Sensitivity(corr, variants)


def table(s: Sensitivity) -> str:
    lines = ["| lang | docs | rho(cat, NLL ckpt 1) | rho(cat, NLL last) | rho(cat, length) |", "|---|---|---|---|---|"]
    lines += [f"| {c.lang} | {c.docs} | {c.with_first_nll:+.2f} | {c.with_last_nll:+.2f} | {c.with_length:+.2f} |"
              for c in s.correlations]
    lines += ["", "| selection | Jaccard with cat (all checkpoints, token budget) |", "|---|---|"]
    lines += [f"| {v.name} | {v.jaccard_vs_cat:.2f} |" for v in s.variants]
    return "\n".join(lines)
