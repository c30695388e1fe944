"""Parallel setup in one place: the process group, the single initialize_model_parallel call, seeds.

Backend: nccl when CUDA is present, gloo otherwise (then glotta.train.cpu redirects megatron-core's
hard-coded CUDA allocations). Everything else asks the frozen `ParallelDims` returned here.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import torch
import torch.distributed as dist
from pydantic import model_validator

from glotta.config import StrictModel
from glotta.errors import ConfigError


class ParallelConfig(StrictModel):
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    # Interleaved 1F1B: model chunks per pipeline stage (None = plain 1F1B).
    virtual_pipeline: int | None = None
    sequence_parallel: bool = False
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    timeout_minutes: int = 10

    @model_validator(mode="after")
    def _check(self):
        for key in ("tensor_parallel", "pipeline_parallel"):
            if getattr(self, key) < 1:
                raise ValueError(f"parallel.{key} must be >= 1")
        if self.virtual_pipeline is not None and (self.virtual_pipeline < 2 or self.pipeline_parallel < 2):
            raise ValueError("parallel.virtual_pipeline needs parallel.pipeline_parallel >= 2 and a value >= 2")
        if self.sequence_parallel and self.tensor_parallel < 2:
            raise ValueError("parallel.sequence_parallel needs parallel.tensor_parallel >= 2")
        return self


@dataclass(frozen=True)
class ParallelDims:
    """What the rest of the trainer needs to know about the process layout."""

    world_size: int
    rank: int
    local_rank: int
    tp: int
    pp: int
    dp: int
    vpp: int | None
    tp_rank: int
    pp_rank: int
    dp_rank: int
    backend: str
    sequence_parallel: bool = False

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1

    @property
    def loads_data(self) -> bool:
        """TP rank 0 of every stage reads batches (all stages need the document mask); broadcast over TP."""
        return self.tp_rank == 0

    @property
    def is_logging_rank(self) -> bool:
        """The loss lives on the last pipeline stage: its first TP/DP rank logs."""
        return self.is_last_stage and self.tp_rank == 0 and self.dp_rank == 0


def _single_process_env() -> None:
    """Let `python -c` / notebooks use the trainer without torchrun: a one-process group."""
    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def _restart_store(world: int, timeout: timedelta):
    """After `torchrun --max-restarts` restarts the workers, the rendezvous store still holds the
    dead workers' gloo addresses under the same keys (torch 2.13), so the new workers would connect
    to them. Give each restart its own key prefix. None on the first attempt (the default path)."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if restart == "0":
        return None
    from torch.distributed.rendezvous import _create_c10d_store

    store = _create_c10d_store(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), int(os.environ["RANK"]), world, timeout)
    return dist.PrefixStore(f"glotta/restart_{restart}/", store)


def init_parallel(cfg: ParallelConfig | None = None, seed: int = 1234) -> ParallelDims:
    """Create the process group (if needed) and megatron's model-parallel groups; seed the RNGs."""
    from megatron.core import parallel_state as ps

    cfg = cfg or ParallelConfig()
    _single_process_env()
    world = int(os.environ["WORLD_SIZE"])
    model_parallel = cfg.tensor_parallel * cfg.pipeline_parallel
    if world % model_parallel:
        raise ConfigError(
            f"parallel: world size {world} is not divisible by tensor_parallel x pipeline_parallel = {model_parallel}"
        )
    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl" and not torch.cuda.is_available():
        raise ConfigError("parallel.backend=nccl needs CUDA; use gloo (or auto) on CPU")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    else:
        from glotta.train import cpu

        cpu.enable()
    if not dist.is_initialized():
        timeout = timedelta(minutes=cfg.timeout_minutes)
        store = _restart_store(world, timeout)
        if store is None:
            dist.init_process_group(backend=backend, timeout=timeout)
        else:
            dist.init_process_group(backend=backend, store=store, rank=int(os.environ["RANK"]), world_size=world, timeout=timeout)
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    ps.initialize_model_parallel(
        tensor_model_parallel_size=cfg.tensor_parallel,
        pipeline_model_parallel_size=cfg.pipeline_parallel,
        virtual_pipeline_model_parallel_size=cfg.virtual_pipeline,
        distributed_timeout_minutes=cfg.timeout_minutes,
        create_gloo_process_groups=backend == "gloo",
    )
    dims = ParallelDims(
        world_size=world,
        rank=dist.get_rank(),
        local_rank=local_rank,
        tp=cfg.tensor_parallel,
        pp=cfg.pipeline_parallel,
        dp=world // model_parallel,
        vpp=cfg.virtual_pipeline,
        tp_rank=ps.get_tensor_model_parallel_rank(),
        pp_rank=ps.get_pipeline_model_parallel_rank(),
        dp_rank=ps.get_data_parallel_rank(),
        backend=backend,
        sequence_parallel=cfg.sequence_parallel,
    )
    seed_everything(seed, dims)
    return dims


def seed_everything(seed: int, dims: ParallelDims) -> None:
    """Same seed on every rank, so CPU-initialised weights are identical across DP and TP ranks
    (megatron splits one master weight), which is what makes TP=1 and TP=2 start from the same model."""
    torch.manual_seed(seed)
    if dims.backend == "nccl":
        from megatron.core import tensor_parallel

        tensor_parallel.model_parallel_cuda_manual_seed(seed)


def destroy_parallel() -> None:
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
