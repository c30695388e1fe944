"""The torchrun command line for `glotta train` on N nodes x G processes (printed or executed).

One node: `torchrun --standalone --nproc-per-node G`. Several: c10d rendezvous on the first node
(`--rdzv-backend c10d --rdzv-endpoint HOST:PORT --rdzv-id JOB`), the same command on every node.
`--max-restarts` lets torchrun restart the workers after a failure; the trainer then resumes
from `latest` by itself.

The command runs under `env` with two variables set: CUDA_DEVICE_MAX_CONNECTIONS=1 (megatron's
tensor/sequence-parallel communication overlaps compute in issue order) and
TORCH_ELASTIC_SHUTDOWN_TIMEOUT (seconds torchrun waits after SIGTERM before SIGKILL; torchrun's 30 s
default is shorter than a checkpoint save, see `shutdown_timeout_for`).
"""
from __future__ import annotations

import shlex
import sys

from pydantic import Field

from glotta.config import StrictModel


class LaunchConfig(StrictModel):
    nnodes: int = Field(1, ge=1)
    nproc_per_node: int = Field(1, ge=1)
    rdzv_endpoint: str = "localhost:29500"
    rdzv_id: str = "glotta"
    max_restarts: int = Field(0, ge=0)
    # Seconds torchrun gives workers between SIGTERM and SIGKILL (None = sized for a checkpoint save).
    shutdown_timeout: int | None = Field(None, ge=1)


# Assumed checkpoint write bandwidth per node (parallel file system, conservative): bytes/s.
WRITE_BYTES_PER_S_PER_NODE = 1e9


def shutdown_timeout_for(params_total: int, half: bool, nnodes: int) -> int:
    """Seconds to let a stopping job finish its step and write a checkpoint: the checkpoint bytes
    (weights + fp32 optimizer state: 14 bytes/param in bf16, 12 in fp32) over nodes x 1 GB/s, twice,
    plus a minute for the step and the barriers; at least 120 s."""
    seconds = params_total * (14 if half else 12) / max(nnodes, 1) / WRITE_BYTES_PER_S_PER_NODE
    return int(max(120, 2 * seconds + 60))


def torchrun_command(cfg: LaunchConfig, train_args: list[str]) -> list[str]:
    """argv for torchrun running `glotta train <train_args>` in every worker."""
    timeout = cfg.shutdown_timeout or 120
    cmd = ["env", "CUDA_DEVICE_MAX_CONNECTIONS=1", f"TORCH_ELASTIC_SHUTDOWN_TIMEOUT={timeout}", "torchrun"]
    if cfg.nnodes == 1:
        cmd += ["--standalone"]
    else:
        cmd += ["--nnodes", str(cfg.nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", cfg.rdzv_endpoint,
                "--rdzv-id", cfg.rdzv_id]
    cmd += ["--nproc-per-node", str(cfg.nproc_per_node), "--max-restarts", str(cfg.max_restarts)]
    # Run the CLI module with the current interpreter's environment (works inside a venv).
    cmd += ["--no-python", sys.executable, "-m", "glotta.launch.cli", "train", *train_args]
    return cmd


def render(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)
