"""DSIR-style importance resampling toward a target sample (Xie et al., 2023, "Data Selection for
Language Models via Importance Resampling").

Features: hashed word unigrams and bigrams (`buckets` bins; words are `\\w+` runs, and runs of
CJK / kana / Hangul characters are split into single characters, since those scripts do not put
spaces between words). Two bag-of-n-grams models per language, add-one smoothed: one fitted on
the target sample, one on the raw pool. A document's log importance weight is
sum over its features of count x (log p_target - log p_raw). DSIR resamples without replacement
in proportion to the weights, which the Gumbel-top-k trick does exactly: score = log w + Gumbel
noise (seeded), then keep the top of the ranking. Target documents of a language missing from the
target sample fall back to the whole target sample.

Cost: `buckets` floats per language and model (10,000 x 8 B x 2 per language); one pass over the
pool to fit the raw model, one to score. Per-document features are not kept.
"""
from __future__ import annotations

import json
import re
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np

from glotta.errors import ConfigError

_WORD = re.compile(r"\w+")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def words(text: str) -> list[str]:
    out: list[str] = []
    for w in _WORD.findall(text.casefold()):
        if _CJK.search(w):
            out += list(w)
        else:
            out.append(w)
    return out


def features(text: str, buckets: int) -> np.ndarray:
    """Counts over `buckets` hashed unigrams + bigrams."""
    ws = words(text)
    grams = ws + [f"{a} {b}" for a, b in zip(ws, ws[1:])]
    idx = np.fromiter((zlib.crc32(g.encode()) % buckets for g in grams), dtype=np.int64, count=len(grams))
    return np.bincount(idx, minlength=buckets).astype(np.float64)


def read_target(path: Path) -> list[tuple[str, str | None]]:
    """(text, lang or None): JSONL with `text` (and optional `lang`), or plain text, one document per
    blank-line-separated block."""
    if not Path(path).is_file():
        raise ConfigError(f"target: file not found: {path}")
    raw = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix in (".jsonl", ".json"):
        out = []
        for i, line in enumerate(raw.splitlines()):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                out.append((str(r["text"]), r.get("lang")))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ConfigError(f"target: {path}:{i + 1}: not a JSON object with a 'text' field") from None
    else:
        out = [(b, None) for b in re.split(r"\n\s*\n", raw) if b.strip()]
    if not out:
        raise ConfigError(f"target: {path} holds no documents")
    return out


def log_weights(texts: list[str], langs: list[str], target: list[tuple[str, str | None]],
                buckets: int = 10_000) -> np.ndarray:
    """log p_target(x) / p_raw(x) per document under per-language hashed n-gram models."""
    feats = [features(t, buckets) for t in texts]
    raw: dict[str, np.ndarray] = defaultdict(lambda: np.ones(buckets))
    for f, lang in zip(feats, langs):
        raw[lang] += f
    tgt_all = np.ones(buckets)
    tgt: dict[str, np.ndarray] = defaultdict(lambda: np.ones(buckets))
    for text, lang in target:
        f = features(text, buckets)
        tgt_all += f
        if lang:
            tgt[lang] += f
    out = np.empty(len(texts))
    logs: dict[str, np.ndarray] = {}
    for i, (f, lang) in enumerate(zip(feats, langs)):
        if lang not in logs:
            t = tgt[lang] if lang in tgt else tgt_all
            logs[lang] = np.log(t / t.sum()) - np.log(raw[lang] / raw[lang].sum())
        out[i] = float(f @ logs[lang])
    return out


def gumbel(keys: list[str], seed: int) -> np.ndarray:
    """Seeded Gumbel(0, 1) noise from a stable hash of each key (independent of row order)."""
    import hashlib

    u = np.fromiter((int.from_bytes(hashlib.blake2b(f"{seed}\x00{k}".encode(), digest_size=8).digest(), "little")
                     for k in keys), dtype=np.float64, count=len(keys))
    u = (u + 0.5) / 2.0**64
    return -np.log(-np.log(u))
