"""Language-balanced training samples for tokenizers: temperature sampling or UniMax.

Sizes per language come from the shard set's manifest (UTF-8 text bytes, free to read), so
the sample is drawn in one streaming pass: every line of language L is kept floor(r_L) times
plus once more with probability frac(r_L), where r_L = target_L / size_L. Rates above 1 repeat
lines (up-sampling); SentencePiece counts repeated sentences, so repetition is re-weighting.

- temperature (XLM-R, mT5): q_L ∝ size_L^alpha; alpha=1 keeps the natural mix, alpha->0 is uniform.
- unimax (Chung et al. 2023): the budget is split evenly across languages, smallest first, but
  no language is repeated more than `max_epochs` times; what a small language cannot use goes
  to the larger ones.
"""
from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field

from glotta.config import StrictModel
from glotta.data import Manifest, iter_samples, list_shards
from glotta.data.manifest import MANIFEST
from glotta.errors import DataError
from glotta.progress import track
from glotta.seeding import stable_seed

log = logging.getLogger(__name__)


class SampleConfig(StrictModel):
    langs: list[str] | None = None  # default: every language in the shard set
    method: Literal["temperature", "unimax"] = "temperature"
    alpha: float = Field(0.3, gt=0, le=1)
    sample_bytes: int = Field(20_000_000, gt=0)  # UTF-8 bytes of text in the whole sample
    max_epochs: float = Field(4.0, gt=0)  # unimax: most repetitions of one language's text
    min_lang_bytes: int = Field(2_000, ge=0)  # languages with less text are left out (warned, counted)
    max_line_bytes: int = Field(4192, gt=0)  # SentencePiece's max_sentence_length; longer lines are cut
    holdout: Path | None = None  # parallel JSONL whose texts never enter the sample (held-out evaluation)
    seed: int = 0


@dataclass
class LangStats:
    available_bytes: int
    target_bytes: float
    rate: float
    lines: int = 0
    chars: int = 0
    bytes: int = 0

    @property
    def epochs(self) -> float:
        return self.bytes / self.available_bytes if self.available_bytes else 0.0


@dataclass
class TextSample:
    lines: list[str]
    langs: dict[str, LangStats]
    counters: Counter = field(default_factory=Counter)

    def card(self) -> dict[str, dict]:
        return {
            lang: {
                "available_bytes": s.available_bytes,
                "target_bytes": round(s.target_bytes),
                "sampled_bytes": s.bytes,
                "sampled_chars": s.chars,
                "sampled_lines": s.lines,
                "epochs": round(s.epochs, 4),
            }
            for lang, s in sorted(self.langs.items())
        }


def language_sizes(shard_dir: str | Path, counters: Counter | None = None, held: set[str] | None = None) -> dict[str, int]:
    """UTF-8 text bytes per language: from manifest.json, or counted from the shards without one
    or when held-out lines must not count (a held-out language would otherwise get less than its share)."""
    d = Path(shard_dir)
    if (d / MANIFEST).is_file() and not held:
        return {lang: e["bytes"] for lang, e in Manifest.load(d).langs().items()}
    sizes: Counter = Counter()
    for shard in list_shards(d):
        for s in iter_samples(shard, counters=Counter() if held else counters):
            if held:
                sizes[s.lang] += sum(len(x.encode("utf-8")) for x in map(str.strip, s.text.split("\n")) if x not in held)
            else:
                sizes[s.lang] += len(s.text.encode("utf-8"))
    return dict(sorted(sizes.items()))


def targets(sizes: dict[str, int], cfg: SampleConfig) -> dict[str, float]:
    """Bytes to draw per language under the configured method."""
    budget = float(cfg.sample_bytes)
    if cfg.method == "temperature":
        weights = {lang: n**cfg.alpha for lang, n in sizes.items()}
        total = sum(weights.values())
        return {lang: budget * w / total for lang, w in weights.items()}
    out: dict[str, float] = {}
    left = budget
    order = sorted(sizes, key=lambda lang: (sizes[lang], lang))
    for i, lang in enumerate(order):
        share = left / (len(order) - i)
        out[lang] = min(share, sizes[lang] * cfg.max_epochs)
        left -= out[lang]
    return out


def select_languages(sizes: dict[str, int], cfg: SampleConfig, counters: Counter, strict: bool) -> dict[str, int]:
    wanted = cfg.langs or sorted(sizes)
    missing = [lang for lang in wanted if lang not in sizes]
    if missing:
        raise DataError(f"sample.langs: no text for {', '.join(missing)} in the shard set (it has: {', '.join(sizes)})")
    chosen = {}
    for lang in wanted:
        if sizes[lang] < cfg.min_lang_bytes:
            msg = (
                f"language {lang!r} has only {sizes[lang]} bytes of text (< sample.min_lang_bytes="
                f"{cfg.min_lang_bytes}); left out of the tokenizer sample"
            )
            if strict:
                raise DataError(msg)
            log.warning(msg)
            counters["lang_too_small"] += 1
            continue
        chosen[lang] = sizes[lang]
    if not chosen:
        raise DataError("no language has enough text to sample (see sample.min_lang_bytes)")
    return chosen


def _cut(line: str, max_bytes: int) -> str:
    raw = line.encode("utf-8")
    return line if len(raw) <= max_bytes else raw[:max_bytes].decode("utf-8", errors="ignore")


def draw_sample(shard_dir: str | Path, cfg: SampleConfig, strict: bool = False) -> TextSample:
    """One streaming pass over the shard set; the result is seeded and identical on every run."""
    counters: Counter = Counter()
    held: set[str] = set()
    if cfg.holdout is not None:
        from glotta.tokenizer.parallel import parallel_texts

        held = parallel_texts(cfg.holdout)
    sizes = select_languages(language_sizes(shard_dir, counters, held), cfg, counters, strict)
    want = targets(sizes, cfg)
    stats = {lang: LangStats(sizes[lang], want[lang], want[lang] / sizes[lang]) for lang in sizes}
    lines: list[str] = []
    for shard in track(list_shards(shard_dir), "sampling shards"):
        rng = random.Random(stable_seed(cfg.seed, "tokenizer-sample", shard.name))
        for s in iter_samples(shard, counters=counters, strict=strict):
            st = stats.get(s.lang)
            if st is None:
                continue
            whole, frac = divmod(st.rate, 1.0)
            for line in s.text.split("\n"):
                line = line.strip()
                if not line:
                    continue
                if line in held:
                    counters["holdout_lines"] += 1
                    continue
                k = int(whole) + (rng.random() < frac)
                if not k:
                    continue
                cut = _cut(line, cfg.max_line_bytes)
                if cut is not line:
                    counters["lines_cut"] += 1
                lines.extend([cut] * k)
                st.lines += k
                st.chars += k * len(cut)
                st.bytes += k * len(cut.encode("utf-8"))
    empty = [lang for lang, st in stats.items() if st.lines == 0]
    if empty:
        raise DataError(
            f"language(s) {', '.join(empty)} could not be sampled: no non-empty lines drawn "
            f"(raise sample.sample_bytes or drop them with sample.langs)"
        )
    random.Random(stable_seed(cfg.seed, "tokenizer-shuffle")).shuffle(lines)
    counters["sampled_lines"] = len(lines)
    return TextSample(lines=lines, langs=stats, counters=counters)
