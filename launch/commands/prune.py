"""`glotta prune select | score`: parse options, call glotta.pruning.cat, print."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from glotta.launch.console import print_counters, print_json_if, print_table
from glotta.launch.errors import guarded
from glotta.launch.options import (
    ConfigOpt, JsonOpt, MlflowRunOpt, MlflowUriOpt, OutDirOpt, RunTokenizerOpt, SetOpt, StrictOpt, command_config,
)  # fmt: skip

app = typer.Typer(no_args_is_help=True, help="Checkpoints-Across-Time scoring and per-language selection.")


@app.command("select")
@guarded
def select_(
    scores: Annotated[Optional[list[Path]], typer.Option("--scores", help="Scores file or folder (repeatable).")] = None,
    shards: Annotated[Optional[Path], typer.Option(help="The shard set the scores were computed on.")] = None,
    out_dir: OutDirOpt = None,
    method: Annotated[Optional[str], typer.Option(help="cat, std, mean_abs_change, drop, nll_var, cv, rank_change, "
                                                       "zscore; baselines random, ppl_low, ppl_mid, ppl_high, length, "
                                                       "early_loss, dsir (needs --target).")] = None,
    target: Annotated[Optional[Path], typer.Option(help="method=dsir: sample of the text to select toward "
                                                        "(JSONL text[, lang] or plain text).")] = None,
    dedup: Annotated[Optional[str], typer.Option(help="Pre-step: none, exact or near (MinHash) duplicate removal.")] = None,
    keep: Annotated[Optional[float], typer.Option(help="Fraction to keep, in (0, 1].")] = None,
    unit: Annotated[Optional[str], typer.Option(help="Budget unit: tokens or docs.")] = None,
    scope: Annotated[Optional[str], typer.Option(help="language (rank within each language) or global.")] = None,
    allocation: Annotated[Optional[str], typer.Option(help="fraction (per language) or unimax.")] = None,
    floor: Annotated[Optional[int], typer.Option(help="Languages with at most this many units are kept whole.")] = None,
    cap: Annotated[Optional[int], typer.Option(help="Most units any language keeps.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of method=random.")] = None,
    exclude: Annotated[Optional[list[Path]], typer.Option(help="Exclude list already applied (repeatable).")] = None,
    tokenizer: Annotated[Optional[Path], typer.Option(help="The run's SentencePiece model (checked; text stats).")] = None,
    materialize: Annotated[Optional[bool], typer.Option("--materialize/--no-materialize",
                                                        help="Also write the kept documents as shards.")] = None,
    mlflow_uri: MlflowUriOpt = None,
    mlflow_run: MlflowRunOpt = None,
    mlflow: Annotated[Optional[bool], typer.Option("--mlflow", help="Log to MLflow (default store: <out>/mlflow.db).")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    strict: StrictOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Keep the top fraction of documents by a score; write an exclude list, a report and optionally shards."""
    from glotta.pruning.cat.select import SelectConfig, run

    cfg = command_config(
        SelectConfig, config, sets, "prune_select", scores=scores, shards=shards, out_dir=out_dir, method=method,
        seed=seed, exclude=exclude, tokenizer=tokenizer, materialize=materialize, target=target,
        **{"dedup.mode": dedup, "selection.fraction": keep, "selection.unit": unit, "selection.scope": scope,
           "selection.allocation": allocation, "selection.floor": floor, "selection.cap": cap,
           "mlflow.tracking_uri": mlflow_uri, "mlflow.run_id": mlflow_run, "mlflow.enabled": mlflow},
    )  # fmt: skip
    result = run(cfg, strict=strict)
    if print_json_if(json_out, result):
        return
    stats = result["text_stats"]
    rows = []
    for r in result["langs"]:
        kept, dropped = stats.get(r["lang"], {}).get("kept", {}), stats.get(r["lang"], {}).get("dropped", {})
        rows.append({"lang": r["lang"], "docs": r["docs"], "kept": r["kept_docs"], "kept_tok%": 100 * r["kept_frac_tokens"],
                     "floor": "yes" if r["floor"] else "",
                     "len k/d": _pair(kept.get("mean_tokens"), dropped.get("mean_tokens"), "{:.0f}"),
                     "ttr k/d": _pair(kept.get("type_token_ratio"), dropped.get("type_token_ratio"), "{:.2f}"),
                     "rare% k/d": _pair(_pct(kept.get("rare_token_rate")), _pct(dropped.get("rare_token_rate")), "{:.2f}")})
    sel = result["selection"]
    print_table(f"prune select: {result['method']}, keep {sel['fraction']} of {sel['unit']} per "
                f"{'language' if sel['scope'] == 'language' else 'corpus'}", rows)
    print_counters("counters", {k: v for k, v in result["counters"].items() if v})
    print(f"kept {result['kept_frac_tokens']:.1%} of tokens; exclude list: {result['exclude']}")
    if result.get("budget_unmet"):
        print(f"budget NOT met for: {', '.join(result['budget_unmet'])} (see report.json, langs[].unmet)")
    if result.get("materialized"):
        print(f"pruned shards: {result['materialized']['dir']} ({result['materialized']['docs']} docs)")
    if result.get("mlflow"):
        print(f"mlflow run {result['mlflow']['run_id']} at {result['mlflow']['tracking_uri']}")


def _pct(x):
    return None if x is None else 100 * x


def _pair(a, b, fmt: str) -> str:
    return "/".join("-" if v is None else fmt.format(v) for v in (a, b))


@app.command("score")
@guarded
def score(
    checkpoints: Annotated[Optional[list[Path]], typer.Option("--checkpoints", help="Checkpoint dir (repeatable), or "
                                                              "one checkpoint root: its kept early steps.")] = None,
    shards: Annotated[Optional[Path], typer.Option(help="Shard set to score.")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Output folder (one Parquet per shard).")] = None,
    tokenizer: RunTokenizerOpt = None,
    exclude: Annotated[Optional[list[Path]], typer.Option(help="Exclude list to apply (repeatable).")] = None,
    seq_len: Annotated[Optional[int], typer.Option(help="Window length (default: the model's).")] = None,
    micro_batch_size: Annotated[Optional[int], typer.Option(help="Rows of seq_len per forward.")] = None,
    tp: Annotated[Optional[int], typer.Option(help="Tensor-parallel size.")] = None,
    pp: Annotated[Optional[int], typer.Option(help="Pipeline-parallel size.")] = None,
    mlflow_uri: MlflowUriOpt = None,
    mlflow_run: MlflowRunOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    strict: StrictOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Forward-only NLL of every document at every kept checkpoint (run under torchrun for TP/PP/DP)."""
    import os

    from glotta.pruning.cat.score import ScoreConfig, run

    cfg = command_config(
        ScoreConfig, config, sets, "prune_score", checkpoints=checkpoints, shards=shards, out_dir=out_dir,
        tokenizer=tokenizer, exclude=exclude, seq_len=seq_len, micro_batch_size=micro_batch_size,
        **{"parallel.tensor_parallel": tp, "parallel.pipeline_parallel": pp,
           "mlflow.tracking_uri": mlflow_uri, "mlflow.run_id": mlflow_run},
    )  # fmt: skip
    result = run(cfg, strict=strict)
    if int(os.environ.get("RANK", "0")) != 0 or print_json_if(json_out, result):
        return
    print_table(f"prune score: run {result['run_id']}, TP={result['tp']} PP={result['pp']} DP={result['dp']}",
                result["throughput"], ["step", "tokens", "seconds", "tokens_per_s", "tokens_per_s_per_device"])
    print_counters("counters", {k: v for k, v in result["counters"].items() if v})
    print(f"wrote {result['shards_written']} shard score files to {result['out_dir']} "
          f"({result['shards']} shards, checkpoints {result['checkpoint_steps']})")
