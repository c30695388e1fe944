"""`glotta model import-hf`: a local Hugging Face Llama/Mistral-family model (safetensors) -> a glotta
torch_dist checkpoint that `glotta train` continues from with `checkpoint.init_from=<out>`.

Everything is checked before a tensor is read (`inspect_hf`): the architecture and the features
glotta can express (hf_mapping.model_config_from_hf), every weight file the index names, every
tensor the model needs, and a SentencePiece tokenizer whose size equals the model's vocabulary.

The model is built once in this process (one-process gloo group, CPU, local spec), filled from the
safetensors files and saved with the trainer's own save_checkpoint. torch_dist stores global tensors,
so the checkpoint loads at any TP/PP; `--tp` only sets the vocabulary padding (megatron pads the
vocabulary to a multiple of make_vocab_size_divisible_by x TP, and the trainer builds its
embedding that size). Padding rows are the mean of the real rows (transformers'
resize_token_embeddings does the same), so they start as likely as an average token.

`<out>/train.yaml` holds the model, parallel, data.tokenizer and checkpoint.init_from keys to
continue from (`glotta train -c <out>/train.yaml --set data.train=[...]`).

Memory: the whole model in the chosen precision (4 bytes/parameter in fp32) plus one HF tensor.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from glotta.config import StrictModel
from glotta.errors import ConfigError, DataError
from glotta.train import hf_mapping as hm
from glotta.train.model import ModelConfig

TOKENIZER_FILE = "tokenizer.model"


class ImportConfig(StrictModel):
    source: Path | None = None  # HF model directory
    out: Path | None = None  # checkpoint root to write (iter_0000000/, latest, tokenizer.model)
    tp: int = Field(1, ge=1)  # tensor-parallel size of the run that continues (vocabulary padding)
    pp: int = Field(1, ge=1)  # pipeline-parallel size of that run (checked against the layer count)
    seq_length: int | None = Field(None, gt=0)  # default: max_position_embeddings
    make_vocab_size_divisible_by: int = Field(128, gt=0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # of the saved weights (auto = fp32 on CPU)
    overwrite: bool = False


@dataclass(frozen=True)
class HFSource:
    root: Path
    config: dict
    model: ModelConfig
    weight_file: dict[str, Path]  # HF tensor name -> safetensors file
    tokenizer: Path
    vocab_size: int


@dataclass
class ImportResult:
    out: str
    checkpoint: str
    source: str
    architecture: str
    parameters: int
    vocab_size: int
    padded_rows: int
    padding_rows_added: int
    tokenizer: str
    tensors_read: int
    tensors_unused: list[str]
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def _weight_files(root: Path) -> dict[str, Path]:
    from safetensors import safe_open

    index = root / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (root / f).is_file()]
        if missing:
            raise DataError(f"{index} names {len(missing)} missing shard(s): {', '.join(missing[:5])}")
    elif (root / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        other = sorted(p.name for p in root.glob("*.bin")) + sorted(p.name for p in root.glob("*.pt"))
        raise DataError(f"{root}: no model.safetensors or model.safetensors.index.json"
                        + (f" (found {', '.join(other[:3])}: convert them to safetensors first)" if other else ""))
    out = {}
    for f in files:
        try:
            with safe_open(str(root / f), framework="pt") as fh:
                out.update({k: root / f for k in fh.keys()})
        except Exception as e:  # a truncated or foreign file: name it
            raise DataError(f"{root / f}: not a readable safetensors file ({e})") from None
    return out


def needed_tensors(cfg: ModelConfig) -> list[str]:
    names = [hm.HF_EMBED, hm.HF_NORM] + ([] if cfg.tie_embeddings else [hm.HF_HEAD])
    for i in range(cfg.num_layers):
        src = hm.hf_layer_sources(i)
        names += [n for key in hm.layer_names(cfg) for n in src[key]]
    return names


def inspect_hf(cfg: ImportConfig) -> HFSource:
    """All the checks, no tensor data read."""
    from glotta.tokenizer.evaluate import load_model as load_sp

    root = Path(cfg.source)
    conf_path = root / "config.json"
    if not conf_path.is_file():
        raise DataError(f"{root}: no config.json (not a Hugging Face model directory)")
    conf = json.loads(conf_path.read_text())
    model = hm.model_config_from_hf(conf, cfg.seq_length, cfg.make_vocab_size_divisible_by, str(conf_path))
    model = model.model_copy(update={"precision": cfg.precision})
    if model.num_layers % cfg.pp:
        raise ConfigError(f"pp: {model.num_layers} layers do not split into {cfg.pp} pipeline stages")
    if model.num_attention_heads % cfg.tp or (model.num_query_groups or model.num_attention_heads) % cfg.tp:
        raise ConfigError(f"tp: {model.num_attention_heads} heads / {model.num_query_groups or model.num_attention_heads} "
                          f"key-value heads do not split over TP={cfg.tp}")
    tok = root / TOKENIZER_FILE
    if not tok.is_file():
        has = [p.name for p in root.glob("tokenizer*")] + [p.name for p in root.glob("*.tiktoken")]
        raise DataError(f"{root}: no {TOKENIZER_FILE} (SentencePiece); glotta trains with SentencePiece and found "
                        f"{', '.join(has) or 'no tokenizer'}: a tokenizer that is not SentencePiece cannot be imported")
    try:
        sp = load_sp(tok)
    except Exception as e:
        raise DataError(f"{tok} is not a SentencePiece model ({e}); glotta trains with SentencePiece only") from None
    if sp.eos_id() < 0:
        raise DataError(f"{tok} has no EOS piece, which glotta uses as the end-of-document token")
    vocab = conf.get("vocab_size")
    files = _weight_files(root)
    if hm.HF_EMBED not in files:
        raise DataError(f"{root}: no {hm.HF_EMBED} in the weights")
    from safetensors import safe_open

    with safe_open(str(files[hm.HF_EMBED]), framework="pt") as fh:
        rows = fh.get_slice(hm.HF_EMBED).get_shape()[0]
    if not (sp.get_piece_size() == vocab == rows):
        raise DataError(f"{root}: vocabulary sizes disagree: tokenizer {sp.get_piece_size()} pieces, config.json "
                        f"vocab_size {vocab}, embedding {rows} rows (glotta needs them equal)")
    missing = [n for n in needed_tensors(model) if n not in files]
    if missing:
        raise DataError(f"{root}: {len(missing)} tensor(s) missing from the weights: {', '.join(missing[:5])}")
    return HFSource(root, conf, model, files, tok, int(vocab))


def _state_name(local_keys: set[str], name: str, i: int) -> str:
    """Checkpoint name (TE-style, stacked) -> this model's state_dict key for layer i (local spec names
    the norms input_layernorm / pre_mlp_layernorm)."""
    short = name.removeprefix(hm.PREFIX)
    key = f"decoder.layers.{i}.{short}"
    if key in local_keys:
        return key
    local = {hm.NORM_IN: "input_layernorm.weight", hm.NORM_MLP: "pre_mlp_layernorm.weight"}
    key = f"decoder.layers.{i}.{local.get(name, short)}"
    if key not in local_keys:
        raise DataError(f"the glotta model has no parameter for {name} of layer {i}")
    return key


def _pad(t: torch.Tensor, rows: int) -> torch.Tensor:
    out = t.new_empty(rows, t.shape[1])
    out[: t.shape[0]] = t
    out[t.shape[0]:] = t.double().mean(0).to(t.dtype)
    return out


def import_hf(cfg: ImportConfig) -> ImportResult:
    from safetensors import safe_open

    from glotta.train import checkpoint as ckpt
    from glotta.train.config import TrainConfig
    from glotta.train.data import DataConfig
    from glotta.train.model import build_model, padded_vocab_size
    from glotta.train.parallel import ParallelConfig, destroy_parallel, init_parallel

    for key in ("source", "out"):
        if getattr(cfg, key) is None:
            raise ConfigError(f"{key}: required")
    t0 = time.perf_counter()
    src = inspect_hf(cfg)
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise ConfigError(f"out: {out} exists and is not empty (another run's checkpoints?); pass --overwrite")
    rows = padded_vocab_size(src.vocab_size, cfg.make_vocab_size_divisible_by, cfg.tp)
    model_cfg = src.model.model_copy(update={"attention_backend": "sdpa"})
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    tok = out / TOKENIZER_FILE
    shutil.copyfile(src.tokenizer, tok)
    dims = init_parallel(ParallelConfig(backend="gloo"), seed=0)
    try:
        model = build_model(model_cfg, dims, rows)[0]
        sd = model.state_dict()
        local_keys = set(sd)
        new: dict[str, torch.Tensor] = {}
        handles: dict[Path, object] = {}

        def get(name: str) -> torch.Tensor:
            f = src.weight_file[name]
            if f not in handles:
                handles[f] = safe_open(str(f), framework="pt")
            return handles[f].get_tensor(name)

        heads, read = hm.Heads.of(model_cfg), 0
        new["embedding.word_embeddings.weight"] = _pad(get(hm.HF_EMBED), rows)
        for i in range(model_cfg.num_layers):
            sources = hm.hf_layer_sources(i)
            for name in hm.layer_names(model_cfg):
                parts = [get(n) for n in sources[name]]
                read += len(parts)
                new[_state_name(local_keys, name, i)] = hm.layer_from_hf(name, parts, heads)
        new["decoder.final_layernorm.weight"] = get(hm.HF_NORM)
        if not model_cfg.tie_embeddings:
            new["output_layer.weight"] = _pad(get(hm.HF_HEAD), rows)
        read += 2 + (0 if model_cfg.tie_embeddings else 1)
        for k, v in sd.items():
            if k.endswith("_extra_state"):
                continue
            if k not in new:
                raise DataError(f"no HF tensor maps to the glotta parameter {k}")
            if tuple(new[k].shape) != tuple(v.shape):
                raise DataError(f"{k}: HF gives shape {tuple(new[k].shape)}, the glotta model has {tuple(v.shape)}")
            v.copy_(new[k].to(v.dtype))
        unused = sorted(set(src.weight_file) - set(needed_tensors(model_cfg)) - {hm.HF_HEAD})
        train_cfg = TrainConfig(model=src.model, parallel=ParallelConfig(tensor_parallel=cfg.tp, pipeline_parallel=cfg.pp),
                                data=DataConfig(tokenizer=str(tok.resolve())), run_dir=str(out.resolve().parent / "run"))
        meta = {"config": train_cfg.model_dump(mode="json"), "vocab_size": src.vocab_size, "langs": [],
                "imported_from": {"source": str(src.root.resolve()), "architecture": src.config["architectures"][0],
                                  "tp": cfg.tp, "pp": cfg.pp, "padded_rows": rows}}
        saved = ckpt.save_checkpoint(out, 0, [model], None, meta, None, dims)
        params = sum(p.numel() for p in model.parameters())
    finally:
        destroy_parallel()
    result = ImportResult(
        out=str(out), checkpoint=str(saved), source=str(src.root), architecture=src.config["architectures"][0],
        parameters=params, vocab_size=src.vocab_size, padded_rows=rows, padding_rows_added=rows - src.vocab_size,
        tokenizer=str(tok), tensors_read=read, tensors_unused=unused, seconds=round(time.perf_counter() - t0, 2),
    )
    (out / "import.json").write_text(json.dumps(result.as_dict(), indent=1) + "\n")
    _write_train_yaml(out, src.model, cfg, tok)
    return result


def _write_train_yaml(out: Path, model: ModelConfig, cfg: ImportConfig, tok: Path) -> None:
    """A config to continue from: `glotta train -c <out>/train.yaml --set data.train=[...]` (the trainer
    builds its model from the config, which must be the imported one)."""
    import yaml

    conf = {"model": model.model_dump(mode="json"),
            "parallel": {"tensor_parallel": cfg.tp, "pipeline_parallel": cfg.pp},
            "data": {"tokenizer": str(tok.resolve())},
            "checkpoint": {"init_from": str(out.resolve())}}
    (out / "train.yaml").write_text("# written by glotta model import-hf\n" + yaml.safe_dump(conf, sort_keys=False))
