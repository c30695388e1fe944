"""`glotta tokenizer eval`: compare tokenizers per language on parallel text and/or shards.

Languages found in the parallel file get Petrov et al.'s premium (tokens of the language over
tokens of the reference language on the same lines: `premium_kind="parallel"`). Languages only
found in shards have no parallel lines; they get the tokens-per-byte ratio to the reference
instead (`premium_kind="per-byte"`), a weaker measure that is labelled as such everywhere.
"""
from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import sentencepiece as spm
from pydantic import Field

from glotta.config import StrictModel
from glotta.data import iter_samples, list_shards
from glotta.errors import ConfigError, DataError
from glotta.tokenizer.metrics import Counts, Vocab, byte_premium, count, parallel_premium, spread, summarize
from glotta.tokenizer.parallel import read_parallel


class EvalConfig(StrictModel):
    tokenizers: list[Path] = []
    parallel: Path | None = None  # JSONL {id, lang, text}
    shards: Path | None = None
    langs: list[str] | None = None
    reference: str = "en"
    max_lines: int = Field(5000, gt=0)  # per language, from shards
    chart: Path | None = None


def load_model(path: str | Path) -> spm.SentencePieceProcessor:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"tokenizer model not found: {p}")
    try:
        return spm.SentencePieceProcessor(model_file=str(p))
    except (RuntimeError, OSError) as e:
        raise DataError(f"{p}: not a SentencePiece model ({e})") from None


def tokenizer_names(paths: list[Path]) -> list[str]:
    """Short unique names: the file stem, or parent/stem when stems collide."""
    stems = [Path(p).stem for p in paths]
    return [f"{Path(p).parent.name}/{s}" if stems.count(s) > 1 else s for p, s in zip(paths, stems)]


def shard_texts(shard_dir: Path, langs: list[str] | None, max_lines: int) -> dict[str, list[str]]:
    """The first `max_lines` non-empty lines per language, in shard order (deterministic)."""
    out: dict[str, list[str]] = defaultdict(list)
    for shard in list_shards(shard_dir):
        for s in iter_samples(shard):
            if langs is not None and s.lang not in langs:
                continue
            bucket = out[s.lang]
            for line in s.text.split("\n"):
                if len(bucket) >= max_lines:
                    break
                if line.strip():
                    bucket.append(line.strip())
    return dict(out)


def gather_texts(cfg: EvalConfig) -> tuple[dict[str, dict[str, str]], dict[str, list[str]]]:
    if cfg.parallel is None and cfg.shards is None:
        raise ConfigError("give evaluation text: --parallel FILE.jsonl and/or --shards DIR")
    parallel = read_parallel(cfg.parallel, cfg.langs) if cfg.parallel else {}
    shards = shard_texts(cfg.shards, cfg.langs, cfg.max_lines) if cfg.shards else {}
    shards = {lang: lines for lang, lines in shards.items() if lang not in parallel}
    if cfg.langs:
        missing = [x for x in cfg.langs if x not in parallel and x not in shards]
        if missing:
            raise DataError(f"langs: no evaluation text for {', '.join(missing)}")
    return parallel, shards


def evaluate_one(sp: spm.SentencePieceProcessor, parallel, shards, reference: str) -> dict:
    vocab = Vocab(sp)
    counts: dict[str, tuple[str, Counts]] = {}
    t0 = time.perf_counter()
    for lang, by_id in parallel.items():
        keys = sorted(by_id)
        counts[lang] = ("parallel", count(vocab, [by_id[k] for k in keys], keys))
    for lang, lines in shards.items():
        counts[lang] = ("shards", count(vocab, lines))
    seconds = time.perf_counter() - t0
    rows: dict[str, dict] = {}
    for lang, (source, c) in sorted(counts.items()):
        row = {"source": source, **summarize(lang, c), "premium": None, "premium_kind": None}
        ref = counts.get(reference)
        if ref is not None:
            if source == "parallel" and ref[0] == "parallel":
                row["premium"], row["premium_lines"] = parallel_premium(c, ref[1])
                row["premium_kind"] = "parallel"
            else:
                row["premium"], row["premium_kind"] = byte_premium(c, ref[1]), "per-byte"
        rows[lang] = row
    premiums = [r["premium"] for lang, r in rows.items() if lang != reference and r["premium"] is not None]
    worst = max((lang for lang in rows if lang != reference and rows[lang]["premium"] is not None),
                key=lambda lang: rows[lang]["premium"], default=None)
    total_bytes = sum(c.bytes for _, c in counts.values())
    return {
        "vocab_size": sp.get_piece_size(),
        "langs": rows,
        "summary": {
            "premium": spread(premiums),
            "worst_lang": worst,
            "premium_kinds": sorted({r["premium_kind"] for r in rows.values() if r["premium_kind"]}),
            "encode_mb_per_s": total_bytes / seconds / 1e6 if seconds > 0 else None,
        },
    }


def evaluate(cfg: EvalConfig) -> dict:
    if not cfg.tokenizers:
        raise ConfigError("tokenizers: give at least one .model file")
    models = [load_model(p) for p in cfg.tokenizers]
    parallel, shards = gather_texts(cfg)
    if cfg.reference not in parallel and cfg.reference not in shards:
        raise DataError(f"reference: no text for reference language {cfg.reference!r}; premiums need it (--reference)")
    result = {
        "reference": cfg.reference,
        "tokenizers": {
            name: {"path": str(path), **evaluate_one(sp, parallel, shards, cfg.reference)}
            for name, path, sp in zip(tokenizer_names(cfg.tokenizers), cfg.tokenizers, models)
        },
    }
    if cfg.chart is not None:
        from glotta.tokenizer.chart import premium_chart

        result["chart"] = str(premium_chart(result, cfg.chart))
    return result


def table_rows(result: dict) -> list[dict]:
    """Flat rows for the CLI table: one per (language, tokenizer); short column names fit 80 columns.
    kind: par = Petrov premium on parallel lines, byte = tokens-per-byte ratio (no parallel text)."""
    rows = []
    names = list(result["tokenizers"])
    langs = sorted({lang for t in result["tokenizers"].values() for lang in t["langs"]})
    for lang in langs:
        for name in names:
            r = result["tokenizers"][name]["langs"].get(lang)
            if r is None:
                continue
            rows.append({
                "lang": lang,
                "name": name,
                "fert": r["fertility"],
                "unit": r["fertility_unit"],
                "pcw": r["pcw"],
                "B/tok": r["bytes_per_token"],
                "unk": r["unk_rate"],
                "bytefb": r["byte_rate"],
                "premium": r["premium"],
                "kind": {"parallel": "par", "per-byte": "byte"}.get(r["premium_kind"], r["premium_kind"]),
            })
    return rows
