"""Megatron's step split: get_batch -> forward_step -> loss_func.

`loss_func` returns `(loss_sum, num_tokens, report)` so the loss is normalised by the number of
real tokens after the data-parallel reduction (megatron's `calculate_per_token_loss`), and the
report carries per-language loss sums and token counts for `val/loss/<lang>` and the logs.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist

from glotta.train.attention import document_mask, segment_ids_from_cu_seqlens


@dataclass
class Batch:
    """One micro-batch on this rank. Middle pipeline stages only use `attention_mask`."""

    tokens: torch.Tensor  # [B, S] int64
    labels: torch.Tensor  # [B, S] int64
    loss_mask: torch.Tensor  # [B, S] float32, 0 on padding
    position_ids: torch.Tensor  # [B, S] int64
    attention_mask: torch.Tensor  # [B, 1, S, S] bool, True = masked out (document + causal)
    lang_ids: torch.Tensor  # [B, S] int64, -1 on padding


def _from_loader(sample: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Contract dict -> (ints [5, B, S]: tokens, labels, position_ids, segment ids, lang ids; loss_mask)."""
    tokens = torch.as_tensor(sample["tokens"], dtype=torch.int64)
    b, s = tokens.shape
    seg = segment_ids_from_cu_seqlens(torch.as_tensor(sample["cu_seqlens"]), b, s)
    ints = torch.stack(
        [
            tokens,
            torch.as_tensor(sample["labels"], dtype=torch.int64),
            torch.as_tensor(sample["position_ids"], dtype=torch.int64),
            seg,
            torch.as_tensor(sample["lang_ids"], dtype=torch.int64),
        ]
    )
    return ints, torch.as_tensor(sample["loss_mask"], dtype=torch.float32)


def get_batch(data_iterator, shape: tuple[int, int], device: torch.device) -> Batch:
    """TP rank 0 reads the next loader batch and broadcasts it over the tensor-parallel group
    (two fixed-shape tensors: the variable-length cu_seqlens travel as per-token segment ids)."""
    from megatron.core import parallel_state as ps

    b, s = shape
    tp = ps.get_tensor_model_parallel_world_size()
    if ps.get_tensor_model_parallel_rank() == 0:
        ints, loss_mask = _from_loader(next(data_iterator))
        if tuple(ints.shape[1:]) != (b, s):
            raise ValueError(f"loader batch has shape {tuple(ints.shape[1:])}, the trainer expects {(b, s)}")
        ints, loss_mask = ints.to(device), loss_mask.to(device)
    else:
        ints = torch.empty(5, b, s, dtype=torch.int64, device=device)
        loss_mask = torch.empty(b, s, dtype=torch.float32, device=device)
    if tp > 1:
        src, group = ps.get_tensor_model_parallel_src_rank(), ps.get_tensor_model_parallel_group()
        dist.broadcast(ints, src, group=group)
        dist.broadcast(loss_mask, src, group=group)
    tokens, labels, position_ids, seg, lang_ids = ints.unbind(0)
    return Batch(tokens, labels, loss_mask, position_ids, document_mask(seg), lang_ids)


def loss_func(
    loss_mask: torch.Tensor,
    lang_ids: torch.Tensor,
    num_langs: int,
    label_bytes: torch.Tensor | None,
    output_tensor: torch.Tensor,
):
    """Per-token CE from GPTModel -> (sum over real tokens, token count, report).

    report["lm loss"] = [loss_sum, tokens]; report["lang"] = [loss sums per language (L), tokens
    per language (L), UTF-8 bytes of the predicted tokens per language (L, zeros without a table)].
    """
    losses = output_tensor.float().reshape(-1)
    mask = loss_mask.reshape(-1).float()
    loss_sum = (losses * mask).sum()
    num_tokens = mask.sum()
    if not torch.isfinite(loss_sum):
        raise FloatingPointError(f"loss is {loss_sum.item()} on rank {dist.get_rank()}")
    langs = lang_ids.reshape(-1).clamp(min=0)
    real = mask > 0
    per_lang_loss = torch.zeros(num_langs, device=losses.device).index_add_(0, langs[real], losses[real].detach())
    per_lang_tok = torch.zeros(num_langs, device=losses.device).index_add_(0, langs[real], mask[real])
    per_lang_bytes = torch.zeros(num_langs, device=losses.device)
    if label_bytes is not None:
        per_lang_bytes.index_add_(0, langs[real], label_bytes.reshape(-1)[real].float())
    report = {
        "lm loss": torch.stack([loss_sum.detach(), num_tokens]),
        "lang": torch.cat([per_lang_loss, per_lang_tok, per_lang_bytes]),
    }
    return loss_sum, num_tokens.to(torch.int), report


def forward_step(
    shape: tuple[int, int],
    device: torch.device,
    num_langs: int,
    byte_lengths: torch.Tensor | None,
    data_iterator,
    model,
):
    """Megatron forward_step: (output, partial(loss_func, ...)). Bind the first four args with partial;
    `byte_lengths` (UTF-8 bytes per token id, or None) feeds bits-per-byte in validation."""
    batch = get_batch(data_iterator, shape, device)
    output = model(batch.tokens, batch.position_ids, batch.attention_mask, labels=batch.labels)
    label_bytes = None
    if byte_lengths is not None:
        label_bytes = byte_lengths.to(device)[batch.labels.clamp(0, byte_lengths.numel() - 1)]
    return output, partial(loss_func, batch.loss_mask, batch.lang_ids, num_langs, label_bytes)
