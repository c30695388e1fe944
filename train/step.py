"""Megatron's step split: get_batch -> forward_step -> loss_func.

`loss_func` returns `(loss_sum, num_tokens, report)` so the loss is normalised by the number of
real tokens after the data-parallel reduction (megatron's `calculate_per_token_loss`), and the
report carries per-language loss sums and token counts for `val/loss/<lang>` and the logs.
Nothing here waits for the GPU: non-finite losses are caught once per step by the loop (faults.py).

Attention inputs (train/attention.py): the per-token segment ids go to the model as its
`attention_mask` (flex/SDPA document attention). With Transformer Engine the micro-batch is laid
out as one packed row (THD: tokens [1, B*S]) and `PackedSeqParams.cu_seqlens` marks every document
and every row start, so TE masks documents too.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist

from glotta.train.attention import segment_ids_from_cu_seqlens


@dataclass
class Batch:
    """One micro-batch on this rank ([1, B*S] instead of [B, S] in THD layout). Middle pipeline
    stages only use `attention_mask` / `packed_seq_params`."""

    tokens: torch.Tensor  # [B, S] int64
    labels: torch.Tensor  # [B, S] int64
    loss_mask: torch.Tensor  # [B, S] float32, 0 on padding
    position_ids: torch.Tensor  # [B, S] int64
    attention_mask: torch.Tensor | None  # [B, S] int64 segment ids (document attention); None = causal / THD
    lang_ids: torch.Tensor  # [B, S] int64, -1 on padding
    packed_seq_params: object = None  # megatron PackedSeqParams (THD layout, Transformer Engine)


def cu_seqlens_from_segments(segment_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """[B, S] segment ids -> (int32 offsets of every document and row start in the flattened B*S
    stream, longest piece). Row starts are boundaries even when a document continues into the next row."""
    b, s = segment_ids.shape
    flat = segment_ids.reshape(-1)
    start = torch.ones_like(flat, dtype=torch.bool)
    start[1:] = flat[1:] != flat[:-1]
    start[::s] = True
    cu = torch.cat([start.nonzero().squeeze(1), torch.tensor([flat.numel()], device=flat.device)]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def attention_inputs(segment_ids: torch.Tensor | None, thd: bool):
    """(attention_mask, packed_seq_params) for the model: segment ids for the document attention,
    or PackedSeqParams for Transformer Engine's THD path. segment_ids None = causal over the row."""
    if segment_ids is None:
        return None, None
    if not thd:
        return segment_ids, None
    from megatron.core.packed_seq_params import PackedSeqParams

    cu, longest = cu_seqlens_from_segments(segment_ids)
    return None, PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=longest,
                                 max_seqlen_kv=longest)


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


def get_batch(data_iterator, shape: tuple[int, int], device: torch.device, thd: bool = False,
              document_masking: bool = True) -> Batch:
    """TP rank 0 reads the next loader batch and broadcasts it over the tensor-parallel group
    (two fixed-shape tensors: the variable-length cu_seqlens travel as per-token segment ids).
    `thd`: Transformer Engine layout (one packed row + cu_seqlens)."""
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
    thd = thd and document_masking
    mask, packed = attention_inputs(seg if document_masking else None, thd)
    if thd:  # one packed row: [1, B*S]
        tokens, labels, loss_mask, position_ids, lang_ids = (
            t.reshape(1, b * s) for t in (tokens, labels, loss_mask, position_ids, lang_ids))
    return Batch(tokens, labels, loss_mask, position_ids, mask, lang_ids, packed)


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
    # No host sync here (a non-finite loss is caught once per step by the loop): masked sums
    # instead of boolean indexing, which would wait for the GPU on every micro-batch.
    langs = lang_ids.reshape(-1).clamp(min=0)
    masked = losses.detach() * mask
    per_lang_loss = torch.zeros(num_langs, device=losses.device).index_add_(0, langs, masked)
    per_lang_tok = torch.zeros(num_langs, device=losses.device).index_add_(0, langs, mask)
    per_lang_bytes = torch.zeros(num_langs, device=losses.device)
    if label_bytes is not None:
        per_lang_bytes.index_add_(0, langs, label_bytes.reshape(-1).float() * mask)
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
    *,
    thd: bool = False,
    document_masking: bool = True,
):
    """Megatron forward_step: (output, partial(loss_func, ...)). Bind the first four args (and the
    keywords) with partial; `byte_lengths` (UTF-8 bytes per token id, or None) feeds bits-per-byte
    in validation; `thd` selects Transformer Engine's packed layout."""
    batch = get_batch(data_iterator, shape, device, thd, document_masking)
    output = model(batch.tokens, batch.position_ids, batch.attention_mask, labels=batch.labels,
                   packed_seq_params=batch.packed_seq_params)
    label_bytes = None
    if byte_lengths is not None:
        label_bytes = byte_lengths.to(device)[batch.labels.clamp(0, byte_lengths.numel() - 1)]
    return output, partial(loss_func, batch.loss_mask, batch.lang_ids, num_langs, label_bytes)
