"""`glotta train` (run inside torchrun) and `glotta launch train` (print or run the torchrun command)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Annotated, Optional

import typer

from glotta.launch.console import print_json, print_json_if, print_table
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
    if not print_json_if(json_out, summary):
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
    shutdown_timeout: Annotated[Optional[int], typer.Option(
        help="Seconds torchrun waits after SIGTERM before SIGKILL (default: sized for a checkpoint save).")] = None,
    execute: Annotated[bool, typer.Option("--run", help="Run the command instead of printing it.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the layout, parameter count and memory per GPU; start nothing.")] = False,
    vocab_size: Annotated[Optional[int], typer.Option(
        help="Vocabulary for --dry-run (default: the config's tokenizer, else 64000).")] = None,
    gpu_memory_gb: Annotated[float, typer.Option(help="GPU memory for the --dry-run fit check (GB).")] = 80.0,
    slurm: Annotated[bool, typer.Option("--slurm", help="Print the path of the Slurm sbatch template instead.")] = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Print (or --run) the torchrun command that starts `glotta train` on N nodes x G processes."""
    from glotta.launch.torchrun import LaunchConfig, render, shutdown_timeout_for, torchrun_command

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
    plan = _plan(cfg, nnodes, nproc_per_node, vocab_size, gpu_memory_gb)
    args = (["--config", str(config)] if config else []) + [a for s in sets or [] for a in ("--set", s)]
    timeout = shutdown_timeout or shutdown_timeout_for(plan["params_total"], plan["precision"] == "bf16", nnodes)
    cmd = torchrun_command(
        LaunchConfig(nnodes=nnodes, nproc_per_node=nproc_per_node, rdzv_endpoint=rdzv_endpoint, max_restarts=max_restarts,
                     shutdown_timeout=timeout),
        args,
    )
    plan.update(shutdown_timeout_s=timeout, command=render(cmd))
    if dry_run:
        if json_out:
            print_json(plan)
        else:
            print_table("launch train --dry-run", [{"item": k, "value": f"{v:,.1f}" if isinstance(v, float) else str(v)}
                                                   for k, v in plan.items()], ["item", "value"])
        if not plan["fits"]:
            raise ConfigError(f"estimated {plan['memory_total_gib']:.1f} GiB per GPU exceeds --gpu-memory-gb {gpu_memory_gb:g} "
                              "(GB); raise parallel.tensor_parallel / pipeline_parallel, use model.recompute=full or a "
                              "smaller micro_batch_size")
        return
    if not execute:
        print(render(cmd))
        return
    raise typer.Exit(subprocess.call(cmd))


def _plan(cfg, nnodes: int, nproc: int, vocab_size: int | None, gpu_memory_gb: float) -> dict:
    """What --dry-run prints: layout, parameters and the memory estimate of train/memory.py."""
    from glotta.train.memory import estimate
    from glotta.train.model import padded_vocab_size

    vocab_note = "--vocab-size"
    if vocab_size is None and cfg.data.tokenizer and Path(cfg.data.tokenizer).is_file():
        import sentencepiece as spm

        vocab_size, vocab_note = spm.SentencePieceProcessor(model_file=cfg.data.tokenizer).get_piece_size(), "tokenizer"
    if vocab_size is None:
        vocab_size, vocab_note = 64000, "assumed"
    p = cfg.parallel
    tp, pp, world = p.tensor_parallel, p.pipeline_parallel, nnodes * nproc
    dp = world // (tp * pp)
    vocab = padded_vocab_size(vocab_size, cfg.model.make_vocab_size_divisible_by, tp)
    mem = estimate(cfg, tp, pp, dp, vocab)
    gib = gpu_memory_gb * 1e9 / 1024**3
    return {
        "processes": f"{nnodes} x {nproc} = {world}", "tensor_parallel": tp, "pipeline_parallel": pp, "data_parallel": dp,
        "virtual_pipeline": p.virtual_pipeline or 1, "sequence_parallel": p.sequence_parallel,
        "micro_batch_size": cfg.micro_batch_size, "global_batch_size": cfg.global_batch_size,
        "micro_batches_per_step": cfg.num_microbatches(dp), "seq_length": cfg.model.seq_length,
        "vocab_padded": f"{vocab} ({vocab_note}: {vocab_size})",
        "precision": "fp32" if cfg.model.precision == "fp32" else "bf16", "recompute": cfg.model.recompute,
        "distributed_optimizer": cfg.optim.distributed_optimizer and dp > 1,
        "params_total": mem.params_total, "params_per_gpu": mem.params_per_gpu,
        "memory_weights_gib": mem.weights_gib, "memory_gradients_gib": mem.gradients_gib,
        "memory_optimizer_gib": mem.optimizer_gib, "memory_activations_gib": mem.activations_gib,
        "memory_logits_gib": mem.logits_gib, "memory_overhead_gib": mem.overhead_gib, "memory_total_gib": mem.total_gib,
        "gpu_memory_gib": gib, "fits": mem.total_gib <= gib,
    }
