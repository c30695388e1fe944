"""glotta.train.cpu must keep megatron-core running on CPU. These tests fail loudly when a
megatron-core upgrade moves the CUDA allocations the redirection relies on.

They run in a subprocess: enabling the redirection patches megatron modules process-wide."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import megatron.core

from glotta.train import cpu
from trainrun import STEP_SCRIPT_HEAD

# Hard-coded CUDA allocations / asserts that break a CPU run.
CUDA_PATTERN = re.compile(r"device=['\"]cuda['\"]|torch\.cuda\.current_device\(\)|torch\.cuda\.synchronize\(\)|torch.cuda.FloatTensor")


def test_pinned_version():
    assert megatron.core.__version__.startswith(cpu.SUPPORTED_MEGATRON), (
        f"megatron-core {megatron.core.__version__}: re-check train/cpu.py PATCHED_MODULES, then bump SUPPORTED_MEGATRON"
    )


@pytest.mark.parametrize("name", cpu.PATCHED_MODULES)
def test_patched_modules_still_use_cuda_through_module_torch(name):
    """Each listed module must still reach CUDA via its module-global `torch` (what the proxy replaces)."""
    import importlib

    mod = importlib.import_module(name)
    src = Path(mod.__file__).read_text()
    assert re.search(r"^import torch$", src, re.M), f"{name} no longer does `import torch`"
    assert CUDA_PATTERN.search(src), f"{name} has no CUDA hard-code any more: drop it from PATCHED_MODULES"


def test_no_new_cuda_hardcodes_on_the_training_path():
    """Modules the CPU training path runs through must not gain a CUDA allocation outside the
    patched list (a new one would crash CPU training with 'Torch not compiled with CUDA')."""
    root = Path(megatron.core.__file__).parent
    path_modules = [
        "pipeline_parallel/schedules.py", "pipeline_parallel/p2p_communication.py", "distributed/finalize_model_grads.py",
        "distributed/distributed_data_parallel.py", "optimizer/__init__.py", "optimizer_param_scheduler.py",
        "models/gpt/gpt_model.py", "transformer/transformer_block.py", "transformer/attention.py",
        "tensor_parallel/cross_entropy.py", "dist_checkpointing/serialization.py", "transformer/transformer_layer.py",
        "models/common/language_module/language_module.py",
    ]
    patched = {n.replace("megatron.core.", "").replace(".", "/") + ".py" for n in cpu.PATCHED_MODULES}
    # CUDA lines of megatron-core 0.16.1 on branches the CPU trainer does not take: inference KV
    # cache and static batching, CUDA graphs, overlap_grad_reduce streams, param offloading.
    allowed = {"models/gpt/gpt_model.py": 1, "transformer/attention.py": 1, "distributed/distributed_data_parallel.py": 5,
               "transformer/transformer_layer.py": 2}
    for rel in path_modules:
        if rel in patched:
            continue
        hits = [line for line in (root / rel).read_text().splitlines() if CUDA_PATTERN.search(line)]
        assert len(hits) <= allowed.get(rel, 0), f"new CUDA hard-code in megatron/core/{rel}: {hits}"


SCRIPT = STEP_SCRIPT_HEAD + r"""
from glotta.train import cpu
dims = init_parallel(ParallelConfig(), seed=3)
assert cpu.enabled()
chunks = build_model(ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=16), dims, 100)
model, opt, sched = build_optimizer(chunks, OptimConfig(clip_grad=1e-3, warmup_iters=2), dims, 10, False)
sched.step(1)  # lr > 0 for the first update
before = [p.detach().clone() for p in chunks[0].parameters()]
out = get_forward_backward_func()(forward_step_func=partial(forward_step, (2, 16), dims.device, 1, None),
    data_iterator=batches(), model=model, num_microbatches=2, seq_length=16, micro_batch_size=2, forward_only=False)
ok, grad_norm, _ = opt.step()
after = list(chunks[0].parameters())
assert ok and grad_norm > 1e-2, grad_norm
# grads were clipped in place to a total norm of clip_grad=1e-3 before Adam used them
clipped = torch.stack([p.grad.norm() for p in after if p.grad is not None]).norm().item()
assert abs(clipped - 1e-3) < 1e-6, clipped
moved = max((a - b).abs().max().item() for a, b in zip(after, before))
assert moved > 0, "optimizer did not update"
print("OK", float(grad_norm), clipped)
destroy_parallel()
"""


def test_one_cpu_training_step_with_clipping():
    """A full megatron step on CPU: DDP grad buffers, per-token loss, grad-norm + clipping, Adam."""
    p = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=180)
    assert p.returncode == 0 and "OK" in p.stdout, p.stderr[-4000:]
