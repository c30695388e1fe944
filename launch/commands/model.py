"""`glotta model export-hf | import-hf | eval-hf` and `glotta generate`: parse options, call glotta.train, print."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from glotta.launch.console import print_json_if, print_table
from glotta.launch.errors import guarded
from glotta.launch.options import (
    CheckpointArg, ConfigOpt, ContinueTpOpt, JsonOpt, OverwriteOpt, RunTokenizerOpt, SeedOpt, SetOpt, StrictOpt,
    command_config,
)  # fmt: skip

app = typer.Typer(no_args_is_help=True, help="Hugging Face export and import of glotta checkpoints.")


def _rows(d: dict, skip: tuple[str, ...] = ()) -> list[dict]:
    return [{"counter": k, "value": v if not isinstance(v, (list, dict)) else ", ".join(map(str, v)) or "-"}
            for k, v in d.items() if k not in skip]


@app.command("export-hf")
@guarded
def export_hf(
    checkpoint: CheckpointArg = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="HF model directory to write.")] = None,
    tokenizer: RunTokenizerOpt = None,
    dtype: Annotated[Optional[str], typer.Option(help="auto (the checkpoint's), float32, bfloat16 or float16.")] = None,
    max_shard_bytes: Annotated[Optional[int], typer.Option(help="Largest safetensors file in bytes.")] = None,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    strict: StrictOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Write a checkpoint (any TP/PP layout) as a Hugging Face Llama model + tokenizer."""
    from glotta.errors import DataError
    from glotta.train.hf_export import ExportConfig
    from glotta.train.hf_export import export_hf as run

    cfg = command_config(ExportConfig, config, sets, "export_hf", checkpoint=checkpoint, out=out, tokenizer=tokenizer,
                         dtype=dtype, max_shard_bytes=max_shard_bytes, overwrite=overwrite or None)
    result = run(cfg).as_dict()
    if strict and not result["tokenizer"].get("fast_tokenizer"):
        raise DataError(f"--strict: tokenizer.json was not written ({result['tokenizer'].get('fast_reason')})")
    if print_json_if(json_out, result):
        return
    print_table("export-hf", _rows(result, skip=("tokenizer",)), ["counter", "value"])
    print_table("tokenizer", _rows(result["tokenizer"]), ["counter", "value"])


@app.command("import-hf")
@guarded
def import_hf(
    source: Annotated[Optional[Path], typer.Argument(help="Local HF model directory (Llama/Mistral, safetensors).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Checkpoint root to write.")] = None,
    tp: ContinueTpOpt = None,
    pp: Annotated[Optional[int], typer.Option("--pp", help="Pipeline-parallel size of the run that continues.")] = None,
    seq_length: Annotated[Optional[int], typer.Option(help="model.seq_length (default max_position_embeddings).")] = None,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Convert a local Hugging Face Llama/Mistral model into a glotta checkpoint (continue with checkpoint.init_from)."""
    from glotta.train.hf_import import ImportConfig
    from glotta.train.hf_import import import_hf as run

    cfg = command_config(ImportConfig, config, sets, "import_hf", source=source, out=out, tp=tp, pp=pp,
                         seq_length=seq_length, overwrite=overwrite or None)
    result = run(cfg).as_dict()
    if print_json_if(json_out, result):
        return
    print_table("import-hf", _rows(result), ["counter", "value"])
    print(f"continue training with: --set checkpoint.init_from={result['out']} --set data.tokenizer={result['tokenizer']}")


@guarded
def generate(
    checkpoint: CheckpointArg = None,
    prompt: Annotated[Optional[list[str]], typer.Option("--prompt", "-p", help="A prompt (repeatable).")] = None,
    prompts_file: Annotated[Optional[Path], typer.Option(help="Prompts, one per line (or JSONL with \"prompt\").")] = None,
    prompts_shards: Annotated[Optional[Path], typer.Option(help="Shard set: one prompt per language (start of its first document).")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="New tokens per prompt at most.")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="0 = greedy.")] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Nucleus sampling mass.")] = None,
    seed: SeedOpt = None,
    tokenizer: RunTokenizerOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Continue prompts with a checkpoint (CPU, or torchrun for tensor parallelism); stops at end-of-document."""
    from glotta.train.generate import GenerateConfig, prompts_from_shards, read_prompts
    from glotta.train.generate import generate as run

    cfg = command_config(GenerateConfig, config, sets, "generate", max_tokens=max_tokens, temperature=temperature,
                         top_p=top_p, seed=seed, tokenizer=tokenizer)
    prompts = list(prompt or []) + (read_prompts(prompts_file) if prompts_file else [])
    langs = [""] * len(prompts)
    if prompts_shards:
        by_lang = prompts_from_shards(prompts_shards)
        langs += [lang for lang, _ in by_lang]
        prompts += [p for _, p in by_lang]
    from glotta.errors import ConfigError

    if checkpoint is None:
        raise ConfigError("checkpoint: required")
    outs = run(checkpoint, prompts, cfg)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if print_json_if(json_out, [{**({"lang": lang} if lang else {}), **g.as_dict()} for lang, g in zip(langs, outs)]):
        return
    cols = (["lang"] if any(langs) else []) + ["prompt", "continuation", "tokens", "stopped"]
    print_table("generate", [{"lang": lang, "prompt": g.prompt, "continuation": g.text, "tokens": len(g.tokens),
                              "stopped": g.stopped} for lang, g in zip(langs, outs)], cols)


@app.command("eval-hf")
@guarded
def eval_hf(
    checkpoint: CheckpointArg = None,
    hf: Annotated[Optional[Path], typer.Option("--hf", help="Its export-hf directory.")] = None,
    shards: Annotated[Optional[Path], typer.Option(help="Held-out shard set.")] = None,
    max_docs: Annotated[Optional[int], typer.Option(help="Documents per language at most.")] = None,
    max_windows: Annotated[Optional[int], typer.Option(help="Windows of seq_length+1 tokens per language at most.")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Held-out loss and bits per byte per language through glotta's model and through its HF export."""
    from glotta.train.hf_eval import EvalHFConfig, run

    cfg = command_config(EvalHFConfig, config, sets, "eval_hf", checkpoint=checkpoint, hf=hf, shards=shards,
                         max_docs=max_docs, max_windows=max_windows)
    rows = [r.as_dict() for r in run(cfg)]
    if print_json_if(json_out, rows):
        return
    print_table("held-out loss (nats/token) and bits per byte: glotta vs exported HF model", rows)
