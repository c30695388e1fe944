"""Model pieces without torchrun: SDPA attention vs megatron's own, document masks, vocab padding,
FLOPs formula, checkpoint keep policy, and the `glotta launch train` command."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from glotta.train.attention import document_mask, segment_ids_from_cu_seqlens
from glotta.train.checkpoint import CheckpointConfig, keep_steps, prune, should_save, step_dir
from glotta.train.flops import flops_per_token
from glotta.train.model import ModelConfig, padded_vocab_size


def test_segment_ids_and_document_mask_from_cu_seqlens():
    # batch of 2 rows x 6 tokens: row 0 = docs of 2 and 4 tokens, row 1 = 5 tokens + 1 padding
    cu = torch.tensor([0, 2, 6, 11, 12], dtype=torch.int32)
    seg = segment_ids_from_cu_seqlens(cu, 2, 6)
    assert seg.tolist() == [[0, 0, 1, 1, 1, 1], [2, 2, 2, 2, 2, 3]]
    mask = document_mask(seg)  # True = masked
    assert mask.shape == (2, 1, 6, 6)
    allowed = ~mask[0, 0]
    assert allowed[3].tolist() == [False, False, True, True, False, False]  # own doc, causal
    assert allowed[1].tolist() == [True, True, False, False, False, False]


def test_padded_vocab_and_flops():
    assert padded_vocab_size(1500, 128, 1) == 1536
    assert padded_vocab_size(1500, 128, 2) == 1536
    assert padded_vocab_size(1537, 128, 2) == 1792
    cfg = ModelConfig(num_layers=24, hidden_size=2048, num_attention_heads=16, num_query_groups=8, seq_length=2048)
    # ~6 x (non-embedding params) + attention + logits; 1B-class model: 6N ~ 6 x 1.2e9 per token
    f = flops_per_token(cfg, 32768)
    n_layer = 24 * (2048 * (2048 + 2 * 8 * 128) + 2048 * 2048 + 3 * 2048 * cfg.ffn_size())
    assert 6 * n_layer < f < 6 * n_layer * 1.5


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="num_query_groups"):
        ModelConfig(num_attention_heads=4, num_query_groups=3)


def test_checkpoint_keep_policy(tmp_path):
    cfg = CheckpointConfig(interval=10, keep_last=2, keep_steps=[0.25, 35, 1.0])
    assert keep_steps(cfg, 100) == {25, 35, 100}
    assert should_save(cfg, 25, 100) and should_save(cfg, 30, 100) and not should_save(cfg, 31, 100)
    for s in (10, 20, 25, 30, 35, 40, 50):
        step_dir(tmp_path, s).mkdir()
    removed = prune(tmp_path, cfg, 100)
    assert removed == [10, 20, 30]
    assert sorted(int(p.name[5:]) for p in tmp_path.glob("iter_*")) == [25, 35, 40, 50]


ATTENTION = r"""
import torch
from glotta.train.parallel import init_parallel, destroy_parallel
from glotta.train.model import ModelConfig, transformer_config
from glotta.train.attention import attention_class, document_mask
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
dims = init_parallel(seed=0)
tc = transformer_config(ModelConfig(hidden_size=64, num_attention_heads=4, num_query_groups=2, seq_length=12), dims)
ours = attention_class("sdpa")(tc, 1, AttnMaskType.causal, "self")
ref = DotProductAttention(tc, 1, AttnMaskType.causal, "self")
# megatron's reference forks its CUDA RNG tracker for dropout (p=0 here): no CUDA RNG on CPU
import contextlib
from megatron.core import tensor_parallel
tensor_parallel.get_cuda_rng_tracker().fork = lambda *a, **k: contextlib.nullcontext()
s, b = 12, 2
q = torch.randn(s, b, 4, 16); k = torch.randn(s, b, 2, 16); v = torch.randn(s, b, 2, 16)
seg = torch.tensor([[0] * 5 + [1] * 7, [2] * 12])
mask = document_mask(seg)
a, r = ours(q, k, v, seg), ref(q, k, v, mask)
assert a.shape == r.shape == (s, b, 64), (a.shape, r.shape)
err = (a - r).abs().max().item()
assert err < 1e-5, err
# the mask matters: without it the first document's last tokens see the second one
assert (ours(q, k, v, None) - a).abs().max().item() > 1e-3
# the memory estimate's parameter count = the parameters megatron builds (untied, GQA, SwiGLU; tied)
from glotta.train.model import build_model, count_parameters
from glotta.train.memory import parameter_count
for tie in (False, True):
    mc = ModelConfig(num_layers=3, hidden_size=64, num_attention_heads=4, num_query_groups=2, seq_length=16, tie_embeddings=tie)
    built = count_parameters(build_model(mc, dims, 1000))
    assert built == parameter_count(mc, 1024), (tie, built, parameter_count(mc, 1024))
print("OK", err)
destroy_parallel()
"""


def test_document_attention_matches_megatron_dot_product_attention():
    """DocumentAttention given segment ids = megatron's DotProductAttention given the dense document
    mask (GQA) to 1e-5."""
    p = subprocess.run([sys.executable, "-c", ATTENTION], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "OK" in p.stdout, p.stderr[-3000:]


def test_launch_train_prints_torchrun_command(tmp_path):
    from glotta.launch.cli import app

    r = CliRunner().invoke(app, ["launch", "train", "--nnodes", "2", "--nproc-per-node", "8", "-c", "configs/gpt-1b.yaml",
                                 "--set", "parallel.tensor_parallel=2", "--rdzv-endpoint", "node0:29500"])
    assert r.exit_code == 0, r.output
    assert "--nnodes 2 --rdzv-backend c10d --rdzv-endpoint node0:29500" in r.output
    assert "--nproc-per-node 8" in r.output and "train --config configs/gpt-1b.yaml --set parallel.tensor_parallel=2" in r.output
    bad = CliRunner().invoke(app, ["launch", "train", "--nproc-per-node", "3", "-c", "configs/gpt-tiny.yaml",
                                   "--set", "parallel.tensor_parallel=2"])
    assert bad.exit_code == 2 and "not a multiple of tensor_parallel" in bad.output
    typo = CliRunner().invoke(app, ["train", "-c", "configs/gpt-tiny.yaml", "--set", "model.hiden_size=3"])
    assert typo.exit_code == 2 and "model.hiden_size" in typo.output


def test_launch_dry_run_checks_the_8b_layout():
    """gpt-8b on 8 x 80 GB: TP=2 + SP, DP=4, ~7.5e9 parameters with a 64k vocabulary, fits; the
    same model without tensor parallelism and with two sequences per micro-batch does not."""
    import json

    from glotta.launch.cli import app

    r = CliRunner().invoke(app, ["launch", "train", "-c", "configs/gpt-8b.yaml", "--nproc-per-node", "8", "--dry-run", "--json",
                                 "--vocab-size", "64000"])
    assert r.exit_code == 0, r.output
    plan = json.loads(r.output)
    assert (plan["tensor_parallel"], plan["data_parallel"], plan["sequence_parallel"]) == (2, 4, True)
    # Llama-3-8B has 8.03e9 with a 128,256 vocabulary; 64,000 rows fewer in two matrices of 4096 columns
    assert abs(plan["params_total"] - (8_030_261_248 - 2 * (128_256 - 64_000) * 4096)) < 1e6
    assert plan["fits"] and 30 < plan["memory_total_gib"] < 74.5
    assert "CUDA_DEVICE_MAX_CONNECTIONS=1" in plan["command"] and plan["shutdown_timeout_s"] >= 120
    bad = CliRunner().invoke(app, ["launch", "train", "-c", "configs/gpt-8b.yaml", "--nproc-per-node", "8", "--dry-run",
                                   "--set", "parallel.tensor_parallel=1", "--set", "parallel.sequence_parallel=false",
                                   "--set", "micro_batch_size=2"])
    assert bad.exit_code == 2 and "exceeds --gpu-memory-gb" in bad.output
