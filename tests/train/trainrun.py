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
