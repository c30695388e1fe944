"""Document attention: every kernel equals a float64 reference (forward and gradients), GQA and MHA,
over many document layouts; the startup check refuses attention that crosses documents."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from glotta.errors import ConfigError
from glotta.train.attention import attend, check_document_masking, document_mask, leaks_across_documents
from glotta.train.step import attention_inputs, cu_seqlens_from_segments


def reference(q, k, v, seg, scale):
    """Textbook masked attention in float64: softmax over earlier tokens of the same document."""
    q, k, v = q.double(), k.double(), v.double()
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = q.shape[2]
    allowed = torch.ones(s, s, dtype=torch.bool, device=q.device).tril()
    if seg is not None:
        allowed = allowed & (seg[:, :, None] == seg[:, None, :])[:, None]
    scores = (q @ k.transpose(-1, -2)) * scale
    return torch.softmax(scores.masked_fill(~allowed, -math.inf), -1) @ v


def layouts(b: int, s: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Segment-id layouts: one document, one-token documents, random cuts, padding tail, long + short."""
    out = [torch.zeros(b, s, dtype=torch.int64), torch.arange(b * s).view(b, s)]
    for _ in range(4):
        cuts = torch.rand(b, s, generator=gen) < torch.rand(1, generator=gen).item() * 0.3
        out.append(cuts.cumsum(1) + 1000 * torch.arange(b)[:, None])
    tail = torch.zeros(b, s, dtype=torch.int64)
    tail[:, s - 5:] = torch.arange(1, 6)  # padding: every padding token its own segment
    out.append(tail)
    longshort = torch.zeros(b, s, dtype=torch.int64)
    longshort[:, 1:] = 1
    out.append(longshort)
    return out


@pytest.mark.parametrize("heads,groups", [(4, 4), (4, 2), (8, 1)])
def test_sdpa_kernel_equals_reference_forward_and_gradients(heads, groups):
    gen = torch.Generator().manual_seed(heads * 10 + groups)
    b, s, d = 2, 48, 16
    for seg in layouts(b, s, gen) + [None]:
        q = torch.randn(b, heads, s, d, generator=gen, requires_grad=True)
        k = torch.randn(b, groups, s, d, generator=gen, requires_grad=True)
        v = torch.randn(b, groups, s, d, generator=gen, requires_grad=True)
        out = attend(q, k, v, seg, 0.25, "sdpa")
        ref = reference(q, k, v, seg, 0.25)
        assert (out.double() - ref).abs().max() < 1e-5
        grad = torch.randn(out.shape, generator=gen)
        got = torch.autograd.grad(out, (q, k, v), grad)
        want = torch.autograd.grad(ref, (q, k, v), grad.double())
        for g, w in zip(got, want):
            assert (g.double() - w).abs().max() < 1e-5


@pytest.mark.parametrize("heads,groups", [(4, 4), (4, 2)])
def test_flex_kernel_equals_reference_forward(heads, groups):
    """flex_attention with the BlockMask (the CUDA kernel's mask) on CPU, forward only: torch 2.13
    has no flex backward on CPU; bench/gpu_check.sh runs forward and backward on CUDA."""
    gen = torch.Generator().manual_seed(7)
    b, s, d = 2, 160, 16  # > one 128-token block, not a multiple of it
    for seg in layouts(b, s, gen)[:5] + [None]:
        q = torch.randn(b, heads, s, d, generator=gen)
        k, v = torch.randn(b, groups, s, d, generator=gen), torch.randn(b, groups, s, d, generator=gen)
        out = attend(q, k, v, seg, 0.25, "flex")
        assert (out.double() - reference(q, k, v, seg, 0.25)).abs().max() < 1e-5


def test_dense_megatron_mask_and_segment_ids_agree():
    gen = torch.Generator().manual_seed(3)
    seg = torch.tensor([[0] * 5 + [1] * 7, [2] * 12])
    q, k, v = (torch.randn(2, 4, 12, 8, generator=gen) for _ in range(3))
    dense = document_mask(seg)  # True = masked out
    assert dense.shape == (2, 1, 12, 12) and not dense[0, 0, 6, 5] and dense[0, 0, 6, 4] and dense[0, 0, 4, 6]
    a, b = attend(q, k, v, seg, 0.3, "sdpa"), attend(q, k, v, dense, 0.3, "sdpa")
    assert torch.equal(a, b)


def test_thd_cu_seqlens_mark_documents_and_row_starts():
    # row 0: docs of 2 and 4 tokens; row 1 continues doc 1 (same id) then a new doc: the row start cuts it
    seg = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 2, 2, 2, 2]])
    cu, longest = cu_seqlens_from_segments(seg)
    assert cu.tolist() == [0, 2, 6, 8, 12] and cu.dtype == torch.int32 and longest == 4
    mask, packed = attention_inputs(seg, thd=True)
    assert mask is None and packed.qkv_format == "thd" and packed.cu_seqlens_kv.tolist() == cu.tolist()
    assert attention_inputs(seg, thd=False)[0] is seg and attention_inputs(None, thd=True) == (None, None)


class _Layer(torch.nn.Module):
    """What check_document_masking looks at: a layer with a config and a core attention."""

    def __init__(self, core):
        super().__init__()
        from types import SimpleNamespace

        self.core_attention = core
        self.proj = torch.nn.Linear(2, 2)
        self.config = SimpleNamespace(tensor_model_parallel_size=1, num_attention_heads=4, num_query_groups=2, kv_channels=8)


class _Core(torch.nn.Module):
    def __init__(self, documents: bool):
        super().__init__()
        self.documents = documents

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, packed_seq_params=None):
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        if self.documents:
            out = attend(q, k, v, attention_mask, 0.3, "sdpa")
        else:  # causal over the packed row: what TE's causal spec does without THD
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return out.permute(2, 0, 1, 3).flatten(2)


def test_startup_check_refuses_attention_across_documents():
    assert leaks_across_documents(_Core(True), 4, 2, 8, torch.device("cpu"), torch.float32, thd=False) == 0.0
    assert check_document_masking([_Layer(_Core(True))], document_masking=True, thd=False) == 0.0
    with pytest.raises(ConfigError, match="document_masking=false"):
        check_document_masking([_Layer(_Core(False))], document_masking=True, thd=False)
    # asked for explicitly: allowed, and the leak is reported
    assert check_document_masking([_Layer(_Core(False))], document_masking=False, thd=False) > 0
