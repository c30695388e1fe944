"""The one door to saved checkpoints for the stages that read them (CAT scoring, tokenizer
adaptation, Hugging Face export, generation, evaluation).

    from glotta.train.inference import checkpoint_meta, read_tensors, load_model, token_losses
    meta = checkpoint_meta("runs/x/checkpoints")     # typed CheckpointMeta, verified before any work
    tensors = read_tensors(meta, ["output_layer.weight"])  # global tensors, no model, no process group
    model, raw = load_model(meta.path)                # megatron GPTModel in eval mode (any saved TP/PP)
    losses = token_losses(model, tokens)              # [B, S] cross-entropy in nats

`load_model` works in a plain Python process (a one-process gloo group is created) or under
torchrun with tensor parallelism; pipeline parallelism is not used here (pp=1).

torch_dist stores every tensor with its *global* shape whatever TP/PP layout wrote it: layer
tensors are stacked over all layers (`decoder.layers.<name>` is [num_layers, ...]), and norms
carry Transformer Engine names (`self_attention.linear_qkv.layer_norm_weight`) even for the local
spec. `read_tensors` reads them with torch.distributed.checkpoint directly, one name at a time, so
an exporter never holds more than the largest stacked tensor.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from glotta.train import checkpoint as ckpt
from glotta.train.model import ModelConfig, build_model, uses_thd
from glotta.train.step import attention_inputs
from glotta.train.parallel import ParallelConfig, ParallelDims, init_parallel

EMBEDDING = "embedding.word_embeddings.weight"
OUTPUT = "output_layer.weight"
FINAL_NORM = "decoder.final_layernorm.weight"


@dataclass(frozen=True)
class CheckpointMeta:
    """What a reader needs to know about a checkpoint, checked when it is read."""

    path: Path  # the iter_NNNNNNN directory
    step: int
    model: ModelConfig
    vocab_size: int  # real tokens (the tokenizer's pieces)
    padded_rows: int  # rows of the saved embedding (vocab padded to make_vocab_size_divisible_by x TP)
    tokenizer: Path | None  # data.tokenizer recorded by the run (None when the run had none)
    langs: list[str]
    tp: int
    pp: int
    dp: int
    dtype: torch.dtype  # dtype of the saved weights
    run_dir: str | None = None
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)
    raw: dict = field(default_factory=dict, repr=False)  # meta.json as written

    @property
    def tied(self) -> bool:
        return OUTPUT not in self.shapes


def _storage_files(md) -> set[str]:
    return {info.relative_path for info in (md.storage_data or {}).values()}


def checkpoint_meta(path: str | Path) -> CheckpointMeta:
    """meta.json + the torch_dist metadata of a checkpoint (a directory, or a root with `latest`).
    Raises CheckpointError naming the file when meta.json, the metadata or a shard file is missing,
    before any tensor is read."""
    from torch.distributed.checkpoint import FileSystemReader

    src = ckpt.resolve(path)
    raw = ckpt.read_meta(src)
    if not (src / ".metadata").is_file():
        raise ckpt.CheckpointError(f"{src}: no .metadata (not a complete torch_dist checkpoint)")
    md = FileSystemReader(str(src)).read_metadata()
    missing = sorted(f for f in _storage_files(md) if not (src / f).is_file())
    if missing:
        raise ckpt.CheckpointError(f"{src}: shard file(s) missing: {', '.join(missing[:5])}"
                                   f"{' ...' if len(missing) > 5 else ''} (copied incompletely?)")
    shapes = {k: tuple(v.size) for k, v in md.state_dict_metadata.items() if hasattr(v, "size")}
    if EMBEDDING not in shapes:
        raise ckpt.CheckpointError(f"{src}: no {EMBEDDING} (not a glotta/megatron GPT checkpoint)")
    config = raw.get("config") or {}
    if "model" not in config or "vocab_size" not in raw:
        raise ckpt.CheckpointError(f"{src / ckpt.META}: no config.model or vocab_size (not written by glotta train?)")
    world = raw.get("world", {})
    tok = (config.get("data") or {}).get("tokenizer")
    dtype = md.state_dict_metadata[EMBEDDING].properties.dtype
    return CheckpointMeta(
        path=src, step=int(raw["step"]), model=ModelConfig.model_validate(config["model"]),
        vocab_size=int(raw["vocab_size"]), padded_rows=shapes[EMBEDDING][0], tokenizer=Path(tok) if tok else None,
        langs=list(raw.get("langs") or []), tp=int(world.get("tp", 1)), pp=int(world.get("pp", 1)),
        dp=int(world.get("dp", 1)), dtype=dtype, run_dir=config.get("run_dir"), shapes=shapes, raw=raw,
    )


def read_tensors(meta: CheckpointMeta, names: list[str]) -> dict[str, torch.Tensor]:
    """Global tensors by checkpoint name, read in this process without building a model."""
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    unknown = [n for n in names if n not in meta.shapes]
    if unknown:
        raise ckpt.CheckpointError(f"{meta.path}: no tensor(s) {unknown}")
    out = {n: torch.empty(meta.shapes[n], dtype=meta.dtype) for n in names}
    with warnings.catch_warnings():  # "torch.distributed is disabled ... single process" is the intent here
        warnings.simplefilter("ignore")
        dcp.load(out, storage_reader=FileSystemReader(str(meta.path)), no_dist=True)
    return out


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_tokenizer(meta: CheckpointMeta, tokenizer: str | Path | None) -> Path:
    """The tokenizer to use with this checkpoint: the one given, else the one the run recorded.
    A tokenizer whose size is not the checkpoint's vocab_size, or that differs from the run's own
    recorded tokenizer, is another run's: one error naming both."""
    from glotta.errors import ConfigError, DataError
    from glotta.tokenizer.evaluate import load_model as load_sp

    path = Path(tokenizer) if tokenizer else meta.tokenizer
    if path is None or not path.is_file():
        raise ConfigError(f"tokenizer: the checkpoint {meta.path} records {str(meta.tokenizer)!r}, which does not "
                          "exist here; pass --tokenizer with the SentencePiece model it was trained with")
    sp = load_sp(path)
    if sp.get_piece_size() != meta.vocab_size:
        raise DataError(f"{path} has {sp.get_piece_size()} pieces but the checkpoint {meta.path} was trained with "
                        f"vocab_size {meta.vocab_size}: it belongs to another run")
    if tokenizer and meta.tokenizer is not None and meta.tokenizer.is_file() and \
            file_sha256(path) != file_sha256(meta.tokenizer):
        raise DataError(f"{path} is not the tokenizer the checkpoint {meta.path} was trained with "
                        f"({meta.tokenizer}, same size, different pieces or scores)")
    return path


def load_model(path: str | Path, dims: ParallelDims | None = None, tensor_parallel: int = 1):
    """Build the model recorded in a checkpoint and load its weights (any saved TP/PP layout).
    Returns (model in eval mode, meta.json dict: config, vocab_size, langs, step, ...)."""
    meta = ckpt.read_meta(path)
    if dims is None:
        dims = init_parallel(ParallelConfig(tensor_parallel=tensor_parallel), seed=meta["config"].get("seed", 1234))
    model_cfg = ModelConfig.model_validate(meta["config"]["model"])
    chunks = build_model(model_cfg, dims, meta["vocab_size"])
    ckpt.load_checkpoint(path, chunks)
    model = chunks[0]
    model.glotta_thd = uses_thd(model_cfg, dims)  # token_losses lays batches out for TE's THD path
    model.eval()
    return model, meta


@torch.no_grad()
def token_losses(model, tokens: torch.Tensor, labels: torch.Tensor | None = None, segment_ids: torch.Tensor | None = None):
    """Per-token cross-entropy [B, S] (nats) of `labels` given `tokens` (labels default to tokens
    shifted left, the last position then gets loss 0). `segment_ids` [B, S] adds document masking."""
    tokens = tokens.to(torch.int64)
    shifted = labels is None
    if shifted:
        labels = torch.cat([tokens[:, 1:], tokens[:, -1:]], dim=1)
    b, s = tokens.shape
    position_ids = torch.arange(s).unsqueeze(0).expand(b, s)
    device = next(model.parameters()).device
    thd = segment_ids is not None and getattr(model, "glotta_thd", False)
    mask, packed = attention_inputs(segment_ids.to(device) if segment_ids is not None else None, thd)
    if thd:  # Transformer Engine: one packed row with cu_seqlens
        tokens, position_ids, labels = (t.reshape(1, b * s) for t in (tokens, position_ids, labels))
    out = model(tokens.to(device), position_ids.to(device), mask, labels=labels.to(device), packed_seq_params=packed)
    out = out.float().cpu().reshape(b, s)
    if shifted:
        out[:, -1] = 0.0
    return out


@torch.no_grad()
def full_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    """[B, S, padded vocab] float32 logits of a causal forward pass, gathered over tensor parallelism."""
    from megatron.core import parallel_state as ps

    tokens = tokens.to(torch.int64)
    b, s = tokens.shape
    device = next(model.parameters()).device
    pos = torch.arange(s, device=device).unsqueeze(0).expand(b, s)
    out = model(tokens.to(device), pos, None).float()
    if ps.get_tensor_model_parallel_world_size() > 1:
        from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

        out = gather_from_tensor_model_parallel_region(out)
    return out.cpu()
