"""`glotta prune select`: scores table + shard set -> exclude list, report, optional pruned shards.

Every check that can fail runs before any output is written: the table's run / tokenizer /
checkpoint count, the keep fraction, and that the table covers exactly the documents of the shard
set (minus documents already excluded by earlier stages, e.g. consent filtering).

Outputs in `out_dir`:
  exclude.txt          dropped documents, `shard.tar/KEY` per line, in shard order (the loader's format)
  selection.parquet    shard, key, lang, n_tokens, n_bytes, score, kept (for analysis and the benchmark)
  report.json          per-language kept fractions, kept-vs-dropped length / type-token ratio / rare tokens
  report/hist_<lang>.png
  shards/              with `materialize`: the kept documents as a new shard set with a manifest
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field

from glotta.config import StrictModel
from glotta.data.manifest import Manifest, atomic_write_text, sha256_file
from glotta.data.exclude import read_exclude
from glotta.data.shards import ShardWriter, iter_samples, list_shards
from glotta.errors import ConfigError, DataError
from glotta.pruning.cat import report, statistics
from glotta.pruning.cat.dedup import DedupConfig, find_duplicates
from glotta.pruning.cat.selection import SelectionConfig, select, unmet_languages
from glotta.pruning.cat.table import nll_matrix, read_meta, read_scores
from glotta.pruning.cat.tracking import MlflowConfig, log_run
from glotta.progress import track

log = logging.getLogger(__name__)


class SelectConfig(StrictModel):
    scores: list[Path] = Field(default_factory=list, description="scores files or folders (one run)")
    shards: Path | None = None
    out_dir: Path = Path("prune")
    method: str = "cat"
    selection: SelectionConfig = SelectionConfig()
    seed: int = 0  # for method=random
    checkpoint: int = -1  # for ppl_* baselines: 1-based checkpoint, -1 = last
    length_buckets: int = Field(4, ge=1)  # for method=zscore
    target: Path | None = None  # for method=dsir: target sample (JSONL text[, lang], or blank-line-separated text)
    dsir_buckets: int = Field(10_000, gt=0)
    dedup: DedupConfig = DedupConfig()  # pre-step: exact / near duplicates are never kept
    exclude: list[Path] = Field(default_factory=list, description="exclude lists already applied (consent, ...)")
    tokenizer: Path | None = None  # must match the table's tokenizer; enables type/token and rare-token stats
    run_id: str | None = None  # when set, the table must come from this training run
    materialize: bool = False
    shard_samples: int = Field(10_000, gt=0)
    report_docs: int = Field(20_000, ge=0, description="documents tokenised for type/token and rare-token stats")
    rare_max_count: int = Field(20, ge=1)
    histograms: bool = True
    mlflow: MlflowConfig = MlflowConfig()


def _check_inputs(cfg: SelectConfig):
    if not cfg.scores:
        raise ConfigError("scores: give at least one scores file or folder")
    if cfg.shards is None:
        raise ConfigError("shards: the shard set the scores were computed on is required")
    if cfg.method not in statistics.METHODS:
        raise ConfigError(f"method: unknown {cfg.method!r} (one of {', '.join(statistics.METHODS)})")
    meta = None
    for p in cfg.scores:
        m = read_meta(p)
        if meta is not None and m.identity() != meta.identity():
            raise DataError(f"scores from different runs: {p} (run {m.run_id}) vs {cfg.scores[0]} (run {meta.run_id})")
        meta = m
    need = statistics.METHODS[cfg.method][1]
    if meta.k < need:
        raise ConfigError(f"method {cfg.method!r} needs >= {need} checkpoints; {cfg.scores[0]} has {meta.k} "
                          f"(steps {meta.checkpoint_steps})")
    if cfg.run_id and meta.run_id != cfg.run_id:
        raise DataError(f"{cfg.scores[0]}: scores come from run {meta.run_id!r}, not {cfg.run_id!r}")
    if cfg.tokenizer is not None:
        if not cfg.tokenizer.is_file():
            raise ConfigError(f"tokenizer: file not found: {cfg.tokenizer}")
        sha = sha256_file(cfg.tokenizer)
        if sha != meta.tokenizer_sha256:
            raise DataError(f"tokenizer {cfg.tokenizer} (sha256 {sha[:12]}) is not the one the scores were computed "
                            f"with (sha256 {meta.tokenizer_sha256[:12]})")
    shards = list_shards(cfg.shards)
    return meta, shards


def _needs_text(cfg: SelectConfig) -> bool:
    return cfg.dedup.mode != "none" or cfg.method == "dsir"


def _read_shard_set(shards: list[Path], excluded: set[str], n_scored: int, cfg: SelectConfig, strict: bool,
                    counters: Counter):
    """Ids of every readable, not-excluded document, token ids of a hash-chosen report sample, and
    the texts when a pre-step (dedup) or the method (dsir) needs them."""
    sp = None
    if cfg.tokenizer is not None and cfg.report_docs:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(cfg.tokenizer))
    share = min(1.0, cfg.report_docs / max(n_scored, 1))
    ids: list[str] = []
    texts: dict[str, str] = {}
    sample_ids, sample_texts = [], []
    for path in track(shards, "reading shard set"):
        for s in iter_samples(path, counters, strict=strict):
            if s.shard in excluded or s.id in excluded:
                counters["already_excluded"] += 1
                continue
            ids.append(s.id)
            if _needs_text(cfg):
                texts[s.id] = s.text
            if sp is not None and _unit_hash(s.id) < share:
                sample_ids.append(s.id)
                sample_texts.append(s.text)
    tokens = dict(zip(sample_ids, sp.encode(sample_texts))) if sp is not None and sample_texts else {}
    return ids, tokens, texts


def _unit_hash(s: str) -> float:
    import hashlib

    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") / 2.0**64


def _check_coverage(df: pd.DataFrame, ids: list[str], shard_names: set[str], strict: bool, counters: Counter):
    scored = df["shard"] + "/" + df["key"]
    scored_set, in_set = set(scored), set(ids)
    missing = [i for i in ids if i not in scored_set]
    if missing:
        raise DataError(f"scores missing for {len(missing)} of {len(ids)} documents of the shard set "
                        f"(first: {missing[0]}); score them, or pass the exclude list that removed them")
    extra = ~scored.isin(in_set)
    if extra.any():
        foreign = sorted(set(df.loc[extra, "shard"]) - shard_names)
        if foreign:
            raise DataError(f"scores cover shards that are not in the shard set: {foreign[:3]} "
                            f"({int(extra.sum())} documents)")
        first = scored[extra].iloc[0]
        msg = f"{int(extra.sum())} scored documents could not be read from the shard set (first: {first})"
        if strict:
            raise DataError(msg)
        log.warning("%s; they are left out of the selection", msg)
        counters["scored_but_unreadable"] += int(extra.sum())
    return ~extra.to_numpy()


def run(cfg: SelectConfig, strict: bool = False) -> dict:
    t0 = time.perf_counter()
    counters: Counter = Counter()
    meta, shards = _check_inputs(cfg)
    excluded = read_exclude(cfg.exclude)  # the loader's reader: text or Parquet, documents or whole shards
    df, _ = read_scores(cfg.scores)
    if excluded:
        gone = ((df["shard"] + "/" + df["key"]).isin(excluded) | df["shard"].isin(excluded)).to_numpy()
        counters["scored_but_excluded"] += int(gone.sum())
        df = df[~gone].reset_index(drop=True)
    if cfg.method == "dsir" and cfg.target is None:
        raise ConfigError("method dsir needs target: a sample of the text you want more of (JSONL or text)")
    ids, tokens, texts = _read_shard_set(shards, excluded, len(df), cfg, strict, counters)
    # Documents excluded by an earlier stage are expected (counted, not a problem); anything else is.
    if strict and any(v for k, v in counters.items() if k not in ("samples", "already_excluded", "scored_but_excluded")):
        raise DataError(f"problems while reading {cfg.shards}: {dict(counters)}")
    readable = _check_coverage(df, ids, {p.name for p in shards}, strict, counters)
    df = df[readable].reset_index(drop=True)
    nll = nll_matrix(df, meta.k)
    row_ids = (df["shard"] + "/" + df["key"]).tolist()
    log_w = None
    if cfg.method == "dsir":
        from glotta.pruning.cat.dsir import log_weights, read_target

        log_w = log_weights([texts[i] for i in row_ids], df["lang"].tolist(), read_target(cfg.target), cfg.dsir_buckets)
    opt = statistics.Options(seed=cfg.seed, checkpoint=cfg.checkpoint, length_buckets=cfg.length_buckets,
                             dsir_log_weights=log_w)
    scores = statistics.score(cfg.method, df, nll, opt)
    if cfg.dedup.mode != "none":  # pre-step: duplicates of an earlier document (shard order) are never kept
        dup = find_duplicates([texts[i] for i in row_ids], cfg.dedup)
        scores = np.where(dup.keep, scores, -np.inf)
        counters["exact_duplicates"] += dup.exact
        counters["near_duplicates"] += dup.near
    kept, per_lang = select(df, scores, cfg.selection)
    unmet = unmet_languages(per_lang)
    if unmet:
        msg = (f"budget could not be met for {len(unmet)} language(s): "
               + ", ".join(f"{r.lang} (short {r.unmet:,.0f} {cfg.selection.unit})"
                           for r in per_lang[per_lang["unmet"] > 0].itertuples()))
        if strict:
            raise DataError(msg)
        log.warning("%s", msg)
    counters["languages_budget_unmet"] = len(unmet)
    counters["not_selectable"] = int((scores == -np.inf).sum())
    counters["docs"] = len(df)
    counters["kept"] = int(kept.sum())
    counters["dropped"] = int((~kept).sum())

    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    _write_exclude(out / "exclude.txt", df, kept, ids)
    sel = df[["shard", "key", "lang", "n_tokens", "n_bytes"]].assign(score=scores, kept=kept)
    tmp = out / ".selection.parquet.tmp"
    sel.to_parquet(tmp, index=False)
    tmp.replace(out / "selection.parquet")
    stats = report.text_stats(df, kept, tokens, cfg.rare_max_count)
    hists = report.histograms(df, scores, kept, out / "report", cfg.method) if cfg.histograms else []
    materialized = _materialize(cfg, shards, df, kept) if cfg.materialize else None

    total_tokens = int(df["n_tokens"].sum())
    result = {
        "method": cfg.method,
        "selection": cfg.selection.model_dump(),
        "scores_run": meta.run_id,
        "checkpoint_steps": meta.checkpoint_steps,
        "tokenizer_sha256": meta.tokenizer_sha256,
        "docs": len(df),
        "kept_docs": int(kept.sum()),
        "tokens": total_tokens,
        "kept_tokens": int(df["n_tokens"][kept].sum()),
        "kept_frac_tokens": float(df["n_tokens"][kept].sum() / max(total_tokens, 1)),
        "langs": json.loads(per_lang.to_json(orient="records")),  # plain bool/int/float, not numpy
        "budget_unmet": unmet,
        "text_stats": stats,
        "histograms": [str(p) for p in hists],
        "exclude": str(out / "exclude.txt"),
        "materialized": materialized,
        "counters": dict(counters),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    atomic_write_text(out / "report.json", json.dumps(result, indent=1, ensure_ascii=False, default=_plain) + "\n")
    if cfg.mlflow.active:
        result["mlflow"] = _log(cfg, out, result, hists, meta.extra.get("mlflow_uri"))
    return result


def _plain(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return str(x)


def _write_exclude(path: Path, df: pd.DataFrame, kept: np.ndarray, ids: list[str]) -> None:
    dropped = set((df["shard"] + "/" + df["key"])[~kept])
    atomic_write_text(path, "".join(f"{i}\n" for i in ids if i in dropped))


def _materialize(cfg: SelectConfig, shards: list[Path], df: pd.DataFrame, kept: np.ndarray):
    """Rewrite the kept documents as a new shard set (same text and metadata, new shard names)."""
    keep = set((df["shard"] + "/" + df["key"])[kept])
    dest = cfg.out_dir / "shards"
    counters: Counter = Counter()
    with ShardWriter(dest, prefix="pruned", max_samples=cfg.shard_samples) as w:
        for path in track(shards, "writing pruned shards"):
            for s in iter_samples(path, counters):
                if s.id in keep:
                    w.write(s)
    Manifest(shards=w.written, meta={"command": "glotta prune select", "method": cfg.method,
                                     "source": str(cfg.shards), "selection": cfg.selection.model_dump()}).save(dest)
    return {"dir": str(dest), "shards": len(w.written), "docs": sum(s.samples for s in w.written)}


def _log(cfg: SelectConfig, out: Path, result: dict, hists: list[Path], run_uri: str | None) -> dict:
    params = {"method": cfg.method, "scores_run": result["scores_run"],
              "checkpoint_steps": result["checkpoint_steps"], "seed": cfg.seed,
              **{f"selection.{k}": v for k, v in cfg.selection.model_dump().items()}}
    metrics = {"kept_frac_tokens": result["kept_frac_tokens"], "kept_docs": result["kept_docs"]}
    for row in result["langs"]:
        metrics[f"kept_frac_tokens.{row['lang']}"] = row["kept_frac_tokens"]
    for side in ("kept", "dropped"):
        for k, v in result["text_stats"]["all"][side].items():
            if k in ("mean_tokens", "mean_bytes", "type_token_ratio", "rare_token_rate"):
                metrics[f"{side}.{k}"] = v
    arts = [out / "report.json"] + ([out / "report"] if hists else [])
    mcfg = cfg.mlflow
    if mcfg.run_id and not mcfg.tracking_uri and run_uri:  # --mlflow-run of stage 1: its own store
        mcfg = mcfg.model_copy(update={"tracking_uri": run_uri})
    return log_run(mcfg, out, f"prune.{cfg.method}", params, metrics, arts, run_name=f"prune-{cfg.method}")
