"""`prune score` masks documents on every attention backend: packed scores = each document alone.

Transformer Engine's attention (the default on CUDA) ignores a dense/segment-id `attention_mask`
under its causal spec; documents are kept apart only by `PackedSeqParams` in the THD layout. TE does
not run on CPU, so `TEContract` below is a CPU core attention with TE's contract: the mask argument
is ignored (causal over the whole packed row), cu_seqlens in THD layout are honoured. Through it,
a scorer that hands the model a mask instead of the trainer's THD inputs lets documents see each
other, and the scores of packed documents change; through the trainer's layout they do not.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from glotta.errors import ConfigError
from glotta.pruning.cat.score import ScoreConfig, attention_layout, doc_nll_sums, pack, score_rows
from glotta.train.attention import DocumentAttention, attend, segment_ids_from_cu_seqlens

SEQ = 64
EOD, PAD = 2, 0
TOL = 1e-4  # nats on token-mean NLL in fp32 (the old mask-only call was off by up to 0.33 here)
TOL_BF16 = 0.05  # real Transformer Engine runs in bf16: other GEMM shapes round differently


def _has_te() -> bool:
    import importlib.util

    return torch.cuda.is_available() and importlib.util.find_spec("transformer_engine") is not None


class TEContract(DocumentAttention):
    """TE's DotProductAttention contract in the local spec: attention_mask ignored, THD cu_seqlens honoured."""

    kernel = "sdpa"

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if packed_seq_params is None:  # [s, b, heads, dim]: causal over the row, the mask is not looked at
            q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
            s, b = query.shape[:2]
            return attend(q, k, v, None, self.scale).permute(2, 0, 1, 3).reshape(s, b, -1)
        t = query.shape[0]  # THD: [tokens, heads, dim], documents from cu_seqlens
        seg = segment_ids_from_cu_seqlens(packed_seq_params.cu_seqlens_q.to(torch.int64), 1, t)
        q, k, v = (x.unsqueeze(0).permute(0, 2, 1, 3) for x in (query, key, value))
        return attend(q, k, v, seg, self.scale).permute(2, 0, 1, 3).reshape(t, -1)


@pytest.fixture
def parallel():
    from glotta.train.parallel import destroy_parallel, init_parallel

    dims = init_parallel(seed=0)
    yield dims
    destroy_parallel()
    torch.set_grad_enabled(True)


def _model(dims, monkeypatch, te: bool, real_te: bool = False):
    from megatron.core.models.gpt import gpt_layer_specs as specs

    import glotta.train.model as tm

    backend = {"attention_backend": "te"} if real_te else {"attention_backend": "sdpa", "precision": "fp32"}
    # a large init: attention changes the losses visibly
    cfg = tm.ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2, seq_length=SEQ,
                         make_vocab_size_divisible_by=64, init_method_std=0.2, **backend)
    if te and not real_te:
        def te_spec(cfg, dims):
            spec = specs.get_gpt_layer_local_spec(normalization=cfg.normalization)
            spec.submodules.self_attention.submodules.core_attention = TEContract
            return spec

        monkeypatch.setattr(tm, "layer_spec", te_spec)
    torch.manual_seed(0)
    model = tm.build_model(cfg, dims, 200)
    if te and not real_te:  # after the build: the model's fusions stay those of the local spec
        monkeypatch.setattr(tm, "use_te", lambda cfg, dims: True)
    for m in model:
        m.eval()
    return cfg, model


def _docs() -> list[list[int]]:
    rng = np.random.default_rng(0)
    return [rng.integers(3, 200, n).tolist() for n in (20, 35, 9, 90, 14, 3)]  # 90: two windows


def _scores(model, docs, thd: bool) -> tuple[np.ndarray, np.ndarray]:
    """(packed: token-mean NLL with documents sharing rows, alone: each document in its own pass)."""
    cfg = ScoreConfig(micro_batch_size=2, microbatches_per_call=2)
    dev = next(model[0].parameters()).device
    n_tok = np.array([len(d) + 1 for d in docs])
    rows = pack(docs, EOD, PAD, SEQ)
    assert (rows.doc_of[:, :, None] == np.arange(len(docs))).any(1).sum(1).max() >= 3  # rows really are shared
    packed = doc_nll_sums(rows, score_rows(model, rows, cfg, SEQ, dev, thd), len(docs)) / n_tok
    alone = np.array([doc_nll_sums(r, score_rows(model, r, cfg, SEQ, dev, thd), 1)[0]
                      for r in (pack([d], EOD, PAD, SEQ) for d in docs)]) / n_tok
    return packed, alone


@pytest.mark.parametrize("te,real_te", [
    (False, False), (True, False),
    pytest.param(True, True, marks=[pytest.mark.gpu, pytest.mark.skipif(not _has_te(), reason="needs CUDA + TE")]),
], ids=["sdpa", "te-contract", "transformer-engine"])
def test_packed_scores_equal_each_document_alone(parallel, monkeypatch, te, real_te):
    cfg, model = _model(parallel, monkeypatch, te, real_te)
    thd = attention_layout(cfg, parallel, model)  # the trainer's probe passes: documents are isolated
    assert thd is te
    docs = _docs()
    packed, alone = _scores(model, docs, thd)
    assert np.isfinite(packed).all() and np.abs(packed - alone).max() < (TOL_BF16 if real_te else TOL)
    # the scores do depend on the text: another document gets another score
    assert np.ptp(alone) > 1e-3


def test_te_without_the_trainer_layout_leaks_and_is_refused(parallel, monkeypatch):
    """The old scorer's call (segment ids as a mask, no THD) under TE's contract: neighbours change scores."""
    cfg, model = _model(parallel, monkeypatch, te=True)
    packed, alone = _scores(model, _docs(), thd=False)
    assert np.abs(packed - alone).max() > 1e-3
    # and the startup probe refuses such a model if the layout says "no THD"
    import glotta.train.model as tm

    monkeypatch.setattr(tm, "use_te", lambda cfg, dims: False)
    with pytest.raises(ConfigError, match="see each other"):
        attention_layout(cfg, parallel, model)
