"""Per-language tokenizer metrics (definitions in docs/tokenizer.md).

- fertility: tokens per whitespace word (Rust et al. 2021); for scripts written without spaces
  (ja, zh, th, ...) tokens per character instead, flagged with `fertility_unit="char"`.
- pcw: proportion of continued words, words that became two or more tokens. A word is a run
  of pieces from one that starts with "▁" to the next; not reported for char-unit languages.
- bytes_per_token / chars_per_token: compression.
- unk_rate / byte_rate: share of tokens that are <unk> or byte-fallback pieces <0xNN>.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import sentencepiece as spm

# Scripts written without spaces between words: fertility per word would be meaningless.
NO_SPACE_LANGS = frozenset({"ja", "zh", "th", "lo", "km", "my", "bo", "dz", "yue", "wuu", "lzh", "jv_java"})
# A language not in the list is treated as unspaced when its "words" are this long on average.
UNSPACED_CHARS_PER_WORD = 15.0


class Vocab:
    """Per-id lookup tables of one SentencePiece model, built once."""

    def __init__(self, sp: spm.SentencePieceProcessor):
        self.sp = sp
        n = sp.get_piece_size()
        self.starts_word = np.array([sp.id_to_piece(i).startswith("▁") for i in range(n)], dtype=bool)
        self.is_byte = np.array([sp.is_byte(i) for i in range(n)], dtype=bool)
        self.is_unk = np.array([sp.is_unknown(i) for i in range(n)], dtype=bool)


@dataclass
class Counts:
    lines: int = 0
    words: int = 0
    chars: int = 0
    bytes: int = 0
    tokens: int = 0
    groups: int = 0  # "▁"-started piece runs (the tokenizer's view of words)
    continued: int = 0
    unk: int = 0
    byte: int = 0
    per_line: dict[str, int] = field(default_factory=dict)  # line id -> tokens (premiums)


def count(vocab: Vocab, texts: list[str], ids: list[str] | None = None) -> Counts:
    """Counts over `texts`, vectorised over all tokens at once (no per-line Python work but len())."""
    encoded = vocab.sp.encode(texts)
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    joined = "\n".join(texts)
    c = Counts(lines=len(texts), words=len(joined.split()), chars=len(joined) - max(len(texts) - 1, 0),
               bytes=len(joined.encode("utf-8")) - max(len(texts) - 1, 0), tokens=int(lengths.sum()))
    if ids is not None:
        c.per_line = dict(zip(ids, lengths.tolist()))
    if not c.tokens:
        return c
    flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int64, count=c.tokens)
    starts = vocab.starts_word[flat]
    line_starts = np.cumsum(lengths) - lengths
    starts[line_starts[lengths > 0]] = True  # a line's first piece always opens a word
    bounds = np.flatnonzero(starts)
    runs = np.diff(np.append(bounds, len(flat)))
    c.groups, c.continued = len(runs), int((runs >= 2).sum())
    c.unk, c.byte = int(vocab.is_unk[flat].sum()), int(vocab.is_byte[flat].sum())
    return c


def unspaced(lang: str, c: Counts) -> bool:
    return lang in NO_SPACE_LANGS or (c.words > 0 and c.chars / c.words > UNSPACED_CHARS_PER_WORD)


def summarize(lang: str, c: Counts) -> dict:
    """The per-language row reported by `eval` (premium is added by the caller)."""
    char_unit = unspaced(lang, c)
    denom = c.chars if char_unit else c.words
    return {
        "lines": c.lines,
        "tokens": c.tokens,
        "fertility": c.tokens / denom if denom else None,
        "fertility_unit": "char" if char_unit else "word",
        "pcw": None if char_unit or not c.groups else c.continued / c.groups,
        "bytes_per_token": c.bytes / c.tokens if c.tokens else None,
        "chars_per_token": c.chars / c.tokens if c.tokens else None,
        "unk_rate": c.unk / c.tokens if c.tokens else 0.0,
        "byte_rate": c.byte / c.tokens if c.tokens else 0.0,
    }


def parallel_premium(lang: Counts, ref: Counts) -> tuple[float | None, int]:
    """Petrov et al. 2023: tokens of the language / tokens of the reference on the shared lines."""
    shared = lang.per_line.keys() & ref.per_line.keys()
    num = sum(lang.per_line[k] for k in shared)
    den = sum(ref.per_line[k] for k in shared)
    return (num / den if den else None), len(shared)


def byte_premium(lang: Counts, ref: Counts) -> float | None:
    """Without parallel text: tokens-per-byte of the language / tokens-per-byte of the reference.

    Not Petrov's premium: it ignores that scripts need different numbers of bytes for the same
    content (Devanagari takes 3 bytes a character, Latin 1), so it is reported under its own name.
    """
    if not (lang.bytes and ref.bytes and ref.tokens):
        return None
    return (lang.tokens / lang.bytes) / (ref.tokens / ref.bytes)


def spread(values: list[float]) -> dict:
    if not values:
        return {"max": None, "mean": None, "std": None, "min": None}
    v = np.asarray(values, dtype=float)
    return {"max": float(v.max()), "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min())}
