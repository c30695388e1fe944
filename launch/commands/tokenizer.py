"""`glotta tokenizer parallel | build | eval | extend | adapt-checkpoint`: parse options, call glotta.tokenizer, print."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from glotta.launch.console import print_counters, print_json_if, print_table
from glotta.launch.errors import guarded
from glotta.launch.options import (
    ConfigOpt, ContinueTpOpt, JsonOpt, LangsOpt, OutDirOpt, SeedOpt, SetOpt, StrictOpt, command_config,
)  # fmt: skip

app = typer.Typer(no_args_is_help=True, help="Build, evaluate and extend SentencePiece tokenizers; adapt checkpoints to them.")


@app.command()
@guarded
def build(
    shards: Annotated[Optional[Path], typer.Option(help="Shard set to sample from.")] = None,
    out_dir: OutDirOpt = None,
    name: Annotated[Optional[str], typer.Option(help="File name stem of .model/.vocab/.card.json.")] = None,
    vocab_size: Annotated[Optional[int], typer.Option(help="Vocabulary size.")] = None,
    model_type: Annotated[Optional[str], typer.Option(help="unigram or bpe.")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="Temperature-sampling exponent (1 = natural mix).")] = None,
    method: Annotated[Optional[str], typer.Option(help="temperature or unimax.")] = None,
    sample_bytes: Annotated[Optional[int], typer.Option(help="Size of the training sample in UTF-8 bytes.")] = None,
    langs: LangsOpt = None,
    seed: SeedOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    strict: StrictOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Train SentencePiece on a language-balanced sample of a shard set."""
    from glotta.tokenizer.build import BuildConfig
    from glotta.tokenizer.build import build as run_build

    cfg = command_config(
        BuildConfig, config, sets, "tokenizer", shards=shards, out_dir=out_dir, name=name, vocab_size=vocab_size,
        model_type=model_type, **{"sample.alpha": alpha, "sample.method": method, "sample.sample_bytes": sample_bytes,
                                  "sample.langs": langs, "sample.seed": seed},
    )  # fmt: skip
    card = run_build(cfg, strict=strict)
    if print_json_if(json_out, card):
        return
    names = {"available_bytes": "avail_B", "target_bytes": "target_B", "sampled_bytes": "bytes",
             "sampled_chars": "chars", "sampled_lines": "lines"}
    rows = [{"lang": lang, **{names.get(k, k): x for k, x in v.items()}} for lang, v in card["languages"].items()]
    how = f"alpha={cfg.sample.alpha}" if cfg.sample.method == "temperature" else f"max_epochs={cfg.sample.max_epochs}"
    print_table(f"tokenizer sample ({cfg.sample.method}, {how}){' - reused' if card.get('reused') else ''}", rows)
    print_counters("counters", card["counters"])
    print(f"wrote {card['model']} ({cfg.vocab_size} pieces, {card['seconds']['total']:.1f} s)")


@app.command("eval")
@guarded
def eval_(
    tokenizers: Annotated[Optional[list[Path]], typer.Argument(help="SentencePiece .model files.")] = None,
    parallel: Annotated[Optional[Path], typer.Option(help="Parallel JSONL {id, lang, text}.")] = None,
    shards: Annotated[Optional[Path], typer.Option(help="Shard set (premium per byte when not parallel).")] = None,
    reference: Annotated[Optional[str], typer.Option(help="Reference language of premiums.")] = None,
    chart: Annotated[Optional[Path], typer.Option(help="Write a PNG chart here.")] = None,
    langs: LangsOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Fertility, continued words, bytes/token, unk/byte-fallback rates and token premiums per language."""
    from glotta.tokenizer.evaluate import EvalConfig, evaluate, table_rows

    cfg = command_config(EvalConfig, config, sets, "tokenizer_eval", tokenizers=[str(t) for t in tokenizers or []] or None,
                         parallel=parallel, shards=shards, reference=reference, chart=chart, langs=langs)
    result = evaluate(cfg)
    if print_json_if(json_out, result):
        return
    print_table(f"tokenizer eval (premium vs {cfg.reference}; kind par = parallel lines, byte = per byte)",
                table_rows(result))
    summary = [{"name": n, **t["summary"]["premium"],
                "worst": t["summary"]["worst_lang"], "kind": ",".join(t["summary"]["premium_kinds"])}
               for n, t in result["tokenizers"].items()]
    print_table("premium summary (non-reference languages)", summary)
    if "chart" in result:
        print(f"chart: {result['chart']}")


@app.command("parallel")
@guarded
def parallel(
    out: Annotated[Optional[Path], typer.Option(help="Output JSONL.")] = None,
    langs: LangsOpt = None,
    max_ids: Annotated[Optional[int], typer.Option(help="Most parallel lines per language.")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Write parallel text {id, lang, text} from this machine's gettext catalogs (for `eval`)."""
    from glotta.tokenizer.parallel import ParallelConfig, write_parallel

    cfg = command_config(ParallelConfig, config, sets, "tokenizer_parallel", out=out, langs=langs, max_ids=max_ids)
    counts = write_parallel(cfg)
    if not print_json_if(json_out, {"out": str(cfg.out), "lines": counts}):
        print(f"wrote {cfg.out}: {next(iter(counts.values()))} parallel lines in {len(counts)} languages")


@app.command()
@guarded
def extend(
    base: Annotated[Optional[Path], typer.Option(help="Base SentencePiece .model.")] = None,
    shards: Annotated[Optional[Path], typer.Option(help="Shard set with target-language text.")] = None,
    langs: LangsOpt = None,
    out_dir: OutDirOpt = None,
    name: Annotated[Optional[str], typer.Option(help="File name stem of the extended model.")] = None,
    add: Annotated[Optional[int], typer.Option(help="Most pieces to append.")] = None,
    score_mode: Annotated[Optional[str], typer.Option(help="auto, below-min, target or zero.")] = None,
    allocate: Annotated[Optional[str], typer.Option(help="joint, or worst-premium (greedy parity).")] = None,
    parallel: Annotated[Optional[Path], typer.Option(help="Parallel JSONL for premiums and the report.")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Append pieces learned from target-language text to a base model (old ids never move)."""
    from glotta.tokenizer.extend import ExtendConfig
    from glotta.tokenizer.extend import extend as run_extend

    cfg = command_config(ExtendConfig, config, sets, "tokenizer_extend", base=base, shards=shards, langs=langs,
                         out_dir=out_dir, name=name, add=add, score_mode=score_mode, allocate=allocate, parallel=parallel)
    report = run_extend(cfg)
    if print_json_if(json_out, report):
        return
    short = {"lines_changed": "changed", "lines_more_tokens": "longer", "tokens_before": "tok0",
             "tokens_after": "tok1", "token_change_pct": "change_%", "old_ids_decode_same": "same_text",
             "fertility_unit": "unit", "fertility_before": "fert0", "fertility_after": "fert1",
             "premium_before": "prem0", "premium_after": "prem1"}

    def rows(table: dict) -> list[dict]:
        return [{"lang": k, **{short.get(c, c): v for c, v in r.items() if c != "source"}} for k, r in table.items()]

    print_table("base-language drift (0 = old tokenizer, 1 = extended; same lines)",
                rows({**report["base"], "total": report["base_total"]}))
    print_table("target languages (0 = before, 1 = after)", rows(report["target"]))
    print(f"wrote {report['model']}: {report['base_vocab_size']} + {report['added']} pieces "
          f"(score mode {report['score_mode']}, allocation {report['allocate']})")


@app.command("adapt-checkpoint")
@guarded
def adapt_checkpoint(
    checkpoint: Annotated[Optional[Path], typer.Option(help="Trainer checkpoint (directory or root with latest).")] = None,
    new_tokenizer: Annotated[Optional[Path], typer.Option(help="Extended .model (from `tokenizer extend`).")] = None,
    old_tokenizer: Annotated[Optional[Path], typer.Option(help="Tokenizer the checkpoint was trained with.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Root of the adapted checkpoint.")] = None,
    init: Annotated[Optional[str], typer.Option(help="mean, align, script, mean-all, random or mean-below.")] = None,
    tp: ContinueTpOpt = None,
    text: Annotated[Optional[Path], typer.Option(help="Target text: parallel JSONL or shard set.")] = None,
    langs: LangsOpt = None,
    base_langs: Annotated[Optional[list[str]], typer.Option("--base-lang", help="Base language of --text (repeatable; default: the non-target ones).")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Resize a checkpoint's embeddings (and untied output layer) to an extended vocabulary."""
    from glotta.tokenizer.adapt import AdaptConfig, adapt

    cfg = command_config(AdaptConfig, config, sets, "tokenizer_adapt", checkpoint=checkpoint, new_tokenizer=new_tokenizer,
                         old_tokenizer=old_tokenizer, out=out, init=init, tp=tp, text=text, langs=langs,
                         base_langs=base_langs)
    report = adapt(cfg)
    if print_json_if(json_out, report):
        return
    rows = [{"name": m, "bpb": r["bpb"], "old_logits_max_abs_diff": r["old_logits_max_abs_diff"],
             "base_loss_rise": r.get("base_loss_rise_mean")} for m, r in report["methods"].items()]
    rows.append({"name": "old model + old tokenizer", "bpb": report["bpb_old_model_old_tokenizer"]})
    print_table("target bits per byte and base-language loss rise (nats/token, old tokenizer) after initialisation", rows)
    per_lang = [{"lang": k, "old_model": v, **{m: r["base_loss"][k] for m, r in report["methods"].items()}}
                for k, v in report.get("base_loss_old_model", {}).items()]
    per_lang += [{"lang": f"{k} (bpb)", "old_model": v, **{m: r["target_bpb"][k] for m, r in report["methods"].items()}}
                 for k, v in report.get("target_bpb_old_model", {}).items()]
    if per_lang:
        print_table("per language: base-language loss (nats/token) and target bits per byte", per_lang)
    print(f"wrote {report['out']} (vocab {report['old_vocab']} -> {report['new_vocab']}, rows {report['new_rows']} "
          f"for TP={report['tp']}, init {report['init']})")
