"""Model FLOPs per token and MFU (the formula docs/train.md writes out).

Per token and layer, forward, counting a multiply-add as 2 FLOPs (h hidden, s sequence, d head
dim, g K/V heads, f FFN size, m = 3 matrices for SwiGLU else 2, V padded vocabulary):
    QKV projection      2 h (h + 2 g d)
    attention           2 s h        (QK^T and AV are 4 s h; causal masking halves them)
    output projection   2 h h
    MLP                 2 m h f
and once per token the logits 2 h V. Training = 3 x forward (backward is twice the forward).
Activation recomputation is not counted (model FLOPs, not hardware FLOPs).
"""
from __future__ import annotations

import torch

H100_BF16_PEAK = 989e12  # dense BF16, H100 SXM and H200 (torchtitan's table, nvidia.com)


def flops_per_token(model_cfg, padded_vocab: int) -> float:
    h, s = model_cfg.hidden_size, model_cfg.seq_length
    d = h // model_cfg.num_attention_heads
    g = model_cfg.num_query_groups or model_cfg.num_attention_heads
    m = 3 if model_cfg.activation == "swiglu" else 2
    per_layer = 2 * h * (h + 2 * g * d) + 2 * s * h + 2 * h * h + 2 * m * h * model_cfg.ffn_size()
    return 3.0 * (model_cfg.num_layers * per_layer + 2 * h * padded_vocab)


def peak_flops() -> float | None:
    """Peak dense BF16 FLOP/s of this GPU when we know it (H100/H200 SXM), else None."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    if "H100" in name or "H200" in name:
        return 835e12 if "NVL" in name else (756e12 if "PCIe" in name else H100_BF16_PEAK)
    return None
