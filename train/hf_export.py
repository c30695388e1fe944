"""`glotta model export-hf`: a glotta torch_dist checkpoint (any TP/PP layout) -> a Hugging Face
Llama model directory that `AutoModelForCausalLM` / `AutoTokenizer` load offline.

Written under `<out>.tmp` and renamed when complete:
  config.json, generation_config.json       LlamaForCausalLM; eos = the run's end-of-document id
  model.safetensors, or model-0000i-of-0000N.safetensors + model.safetensors.index.json
  tokenizer.model, tokenizer_config.json, special_tokens_map.json, tokenizer.json (hf_tokenizer.py)
  glotta_export.json                        where it came from and what was dropped

Memory: tensors are read one checkpoint name at a time (a name is stacked over all layers), cast,
split per layer and streamed into shards of at most `max_shard_bytes`, so the peak is about the
largest stacked tensor (fc1 of all layers: 2 x F x H x L values) plus one shard, not the model.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from glotta.config import StrictModel
from glotta.errors import ConfigError, DataError
from glotta.train import hf_mapping as hm
from glotta.train.inference import CheckpointMeta, check_tokenizer, checkpoint_meta, read_tensors

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ExportConfig(StrictModel):
    checkpoint: Path | None = None  # a checkpoint directory, or a root with `latest`
    out: Path | None = None
    tokenizer: Path | None = None  # default: data.tokenizer recorded in the checkpoint
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto = the checkpoint's
    max_shard_bytes: int = Field(5 * 2**30, gt=0)
    overwrite: bool = False


@dataclass
class ExportResult:
    out: str
    checkpoint: str
    step: int
    dtype: str
    parameters: int
    files: list[str]
    tied_embeddings: bool
    vocab_size: int
    padding_rows_dropped: int  # per matrix (embedding, and the output layer when untied)
    tokenizer: dict = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


class _ShardWriter:
    """Streams (name, tensor) into safetensors files of at most `limit` bytes, then names them."""

    def __init__(self, root: Path, limit: int):
        self.root, self.limit = root, limit
        self.pending: dict[str, torch.Tensor] = {}
        self.size, self.files, self.weight_map, self.total = 0, [], {}, 0

    def add(self, name: str, t: torch.Tensor) -> None:
        nbytes = t.numel() * t.element_size()
        if self.pending and self.size + nbytes > self.limit:
            self.flush()
        self.pending[name] = t.contiguous().clone()
        self.size += nbytes
        self.total += nbytes

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.pending:
            return
        part = self.root / f"part-{len(self.files):05d}.safetensors"
        save_file(self.pending, str(part), metadata={"format": "pt"})
        self.files.append(part)
        self.weight_map.update({k: part for k in self.pending})
        self.pending, self.size = {}, 0

    def close(self) -> list[str]:
        self.flush()
        n = len(self.files)
        names = {p: "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
                 for i, p in enumerate(self.files)}
        for p, name in names.items():
            os.replace(p, self.root / name)
        if n > 1:
            index = {"metadata": {"total_size": self.total},
                     "weight_map": {k: names[p] for k, p in sorted(self.weight_map.items())}}
            (self.root / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return sorted(names.values()) + (["model.safetensors.index.json"] if n > 1 else [])


def hf_tensors(meta: CheckpointMeta, dtype: torch.dtype):
    """(HF name, tensor) for every weight, reading one stacked checkpoint tensor at a time."""
    cfg, heads, vocab = meta.model, hm.Heads.of(meta.model), meta.vocab_size
    yield hm.HF_EMBED, read_tensors(meta, [hm.EMBEDDING])[hm.EMBEDDING][:vocab].to(dtype)
    for name in hm.layer_names(cfg):
        if name not in meta.shapes:
            raise DataError(f"{meta.path}: no {name} in the checkpoint, which its config (model.add_bias_linear="
                            f"{cfg.add_bias_linear}) needs")
        stacked = read_tensors(meta, [name])[name].to(dtype)
        if stacked.shape[0] != cfg.num_layers:
            raise DataError(f"{meta.path}: {name} has {stacked.shape[0]} layers, the config says {cfg.num_layers}")
        for i in range(cfg.num_layers):
            yield from hm.layer_to_hf(name, stacked[i], i, heads)
        del stacked
    yield hm.HF_NORM, read_tensors(meta, [hm.FINAL_NORM])[hm.FINAL_NORM].to(dtype)
    if not cfg.tie_embeddings:
        yield hm.HF_HEAD, read_tensors(meta, [hm.OUTPUT])[hm.OUTPUT][:vocab].to(dtype)


def _check(cfg: ExportConfig) -> tuple[CheckpointMeta, Path]:
    for key in ("checkpoint", "out"):
        if getattr(cfg, key) is None:
            raise ConfigError(f"{key}: required")
    from glotta.train.checkpoint import CheckpointError

    try:
        meta = checkpoint_meta(cfg.checkpoint)
    except CheckpointError as e:
        raise DataError(str(e)) from None
    bad = hm.unsupported_for_llama(meta.model)
    if bad:
        raise ConfigError(f"{meta.path}: the Llama architecture cannot express " + "; ".join(bad) + ": not exported")
    if meta.tied != meta.model.tie_embeddings:
        raise DataError(f"{meta.path}: model.tie_embeddings={meta.model.tie_embeddings} but the checkpoint "
                        f"{'has no' if meta.tied else 'has an'} output_layer.weight")
    if meta.vocab_size > meta.padded_rows:
        raise DataError(f"{meta.path}: vocab_size {meta.vocab_size} > {meta.padded_rows} embedding rows")
    tok = check_tokenizer(meta, cfg.tokenizer)
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise ConfigError(f"out: {out} exists and is not empty (pass --overwrite to replace it)")
    return meta, tok


def export_hf(cfg: ExportConfig) -> ExportResult:
    """Checkpoint -> HF Llama directory. Every problem is raised before anything is written."""
    from glotta.train.hf_tokenizer import special_ids, write_hf_tokenizer

    t0 = time.perf_counter()
    meta, tok_path = _check(cfg)
    dtype = meta.dtype if cfg.dtype == "auto" else DTYPES[cfg.dtype]
    out = Path(cfg.out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    special = special_ids(tok_path)
    fields = hm.llama_config(meta.model, meta.vocab_size, dtype, special)
    _write_configs(tmp, fields, special)
    from glotta.progress import track

    writer, params = _ShardWriter(tmp, cfg.max_shard_bytes), 0
    per_layer = sum({hm.QKV: 3, hm.QKV_BIAS: 3, hm.FC1: 2, hm.FC1_BIAS: 2}.get(n, 1) for n in hm.layer_names(meta.model))
    n_tensors = 2 + per_layer * meta.model.num_layers + (0 if meta.model.tie_embeddings else 1)
    for name, t in track(hf_tensors(meta, dtype), "export-hf tensors", total=n_tensors):
        writer.add(name, t)
        params += t.numel()
    files = writer.close()
    tok_report = write_hf_tokenizer(tok_path, tmp, max_length=meta.model.seq_length)
    result = ExportResult(
        out=str(out), checkpoint=str(meta.path), step=meta.step, dtype=str(dtype).removeprefix("torch."),
        parameters=params, files=files, tied_embeddings=meta.model.tie_embeddings, vocab_size=meta.vocab_size,
        padding_rows_dropped=meta.padded_rows - meta.vocab_size, tokenizer=tok_report,
    )
    result.seconds = round(time.perf_counter() - t0, 2)
    (tmp / "glotta_export.json").write_text(json.dumps(result.as_dict(), indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return result


def _write_configs(root: Path, fields: dict, special: dict) -> None:
    """config.json through transformers' own LlamaConfig, so the file has the installed version's format."""
    from transformers import GenerationConfig, LlamaConfig

    LlamaConfig(**fields).save_pretrained(root)
    GenerationConfig(**{k: v for k, v in special.items() if v is not None}).save_pretrained(root)
