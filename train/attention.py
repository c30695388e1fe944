"""Document-masked core attention: one mask definition for every backend.

Packed rows hold several documents; a token may attend to earlier tokens of its own document only.
That rule is written once, as a flex_attention `mask_mod` over per-token segment ids
(`document_mask_mod`), and every backend applies it:

  backend   where                        kernel
  flex      CUDA without TE              torch flex_attention (compiled) with a BlockMask from the
                                         mask_mod: fully masked 128x128 blocks are skipped, no S x S mask
  sdpa      CPU (and on request on CUDA) scaled_dot_product_attention with the dense mask the same
                                         mask_mod materialises (torch 2.13 refuses flex_attention's
                                         backward on CPU: "FlexAttention does not support backward on CPU")
  te        CUDA with Transformer Engine TE's own attention in THD layout: PackedSeqParams with
                                         cu_seqlens derived from the same segment ids (see step.py)

`DocumentAttention` is the core attention of megatron's local layer spec (same constructor and
forward signature as megatron's `DotProductAttention`). It receives the per-token segment ids
[B, S] as megatron's `attention_mask` argument (a tensor, so selective/full recomputation can save
it); the mask built from them is cached on that tensor, so the layers of one micro-batch build it
once. A dense [B, 1, S, S] boolean mask (True = masked out, megatron's convention) is accepted too.
Grouped-query attention uses the kernels' own GQA support (no repeat_interleave).

`check_document_masking` is the startup check: it runs the model's own core attention on two
documents and refuses to train if the second one sees the first (unless model.document_masking is
false, an explicit request to attend across documents).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule

from glotta.errors import ConfigError

_CACHE_ATTR = "_glotta_attention_masks"


def segment_ids_from_cu_seqlens(cu_seqlens: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
    """Loader `cu_seqlens` (offsets into the flattened B*S stream) -> [B, S] segment index per token."""
    positions = torch.arange(batch * seq, device=cu_seqlens.device)
    seg = torch.searchsorted(cu_seqlens[1:].to(torch.int64), positions, right=True)
    return seg.view(batch, seq)


def document_mask_mod(segment_ids: torch.Tensor | None) -> Callable:
    """The rule, as a flex_attention mask_mod (True = may attend): same segment and not in the future.
    None = causal over the whole row (model.document_masking=false)."""
    if segment_ids is None:
        return lambda b, h, q, kv: q >= kv
    if segment_ids.dim() == 4:  # dense megatron mask [B, 1, S, S], True = masked out
        dense = segment_ids
        return lambda b, h, q, kv: ~dense[b, 0, q, kv]
    return lambda b, h, q, kv: (segment_ids[b, q] == segment_ids[b, kv]) & (q >= kv)


def document_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """[B, S] segment ids -> [B, 1, S, S] bool mask in megatron's convention (True = masked out),
    materialised from `document_mask_mod` (the reference the kernels are tested against)."""
    from torch.nn.attention.flex_attention import create_mask

    b, s = segment_ids.shape
    return ~create_mask(document_mask_mod(segment_ids), b, None, s, s, device=segment_ids.device)


def _cached(mask: torch.Tensor, key: str, build: Callable):
    cache = getattr(mask, _CACHE_ATTR, None)
    if cache is None:
        cache = {}
        setattr(mask, _CACHE_ATTR, cache)
    if key not in cache:
        cache[key] = build()
    return cache[key]


_compiled_flex = None


def _flex_fn(device: torch.device):
    """flex_attention compiled on CUDA (eager flex is a slow reference implementation), eager elsewhere."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if device.type != "cuda":
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def attend(q, k, v, mask: torch.Tensor | None, scale: float, kernel: str = "sdpa") -> torch.Tensor:
    """Core attention in [B, heads, S, dim] layout with the document rule. `mask`: [B, S] segment
    ids, a dense [B, 1, S, S] mask (True = masked), or None (causal). K/V may have fewer heads (GQA)."""
    b, _, s, _ = q.shape
    gqa = k.shape[1] != q.shape[1]
    if kernel == "flex":
        from torch.nn.attention.flex_attention import create_block_mask

        def block():
            return create_block_mask(document_mask_mod(mask), b, None, s, s, device=q.device)

        block_mask = block() if mask is None else _cached(mask, f"block{s}", block)
        return _flex_fn(q.device)(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)
    if kernel != "sdpa":
        raise ValueError(f"unknown attention kernel {kernel!r}")
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    allowed = _cached(mask, "dense", lambda: ~mask if mask.dim() == 4 else ~document_mask(mask))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale, enable_gqa=gqa)


def kernel_for(device: torch.device, backend: str) -> str:
    """flex on CUDA, sdpa on CPU (no flex backward there) or when asked for."""
    if backend == "sdpa" or device.type != "cuda":
        return "sdpa"
    return "flex"


class DocumentAttention(MegatronModule):
    """megatron core attention (local spec) applying the document rule with flex or SDPA kernels."""

    kernel = "auto"  # set by model.layer_spec through a subclass: "flex", "sdpa" or "auto"

    def __init__(
        self,
        config,
        layer_number: int,
        attn_mask_type,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ConfigError("context parallelism needs the Transformer Engine attention (model.attention_backend=te)")
        tp = config.tensor_model_parallel_size
        self.heads = config.num_attention_heads // tp
        self.groups = config.num_query_groups // tp
        self.head_dim = config.kv_channels
        self.scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(self.head_dim)
        dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        if dropout > 0:
            raise ConfigError("model.dropout > 0: the flex/SDPA document attention has no attention dropout; set it to 0")

    def forward(
        self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None, packed_seq_params=None
    ):
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("DocumentAttention takes segment ids, not packed_seq_params/attention_bias")
        # megatron layout [s, b, heads, dim] -> [b, heads, s, dim]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        kernel = self.kernel if self.kernel != "auto" else kernel_for(q.device, "auto")
        out = attend(q, k, v, attention_mask, self.scale, kernel)
        s, b = query.shape[0], query.shape[1]
        return out.permute(2, 0, 1, 3).reshape(s, b, self.heads * self.head_dim)


def attention_class(kernel: str) -> type:
    """A DocumentAttention subclass bound to one kernel (megatron builds modules from classes)."""
    return type(f"DocumentAttention_{kernel}", (DocumentAttention,), {"kernel": kernel})


# --- the startup check ----------------------------------------------------------------------------


def leaks_across_documents(core_attention, heads: int, groups: int, head_dim: int, device, dtype, thd: bool,
                           attn_mask_type=None) -> float:
    """Run `core_attention` (the model's own module) on one row holding two documents, then again
    with the first document's keys/values changed. Returns the largest change seen by the second
    document's outputs (0 when documents are isolated)."""
    from glotta.train.step import attention_inputs

    s = 256
    seg = torch.tensor([[0] * 100 + [1] * (s - 100)], device=device)
    gen = torch.Generator(device="cpu").manual_seed(0)

    def rand(h):
        return torch.randn(s, 1, h, head_dim, generator=gen).to(device=device, dtype=dtype)

    q, k, v = rand(heads), rand(groups), rand(groups)
    k2, v2 = k.clone(), v.clone()
    k2[:100], v2[:100] = rand(groups)[:100], rand(groups)[:100]
    mask, packed = attention_inputs(seg, thd)
    kw = {"attn_mask_type": attn_mask_type, "packed_seq_params": packed}  # as megatron's Attention calls it
    with torch.no_grad():
        if thd:  # TE THD layout: [t, heads, dim]
            a = core_attention(q[:, 0], k[:, 0], v[:, 0], None, **kw)
            b = core_attention(q[:, 0], k2[:, 0], v2[:, 0], None, **kw)
        else:
            a = core_attention(q, k, v, mask, **kw)
            b = core_attention(q, k2, v2, mask, **kw)
    return (a.reshape(s, -1)[100:].float() - b.reshape(s, -1)[100:].float()).abs().max().item()


def check_document_masking(chunks, document_masking: bool, thd: bool) -> float | None:
    """Startup check on this rank's first transformer layer: refuse a model whose attention lets a
    document see another one, unless model.document_masking=false asked for exactly that."""
    layers = [m for c in chunks for m in c.modules() if hasattr(m, "core_attention")]
    if not layers:
        return None
    attn = layers[0]
    param = next(attn.parameters())
    cfg = attn.config
    tp = cfg.tensor_model_parallel_size
    leak = leaks_across_documents(attn.core_attention, cfg.num_attention_heads // tp, cfg.num_query_groups // tp,
                                  cfg.kv_channels, param.device, param.dtype, thd, getattr(attn, "attn_mask_type", None))
    if document_masking and leak > 0:
        raise ConfigError(
            f"attention lets packed documents see each other ({type(attn.core_attention).__name__}, output change "
            f"{leak:.3g}); use model.attention_backend=auto/flex/sdpa, a Transformer Engine with THD support, or set "
            "model.document_masking=false to train that way on purpose")
    return leak
