"""Activation recomputation on CPU (gloo): the same losses and gradients as without it. Sequence
parallelism needs Transformer Engine norms (GPU), so here only its refusal without TE is checked."""
from __future__ import annotations

import subprocess
import sys

import pytest
from trainrun import STEP_SCRIPT_HEAD

SCRIPT = STEP_SCRIPT_HEAD + r"""
results = {}
for mode in ("none", "full", "selective"):
    dims = init_parallel(ParallelConfig(), seed=3)
    chunks = build_model(ModelConfig(num_layers=3, hidden_size=32, num_attention_heads=4, num_query_groups=2, seq_length=16,
                                     recompute=mode), dims, 100)
    model, opt, sched = build_optimizer(chunks, OptimConfig(warmup_iters=2), dims, 10, False)
    out = get_forward_backward_func()(forward_step_func=partial(forward_step, (2, 16), dims.device, 1, None),
        data_iterator=batches(), model=model, num_microbatches=2, seq_length=16, micro_batch_size=2, forward_only=False)
    loss = sum(r["lm loss"][0] for r in out)
    grads = [p.main_grad.clone() for p in chunks[0].parameters()]
    results[mode] = (loss, grads)
    destroy_parallel()
ref_loss, ref_grads = results["none"]
assert ref_loss > 0 and max(g.abs().max().item() for g in ref_grads) > 0
for mode in ("full", "selective"):
    loss, grads = results[mode]
    assert torch.equal(loss, ref_loss), (mode, loss, ref_loss)
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads)), mode
print("OK", float(ref_loss))
"""


def test_full_and_selective_recomputation_keep_losses_and_gradients():
    """Recomputing every layer (full) or the core attention (selective) in backward changes memory,
    not maths: loss and every gradient equal the run without recomputation, bit for bit."""
    p = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "OK" in p.stdout, p.stderr[-4000:]


def test_sequence_parallel_without_transformer_engine_is_refused_before_work():
    """megatron's local spec uses torch norms, which cannot run sequence-parallel: the model
    provider says what to change instead of failing inside megatron on every rank."""
    from glotta.errors import ConfigError
    from glotta.train.model import ModelConfig, layer_spec
    from glotta.train.parallel import ParallelDims

    dims = ParallelDims(2, 0, 0, 2, 1, 1, None, 0, 0, 0, "gloo", sequence_parallel=True)
    with pytest.raises(ConfigError, match="sequence_parallel needs Transformer Engine"):
        layer_spec(ModelConfig(), dims)
