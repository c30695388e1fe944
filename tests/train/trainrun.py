"""Run `glotta train` under torchrun (gloo, CPU) from tests and read what the run wrote."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

# The tiny model every distributed test trains (2 layers, hidden 64, seq 64, GQA, RoPE, SwiGLU).
TINY = [
    "model.num_layers=2", "model.hidden_size=64", "model.num_attention_heads=4", "model.num_query_groups=2",
    "model.seq_length=64", "model.make_vocab_size_divisible_by=64", "micro_batch_size=2", "global_batch_size=8",
    "optim.lr=3e-3", "optim.warmup_iters=4", "log_interval=1", "eval_interval=0",
]

# For scripts run with `python -c`: the imports of a hand-driven Megatron step on CPU and `batches()`,
# an endless stream of seeded random micro-batches (2 x 16 tokens, vocabulary 100, one language).
STEP_SCRIPT_HEAD = r"""
import torch
from functools import partial
from glotta.train.parallel import init_parallel, destroy_parallel, ParallelConfig
from glotta.train.model import ModelConfig, build_model
from glotta.train.optim import OptimConfig, build_optimizer
from glotta.train.step import forward_step
from megatron.core.pipeline_parallel import get_forward_backward_func

def batches():
    g = torch.Generator().manual_seed(0)
    while True:
        t = torch.randint(0, 100, (2, 17), generator=g)
        yield dict(tokens=t[:, :-1], labels=t[:, 1:], loss_mask=torch.ones(2, 16), position_ids=torch.arange(16).repeat(2, 1),
                   cu_seqlens=torch.tensor([0, 10, 16, 32], dtype=torch.int32), lang_ids=torch.zeros(2, 16, dtype=torch.long))
"""


def torchrun_cmd(nproc: int, sets: list[str], max_restarts: int = 0) -> list[str]:
    # c10d rendezvous on a free local port (--standalone): a restarted round gets fresh store keys.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "--max-restarts", str(max_restarts),
           "--monitor-interval", "0.5", "--module", "glotta.launch.cli", "train", "--json"]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def env(**extra) -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", MLFLOW_TRACKING_URI="")
    e.pop("RANK", None)
    e.update(extra)
    return e


def run_train(nproc: int, sets: list[str], timeout: float = 240, **env_extra) -> subprocess.CompletedProcess:
    p = subprocess.run(torchrun_cmd(nproc, sets), env=env(**env_extra), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-6000:]
    return p


def metrics(run_dir: Path) -> list[dict]:
    f = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.is_file() else []


def losses(run_dir: Path) -> dict[int, list[float]]:
    """step -> every loss logged for it (a restarted job logs the replayed steps again)."""
    out: dict[int, list[float]] = {}
    for m in metrics(run_dir):
        if "loss" in m:
            out.setdefault(m["step"], []).append(m["loss"])
    return out


def wait_for(pred, timeout: float, proc: subprocess.Popen | None = None, what: str = "condition"):
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = pred()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}:\n{out[-2000:]}\n{err[-4000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def copy_checkpoint(src_root: Path, step: int, dst_root: Path) -> None:
    """A run directory whose `latest` is `step` of another run (to resume it in another layout)."""
    dst_root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src_root / f"iter_{step:07d}", dst_root / f"iter_{step:07d}")
    (dst_root / "latest").write_text(f"{step}\n")
