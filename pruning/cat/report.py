"""What a selection kept vs dropped, per language: the checks behind "CAT keeps longer, rarer text".

Length (tokens, bytes) comes from the scores table for every document. Type/token ratio and
rare-token rate need the token ids, so they are computed on a sample of documents (a stable hash
of the document id picks them, the same sample for every method) tokenised with the run's own
SentencePiece model. A rare token is one whose type occurs at most `rare_max_count` times in that
sample (all languages together). Score histograms are one PNG per language.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd


def _side_stats(part: pd.DataFrame, token_lists: dict[str, list[int]], rare: set[int]) -> dict:
    out = {
        "docs": int(len(part)),
        "tokens": int(part["n_tokens"].sum()),
        "mean_tokens": float(part["n_tokens"].mean()) if len(part) else None,
        "mean_bytes": float(part["n_bytes"].mean()) if len(part) else None,
    }
    ids = [token_lists[i] for i in part["id"] if i in token_lists]
    ids = [t for t in ids if t]
    if ids:
        out["sample_docs"] = len(ids)
        out["type_token_ratio"] = float(np.mean([len(set(t)) / len(t) for t in ids]))
        n = sum(len(t) for t in ids)
        out["rare_token_rate"] = sum(1 for t in ids for x in t if x in rare) / n
    return out


def text_stats(df: pd.DataFrame, kept: np.ndarray, token_lists: dict[str, list[int]], rare_max_count: int) -> dict:
    """{lang: {"kept": {...}, "dropped": {...}}} plus "all" for the whole table."""
    counts = Counter(x for t in token_lists.values() for x in t)
    rare = {x for x, c in counts.items() if c <= rare_max_count}
    d = df.assign(id=df["shard"] + "/" + df["key"], kept=kept)
    out = {}
    for lang, part in [("all", d)] + list(d.groupby("lang")):
        out[lang] = {"kept": _side_stats(part[part["kept"]], token_lists, rare),
                     "dropped": _side_stats(part[~part["kept"]], token_lists, rare)}
    return out


def histograms(df: pd.DataFrame, scores: np.ndarray, kept: np.ndarray, out_dir: Path, method: str) -> list[Path]:
    """One PNG per language: score distribution of kept (blue) over all (grey) documents."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    langs = df["lang"].to_numpy()
    for lang in sorted(set(langs)):
        m = langs == lang
        s, k = scores[m], kept[m]
        finite = np.isfinite(s)
        fig = Figure(figsize=(5, 3.2), dpi=90)
        ax = fig.add_subplot()
        if finite.any():
            edges = np.histogram_bin_edges(s[finite], bins=30)
            n_all, _ = np.histogram(s[finite], edges)
            n_kept, _ = np.histogram(s[finite & k], edges)
            # stairs draw one artist per series; stacked bar histograms were 3x slower to render
            ax.stairs(n_all, edges, fill=True, color="#c8c8c8", label="dropped")
            ax.stairs(n_kept, edges, fill=True, color="#2b7bba", label="kept")
            ax.legend(fontsize=8)
        ax.set_title(f"{lang}: {method} score ({int(k.sum())}/{len(k)} docs kept)", fontsize=9)
        ax.set_xlabel(f"{method} score (higher = kept first)", fontsize=8)
        ax.set_ylabel("documents", fontsize=8)
        fig.subplots_adjust(left=0.12, bottom=0.15, right=0.97, top=0.9)
        p = out_dir / f"hist_{lang}.png"
        fig.savefig(p)
        paths.append(p)
    return paths
