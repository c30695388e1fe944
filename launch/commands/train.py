"""`glotta train` (run inside torchrun) and `glotta launch train` (print or run the torchrun command)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Annotated, Optional

import typer

from glotta.launch.console import print_json, print_table
from glotta.launch.errors import guarded
from glotta.launch.options import ConfigOpt, JsonOpt, SetOpt, cli_overrides

launch_app = typer.Typer(no_args_is_help=True, help="Start jobs on N nodes x G processes (torchrun, Slurm).")

@guarded
def train(
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="Run directory (checkpoints, metrics, MLflow).")] = None,
    train_iters: Annotated[Optional[int], typer.Option("--iters", help="Optimizer steps to train.")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Train (or resume) a GPT with Megatron-core. Start it with torchrun, or plainly for one process."""
    from glotta.train import load_train_config
    from glotta.train import train as run

    cfg = load_train_config(config, cli_overrides(sets, run_dir=str(run_dir) if run_dir else None, train_iters=train_iters))
    _check_tokenizer(cfg.data.tokenizer)
    summary = run(cfg)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if json_out:
        print_json(summary)
    else:
        rows = [{"counter": k, "value": str(v).lower() if isinstance(v, bool) else v} for k, v in summary.items()]
        print_table("train", rows, ["counter", "value"])

def _check_tokenizer(path: str | None) -> None:
    """One clear error for a missing or non-SentencePiece tokenizer, before torch.distributed starts."""
    from glotta.data.tokenize import open_tokenizer
    from glotta.errors import ConfigError, DataError

    if not path:
        raise ConfigError("data.tokenizer: no SentencePiece model given (glotta tokenizer build writes one)")
    try:
        open_tokenizer(path)
    except DataError as e:
        raise ConfigError(f"data.tokenizer: {e}") from None


@launch_app.command("train")
@guarded
def launch_train(
    nnodes: Annotated[int, typer.Option(help="Number of nodes.")] = 1,
    nproc_per_node: Annotated[int, typer.Option("--nproc-per-node", help="Processes (GPUs) per node.")] = 1,
    rdzv_endpoint: Annotated[str, typer.Option(help="host:port of the c10d rendezvous (first node).")] = "localhost:29500",
    max_restarts: Annotated[int, typer.Option(help="torchrun restarts after a worker failure (resume from latest).")] = 0,
    execute: Annotated[bool, typer.Option("--run", help="Run the command instead of printing it.")] = False,
    slurm: Annotated[bool, typer.Option("--slurm", help="Print the path of the Slurm sbatch template instead.")] = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """Print (or --run) the torchrun command that starts `glotta train` on N nodes x G processes."""
    from glotta.launch.torchrun import LaunchConfig, render, torchrun_command

    if slurm:
        print(Path(__file__).resolve().parent.parent / "slurm.sbatch")
        return
    from glotta.errors import ConfigError
    from glotta.train import load_train_config

    cfg = load_train_config(config, sets)  # a bad config fails here, not on N nodes
    world, mp = nnodes * nproc_per_node, cfg.parallel.tensor_parallel * cfg.parallel.pipeline_parallel
    if world % mp:
        raise ConfigError(f"{nnodes} x {nproc_per_node} processes is not a multiple of tensor_parallel x pipeline_parallel = {mp}")
    cfg.num_microbatches(world // mp)
    args = (["--config", str(config)] if config else []) + [a for s in sets or [] for a in ("--set", s)]
    cmd = torchrun_command(
        LaunchConfig(nnodes=nnodes, nproc_per_node=nproc_per_node, rdzv_endpoint=rdzv_endpoint, max_restarts=max_restarts),
        args,
    )
    if not execute:
        print(render(cmd))
        return
    raise typer.Exit(subprocess.call(cmd))

