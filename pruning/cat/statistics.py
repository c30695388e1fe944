"""Per-document scores from the NLL matrix. Every method returns "higher = keep first".

Inputs: `nll` [n_docs, K] token-mean NLL in nats at K checkpoints (training order), `ppl = exp(nll)`,
and the document table (`lang`, `n_tokens`, `shard`, `key`). Variances are population variances
(ddof=0) over the K checkpoints.

Dynamics (need K >= 2):
  cat              var_k(PPL)                  the CAT paper's statistic (Chimoto et al., 2024)
  std              std_k(PPL)
  mean_abs_change  mean_k |PPL_{k+1} - PPL_k|
  drop             NLL_1 - NLL_K               signed: "being learned" vs oscillating noise
  nll_var          var_k(NLL)                  scale-free: variance of log-perplexity
  cv               std_k(PPL) / mean_k(PPL)    scale-free: coefficient of variation
  rank_change      mean_k |r_{k+1} - r_k|, r = percentile rank of NLL within the language
  zscore           z-score of log(var PPL) within (language x length bucket) cells
Baselines (need K >= 1):
  random           uniform from a stable hash of (seed, shard, key): independent of row order
  ppl_low / ppl_high  -NLL / NLL at one checkpoint (keep the easiest / hardest)
  ppl_mid          closeness to the language's median token mass, by NLL at one checkpoint
  length           n_tokens (keep the longest)
  early_loss       NLL at the first (earliest) checkpoint, keep the highest: the loss-based
                   member of the EL2N family (Paul et al. 2021 score early in training; true EL2N
                   needs the output distribution, which the scores table does not keep)
  dsir             DSIR importance resampling toward a target sample (glotta.pruning.cat.dsir):
                   log importance weight + seeded Gumbel noise, so the top of the ranking is a
                   weighted sample without replacement; needs `target` (select computes the weights)
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from glotta.errors import ConfigError


@dataclass(frozen=True)
class Options:
    seed: int = 0
    checkpoint: int = -1  # 1-based checkpoint for single-checkpoint baselines; -1 = last
    length_buckets: int = 4  # zscore cells per language, by n_tokens quantile
    dsir_log_weights: np.ndarray | None = None  # per row of the table, for method=dsir


def _ppl(nll: np.ndarray) -> np.ndarray:
    # NLL above ~700 nats would overflow exp; a model that bad is broken, but keep the numbers finite.
    return np.exp(np.minimum(nll, 700.0))


def cat(df, nll, opt):
    return _ppl(nll).var(axis=1)


def std(df, nll, opt):
    return _ppl(nll).std(axis=1)


def mean_abs_change(df, nll, opt):
    return np.abs(np.diff(_ppl(nll), axis=1)).mean(axis=1)


def drop(df, nll, opt):
    return nll[:, 0] - nll[:, -1]


def nll_var(df, nll, opt):
    return nll.var(axis=1)


def cv(df, nll, opt):
    p = _ppl(nll)
    return p.std(axis=1) / p.mean(axis=1)


def _pct_rank(values: np.ndarray, groups: pd.Series) -> np.ndarray:
    """Percentile rank in [0, 1] within each group (average rank for ties)."""
    s = pd.Series(values, index=groups.index)
    r = s.groupby(groups.to_numpy()).rank(method="average")
    n = s.groupby(groups.to_numpy()).transform("size")
    return ((r - 1) / np.maximum(n - 1, 1)).to_numpy()


def rank_change(df, nll, opt):
    ranks = np.stack([_pct_rank(nll[:, k], df["lang"]) for k in range(nll.shape[1])], axis=1)
    return np.abs(np.diff(ranks, axis=1)).mean(axis=1)


def length_bucket(df: pd.DataFrame, buckets: int) -> np.ndarray:
    """0..buckets-1 by n_tokens quantile within the language."""
    pct = _pct_rank(df["n_tokens"].to_numpy(dtype=np.float64), df["lang"])
    return np.minimum((pct * buckets).astype(int), buckets - 1)


def zscore(df, nll, opt):
    # log: var(PPL) is heavy-tailed (it spanned 700 to 240k within one language in our experiment)
    base = np.log(cat(df, nll, opt) + 1e-12)
    cells = df["lang"].astype(str).to_numpy() + "\x00" + length_bucket(df, opt.length_buckets).astype(str)
    s = pd.Series(base)
    g = s.groupby(cells)
    mean, sd = g.transform("mean").to_numpy(), g.transform("std", ddof=0).to_numpy()
    return np.where(sd > 0, (base - mean) / np.where(sd > 0, sd, 1.0), 0.0)


def _column(nll: np.ndarray, opt: Options) -> np.ndarray:
    k = nll.shape[1]
    idx = k - 1 if opt.checkpoint == -1 else opt.checkpoint - 1
    if not 0 <= idx < k:
        raise ConfigError(f"checkpoint: {opt.checkpoint} is not one of 1..{k} (or -1 for the last)")
    return nll[:, idx]


def ppl_low(df, nll, opt):
    return -_column(nll, opt)


def ppl_high(df, nll, opt):
    return _column(nll, opt)


def ppl_mid(df, nll, opt):
    """Marion et al.'s "middle": rank by NLL within the language, score by closeness of the
    document's token-mass midpoint to 50%, so keeping the top f keeps the central f of tokens."""
    x = _column(nll, opt)
    out = np.empty(len(df))
    tokens = df["n_tokens"].to_numpy(dtype=np.float64)
    for _, idx in df.groupby("lang", sort=False).indices.items():
        order = idx[np.argsort(x[idx], kind="stable")]
        t = tokens[order]
        mid = (np.cumsum(t) - t / 2) / max(t.sum(), 1.0)
        out[order] = -np.abs(mid - 0.5)
    return out


def length(df, nll, opt):
    return df["n_tokens"].to_numpy(dtype=np.float64)


def early_loss(df, nll, opt):
    return nll[:, 0]


def dsir(df, nll, opt):
    from glotta.pruning.cat.dsir import gumbel

    if opt.dsir_log_weights is None or len(opt.dsir_log_weights) != len(df):
        raise ConfigError("method dsir: needs a target sample (prune_select target=FILE) to compute the weights")
    return opt.dsir_log_weights + gumbel((df["shard"] + "/" + df["key"]).tolist(), opt.seed)


def random(df, nll, opt):
    def u(shard: str, key: str) -> float:
        h = hashlib.blake2b(f"{opt.seed}\x00{shard}\x00{key}".encode(), digest_size=8).digest()
        return int.from_bytes(h, "little") / 2.0**64

    return np.fromiter((u(s, k) for s, k in zip(df["shard"], df["key"])), dtype=np.float64, count=len(df))


Method = Callable[[pd.DataFrame, np.ndarray, Options], np.ndarray]

# name -> (function, checkpoints needed)
METHODS: dict[str, tuple[Method, int]] = {
    "cat": (cat, 2),
    "std": (std, 2),
    "mean_abs_change": (mean_abs_change, 2),
    "drop": (drop, 2),
    "nll_var": (nll_var, 2),
    "cv": (cv, 2),
    "rank_change": (rank_change, 2),
    "zscore": (zscore, 2),
    "random": (random, 0),
    "ppl_low": (ppl_low, 1),
    "ppl_mid": (ppl_mid, 1),
    "ppl_high": (ppl_high, 1),
    "length": (length, 0),
    "early_loss": (early_loss, 1),
    "dsir": (dsir, 0),
}


def score(method: str, df: pd.DataFrame, nll: np.ndarray, opt: Options = Options()) -> np.ndarray:
    if method not in METHODS:
        raise ConfigError(f"method: unknown {method!r} (one of {', '.join(METHODS)})")
    fn, need = METHODS[method]
    if nll.shape[1] < need:
        raise ConfigError(
            f"method {method!r} needs scores at >= {need} checkpoints; the table has {nll.shape[1]} "
            "(stage 1 must keep at least 2 early checkpoints: train.keep_checkpoints)"
        )
    out = np.asarray(fn(df, nll, opt), dtype=np.float64)
    return np.where(np.isfinite(out), out, -np.inf)
