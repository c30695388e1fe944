"""Forward-only use of saved checkpoints (CAT scoring, tokenizer adaptation, evaluation).

    from glotta.train import load_model, token_losses
    model, meta = load_model("runs/x/checkpoints")          # latest, or an iter_NNNNNNN directory
    losses = token_losses(model, tokens)                     # [B, S] cross-entropy in nats

Works in a plain Python process (a one-process gloo group is created) or under torchrun with
tensor parallelism; pipeline parallelism is not used here (pp=1).
"""
from __future__ import annotations

from pathlib import Path

import torch

from glotta.train import checkpoint as ckpt
from glotta.train.model import ModelConfig, build_model, uses_thd
from glotta.train.step import attention_inputs
from glotta.train.parallel import ParallelConfig, ParallelDims, init_parallel


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
