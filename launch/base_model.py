"""The pipeline's `tokenizer: {base_model: DIR}` option: continue an existing Hugging Face model.

Instead of training a tokenizer and a model from scratch, the pipeline runs the adaptation recipe
of docs/model.md, each step a content-addressed stage like the others:

  base       glotta model import-hf DIR            -> run_dir/base/ (checkpoint + tokenizer.model)
  tokenizer  glotta tokenizer extend --base base/tokenizer.model (target-language shards)
                                                   -> run_dir/tokenizer/glotta.model
  adapt      glotta tokenizer adapt-checkpoint     -> run_dir/adapt/ (init default mean-below)
  stage1/2   glotta train --set checkpoint.init_from=adapt --set model.<architecture of the base>

The base stage's input is the model directory itself (every file's sha256 up to 256 MiB, larger
files by size and mtime), so new weights or a new tokenizer in DIR rerun everything from import.
The architecture keys of the training stages come from the base's config.json through the same
mapping import-hf uses (train/hf_mapping.py), computed here before any stage runs; a value the
user wrote that disagrees is an error when it comes from the stage's `set:` list and a warning
naming the key when it comes from the training recipe file (a recipe such as gpt-tiny.yaml is
reused for its optimizer and schedule; its model section cannot apply to someone else's model).
Training-only model keys (seq_length, make_vocab_size_divisible_by, dropout, precision,
attention backend, recompute) stay the user's; import-hf and adapt-checkpoint are given the
same seq_length, vocabulary padding and TP/PP as stage 1, so the adapted checkpoint loads there.
"""
from __future__ import annotations

import json
from pathlib import Path

from glotta.config import parse_override, read_yaml
from glotta.errors import ConfigError, GlottaError
from glotta.launch.checks import Origins, check_sets
from glotta.launch.layout import RunLayout
from glotta.launch.pipeline import Stage, glotta_cmd

# ModelConfig keys that describe the base model's weights: they must be the base's
ARCH_KEYS = (
    "num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size", "normalization",
    "activation", "position_embedding", "rotary_base", "tie_embeddings", "add_bias_linear",
)  # fmt: skip


# import-hf keys the pipeline sets itself: the continuing run's layout must match the adapted checkpoint
FROM_STAGE1 = ("source", "out", "tp", "pp", "seq_length", "make_vocab_size_divisible_by", "overwrite")


def _effective(model, key: str):
    """The value a key means (None query groups = one per head, None ffn = the activation's default)."""
    if key == "num_query_groups":
        return model.num_query_groups or model.num_attention_heads
    if key == "ffn_hidden_size":
        return model.ffn_size()
    return getattr(model, key)


def base_import_config(cfg, stage1_cfg):
    """The import-hf config the pipeline runs: the layout and sequence length of stage 1."""
    from glotta.train.hf_import import ImportConfig

    t = cfg.tokenizer
    if stage1_cfg is None:
        return ImportConfig(source=t.base_model, overwrite=True)
    return ImportConfig(
        source=t.base_model, tp=stage1_cfg.parallel.tensor_parallel, pp=stage1_cfg.parallel.pipeline_parallel,
        seq_length=stage1_cfg.model.seq_length, make_vocab_size_divisible_by=stage1_cfg.model.make_vocab_size_divisible_by,
        overwrite=True,
    )  # fmt: skip


def inspect_base(cfg, stage1_cfg, origins: Origins):
    """import-hf's own checks (config.json, architecture, SentencePiece tokenizer with EOS, vocabulary
    sizes, every weight file and tensor), before any stage runs; the base's glotta ModelConfig."""
    from glotta.train.hf_import import inspect_hf

    icfg = base_import_config(cfg, stage1_cfg)
    try:
        src = inspect_hf(icfg)
    except GlottaError as e:
        raise ConfigError(f"{origins.of('tokenizer.base_model')}: tokenizer.base_model {cfg.tokenizer.base_model}: {e}") from None
    max_pos = src.config.get("max_position_embeddings")
    if icfg.seq_length and max_pos and icfg.seq_length > max_pos:
        raise ConfigError(f"stage1: model.seq_length {icfg.seq_length} is longer than the base model's "
                          f"max_position_embeddings {max_pos} (set a shorter model.seq_length in stage1.set)")
    return src.model


def check_target_langs(target_langs: list[str], have: list[str], where: str) -> None:
    """tokenizer.target_langs must be languages of the corpus: `tokenizer extend` learns their pieces
    and adapt-checkpoint measures them. Checked on the recipe (data.demo_corpus.langs) and again on the
    shard set's manifest right after import (and consent), before base/tokenizer spend time."""
    missing = [lang for lang in target_langs if lang not in have]
    if missing:
        raise ConfigError(f"tokenizer.target_langs: {', '.join(missing)} not in {where}, which has "
                          f"{', '.join(sorted(have)) or 'no language'}; name languages of the corpus")


def check_corpus_langs(target_langs: list[str], shards: Path, stage: str):
    """The runner's check after the import (or consent) stage: the languages with documents in `shards`."""
    from glotta.data.manifest import Manifest

    def check() -> None:
        have = [lang for lang, e in Manifest.load(shards).langs().items() if e["samples"] > 0]
        check_target_langs(target_langs, have, f"the corpus after {stage} ({shards})")

    return check


def base_stage(cfg, run: RunLayout, stage1_cfg, origins: Origins) -> Stage:
    from glotta.train.hf_import import ImportConfig

    check_sets(ImportConfig, cfg.tokenizer.import_set, "tokenizer.import_set", origins, "glotta model import-hf")
    for i, item in enumerate(cfg.tokenizer.import_set):
        key = ".".join(parse_override(item)[0])
        if key in FROM_STAGE1:
            raise ConfigError(f"{origins.of(f'tokenizer.import_set[{i}]')}: tokenizer.import_set[{i}] {item!r}: "
                              f"{key} comes from stage 1's training config (and source, out from the pipeline)")
    icfg = base_import_config(cfg, stage1_cfg)
    args = ["model", "import-hf", icfg.source, "--out", run.base, "--tp", icfg.tp, "--pp", icfg.pp]
    if icfg.seq_length:
        args += ["--seq-length", icfg.seq_length]
    sets = [f"make_vocab_size_divisible_by={icfg.make_vocab_size_divisible_by}", *cfg.tokenizer.import_set]
    args += [*[a for s in sets for a in ("--set", s)], "--overwrite", "--json"]
    return Stage("base", [glotta_cmd(*args)], outputs=[run.base / "latest", run.base / "tokenizer.model"],
                 inputs=[icfg.source], report_names={0: "base-import"})


def extend_commands(cfg, run: RunLayout, shards: Path, origins: Origins) -> list[str]:
    """`tokenizer extend` of the imported base tokenizer (replaces `tokenizer build`)."""
    from glotta.tokenizer.extend import ExtendConfig

    t = cfg.tokenizer
    check_sets(ExtendConfig, t.set, "tokenizer.set", origins, "glotta tokenizer extend")
    langs = [a for lang in t.target_langs for a in ("--lang", lang)]
    sets = [f"sample.holdout={run.parallel}", f"reference={t.reference}"]
    if "alpha" in t.model_fields_set:
        sets.append(f"sample.alpha={t.alpha}")
    if t.sample_bytes:
        sets.append(f"sample.sample_bytes={t.sample_bytes}")
    args = ["tokenizer", "extend", "--base", run.base / "tokenizer.model", "--shards", shards, *langs,
            "--out", run.tokenizer, "--name", run.tokenizer_model.stem, "--add", t.add, "--parallel", run.parallel]
    return glotta_cmd(*args, *[a for s in sets + t.set for a in ("--set", s)], "--json")


def adapt_stage(cfg, run: RunLayout, stage1_cfg, origins: Origins) -> Stage:
    from glotta.tokenizer.adapt import AdaptConfig

    t = cfg.tokenizer
    check_sets(AdaptConfig, t.adapt_set, "tokenizer.adapt_set", origins, "glotta tokenizer adapt-checkpoint")
    tp = base_import_config(cfg, stage1_cfg).tp
    langs = [a for lang in t.target_langs for a in ("--lang", lang)]
    cmd = glotta_cmd(
        "tokenizer", "adapt-checkpoint", "--checkpoint", run.base, "--new-tokenizer", run.tokenizer_model,
        "--out", run.adapted, "--text", run.holdout_valid, *langs, "--init", t.init, "--tp", tp,
        *[a for s in t.adapt_set for a in ("--set", s)], "--json",
    )  # fmt: skip
    return Stage("adapt", [cmd], outputs=[run.adapted / "latest", run.adapted / "adapt.json"],
                 inputs=[run.base, run.tokenizer_model, run.holdout_valid], reports=[run.adapted / "adapt.json"],
                 report_names={0: "adapt"})


def architecture_sets(base_model, user_cfg, config_file: Path, user_sets: list[str], name: str,
                      origins: Origins) -> tuple[list[str], list[str]]:
    """(`model.KEY=VALUE` overrides that give a training stage the base's architecture, warnings).
    A disagreeing key from the stage's set: list is an error; from the recipe file, a warning."""
    raw = read_yaml(config_file)
    raw = raw.get("train", raw) if isinstance(raw, dict) else {}
    in_file = set((raw.get("model") or {}).keys())
    in_sets = {".".join(parse_override(s)[0]): i for i, s in enumerate(user_sets)}
    errors, warnings, sets = [], [], []
    for key in ARCH_KEYS:
        want, have = _effective(base_model, key), _effective(user_cfg.model, key)
        sets.append(f"model.{key}={json.dumps(getattr(base_model, key))}")
        if want == have:
            continue
        if f"model.{key}" in in_sets:
            i = in_sets[f"model.{key}"]
            errors.append(f"{origins.of(f'{name}.set[{i}]')}: {name}.set[{i}] model.{key}={have} disagrees with "
                          f"tokenizer.base_model ({want}); remove it (the base model's architecture is used)")
        elif key in in_file:
            warnings.append(f"model.{key} {have} -> {want}")
    if errors:
        raise ConfigError("\n".join(errors))
    notes = [f"{name}: the base model's architecture replaces {config_file.name}'s " + ", ".join(warnings)] if warnings else []
    return sets, notes
