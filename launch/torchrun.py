"""The torchrun command line for `glotta train` on N nodes x G processes (printed or executed).

One node: `torchrun --standalone --nproc-per-node G`. Several: c10d rendezvous on the first node
(`--rdzv-backend c10d --rdzv-endpoint HOST:PORT --rdzv-id JOB`), the same command on every node.
`--max-restarts` lets torchrun restart the workers after a failure; the trainer then resumes
from `latest` by itself.
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


def torchrun_command(cfg: LaunchConfig, train_args: list[str]) -> list[str]:
    """argv for torchrun running `glotta train <train_args>` in every worker."""
    cmd = ["torchrun"]
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
