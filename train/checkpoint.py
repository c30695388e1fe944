"""Checkpoints: megatron dist_checkpointing (torch_dist) + small JSON/tensor side files.

Layout of one checkpoint (`<dir>/iter_0000100/`):
  torch_dist files   model (+ optimizer) sharded tensors: reshardable across TP/PP/DP on load
  meta.json          version, step, consumed samples/tokens, scheduler state, resolved config,
                     vocab size, languages (rank 0)
  loader/dp_NNNNN.json  loader state of each data-parallel rank (TP rank 0 of stage 0)
  rng/rank_NNNNN.pt  CPU (and CUDA) RNG state of each rank, loaded with weights_only=True

It is written under `iter_0000100.tmp`, renamed when every rank has finished, and `latest`
(a text file with the step) is replaced last, so a crash never leaves a half checkpoint that
looks complete. With `checkpoint.async_save` the sharded tensors are written by a forked process
(megatron's async torch_dist strategy, `AsyncCallsQueue`) while training goes on; each step polls
it (one all-reduce) and the rename + `latest` happen only once every rank's writer has finished.
At most one save is in flight: the next save, the end of training and a SIGTERM stop wait for it. Nothing is unpickled on load: torch.load runs with weights_only=True (torch's
default since 2.6, which dist_checkpointing's common-state load relies on) and the rest is JSON.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from glotta.config import StrictModel
from glotta.errors import GlottaError

log = logging.getLogger(__name__)

VERSION = 1
# Keys of the sharded state dict and the side files (constants so readers never guess).
MODEL = "model"
OPTIMIZER = "optimizer"
META = "meta.json"
LOADER_DIR = "loader"
RNG_DIR = "rng"
LATEST = "latest"


class CheckpointConfig(StrictModel):
    # false = never write checkpoints (benchmarks, throwaway runs); SIGTERM then just stops.
    enabled: bool = True
    # Where checkpoints go; None = <run_dir>/checkpoints.
    dir: str | None = None
    interval: int = 100
    keep_last: int = 2
    # Checkpoints across time (CAT): steps (ints, e.g. 500) or fractions of train_iters (floats
    # in (0, 1], e.g. 0.25 or 1.0). They are saved even off-interval and never deleted.
    keep_steps: list[int | float] = []
    # Resume from <dir>/latest when it exists (so re-running the command or a torchrun restart continues).
    resume: bool = True
    # Initialise from another checkpoint (any TP/PP layout) when there is nothing to resume.
    init_from: str | None = None
    # With init_from: load model weights only (new optimizer, scheduler and data order).
    init_weights_only: bool = True
    # Write in the background (megatron's async dist_checkpointing); `latest` moves when the write is complete.
    async_save: bool = False
    # MLflow: log a pointer (JSON naming the finished checkpoint's path, step, host) as an artifact.
    mlflow_pointer: bool = True


class CheckpointError(GlottaError):
    pass


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"iter_{step:07d}"


def latest_step(root: str | Path) -> int | None:
    p = Path(root) / LATEST
    if not p.is_file():
        return None
    step = int(p.read_text().strip())
    if not step_dir(root, step).is_dir():
        raise CheckpointError(f"{p} names step {step} but {step_dir(root, step)} does not exist")
    return step


def resolve(path: str | Path) -> Path:
    """A checkpoint directory, or a root with `latest` -> the checkpoint directory."""
    p = Path(path)
    if (p / META).is_file():
        return p
    step = latest_step(p)
    if step is None:
        raise CheckpointError(f"{p} is neither a checkpoint (no {META}) nor a checkpoint root (no {LATEST})")
    return step_dir(p, step)


def keep_steps(cfg: CheckpointConfig, train_iters: int) -> set[int]:
    return {max(1, int(round(s * train_iters))) if isinstance(s, float) and 0 < s <= 1 else int(s) for s in cfg.keep_steps}


def should_save(cfg: CheckpointConfig, step: int, train_iters: int) -> bool:
    if not cfg.enabled:
        return False
    return step % cfg.interval == 0 or step == train_iters or step in keep_steps(cfg, train_iters)


# --- state dicts ---------------------------------------------------------------------------------


def _unwrap(m):
    return getattr(m, "module", m)


def _model_keys(chunks) -> list[str]:
    return [MODEL] if len(chunks) == 1 else [f"{MODEL}{i}" for i in range(len(chunks))]


def sharded_state_dict(chunks, optimizer=None, is_loading: bool = False) -> dict:
    sd = {k: _unwrap(m).sharded_state_dict() for k, m in zip(_model_keys(chunks), chunks)}
    if optimizer is not None:
        sd[OPTIMIZER] = optimizer.sharded_state_dict(sd, is_loading=is_loading)
    return sd


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _to_json(obj: Any) -> Any:
    """Loader state may hold numpy values: keep them exact and typed in JSON."""
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {str(k): _to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_json(v) for v in obj]
    return obj


def _from_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
        return {k: _from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    return obj


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_to_json(obj), ensure_ascii=False, indent=1))
    os.replace(tmp, path)


# --- save / load ---------------------------------------------------------------------------------


def save_checkpoint(
    root: str | Path,
    step: int,
    chunks,
    optimizer,
    meta: dict,
    loader_state: dict | None,
    dims,
    keep: CheckpointConfig | None = None,
    train_iters: int | None = None,
) -> Path:
    """Collective: every rank calls it. Synchronous. Returns the final checkpoint directory."""
    saver = Checkpointer(root, keep or CheckpointConfig(keep_last=0), train_iters or step, dims, async_save=False)
    saver.keep_policy = keep is not None
    return saver.save(step, chunks, optimizer, meta, loader_state)


# Fault injection for drills and tests: seconds the background writer sleeps before writing.
WRITE_DELAY_ENV = "GLOTTA_FAULT_CKPT_WRITE_DELAY_S"


def _delayed(fn, seconds: float):
    def run(*args, **kwargs):
        import time

        time.sleep(seconds)
        return fn(*args, **kwargs)

    return run


class Checkpointer:
    """Saves checkpoints synchronously or in the background; `latest` moves only on completion.

    Collective: every rank calls `save`, `poll` (once per step) and `wait`. `on_saved(path, step)`
    runs, on the ranks given one, once a checkpoint is complete (e.g. the MLflow pointer)."""

    def __init__(self, root, cfg: CheckpointConfig, train_iters: int, dims, async_save: bool | None = None, on_saved=None):
        self.root, self.cfg, self.train_iters, self.dims = Path(root), cfg, train_iters, dims
        self.async_save = cfg.async_save if async_save is None else async_save
        self.on_saved, self.keep_policy = on_saved, True
        self.queue = None
        if self.async_save:
            from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

            self.queue = AsyncCallsQueue(persistent=False)
        if dims.rank == 0:  # writes a crashed attempt left behind (never named by `latest`)
            for stale in self.root.glob("iter_*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)

    @property
    def in_flight(self) -> bool:
        return self.queue is not None and self.queue.get_num_unfinalized_calls() > 0

    def save(self, step: int, chunks, optimizer, meta: dict, loader_state: dict | None) -> Path:
        from megatron.core import dist_checkpointing

        self.wait()  # one save in flight at most
        dims = self.dims
        final, tmp = step_dir(self.root, step), self.root / f"iter_{step:07d}.tmp"
        if dims.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        request = dist_checkpointing.save(sharded_state_dict(chunks, optimizer), str(tmp),
                                          async_sharded_save=self.async_save)
        # Small side files: written now (their values are this step's), published by the rename.
        torch.save(_rng_state(), _mkdirs(tmp / RNG_DIR) / f"rank_{dims.rank:05d}.pt")
        if dims.tp_rank == 0 and dims.pp_rank == 0 and loader_state is not None:
            _write_json(tmp / LOADER_DIR / f"dp_{dims.dp_rank:05d}.json", loader_state)
        if dims.rank == 0:
            _write_json(tmp / META, {"version": VERSION, "step": step, "world": _world(dims), **meta})
        if request is None:
            self._publish(step, tmp, final)
            return final
        delay = float(os.environ.get(WRITE_DELAY_ENV, "0") or 0)
        if delay > 0:
            request = request._replace(async_fn=_delayed(request.async_fn, delay))
        request.add_finalize_fn(lambda: self._publish(step, tmp, final))
        self.queue.schedule_async_request(request)
        return final

    def _publish(self, step: int, tmp: Path, final: Path) -> None:
        """Every rank's shards are on disk: rename, then move `latest` (rank 0)."""
        dist.barrier()
        if self.dims.rank == 0:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            latest_tmp = self.root / (LATEST + ".tmp")
            latest_tmp.write_text(f"{step}\n")
            os.replace(latest_tmp, self.root / LATEST)
            if self.keep_policy:
                prune(self.root, self.cfg, self.train_iters)
        dist.barrier()
        if self.on_saved is not None:  # the rank that has it (the MLflow pointer: the logging rank)
            self.on_saved(final, step)

    def poll(self) -> None:
        """Publish a background save that has finished on every rank (non-blocking, collective)."""
        if self.queue is not None and self.queue.get_num_unfinalized_calls():
            self.queue.maybe_finalize_async_calls(blocking=False)

    def wait(self) -> None:
        """Block until the in-flight save (if any) is written and published."""
        if self.queue is not None and self.queue.get_num_unfinalized_calls():
            self.queue.maybe_finalize_async_calls(blocking=True)

    def close(self) -> None:
        self.wait()
        if self.queue is not None:
            self.queue.close()


def _mkdirs(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _world(dims) -> dict:
    return {"world_size": dims.world_size, "tp": dims.tp, "pp": dims.pp, "dp": dims.dp}


def prune(root: str | Path, keep: CheckpointConfig, train_iters: int) -> list[int]:
    """Delete all but the last `keep_last` checkpoints and the `keep_steps` ones. Returns deleted steps."""
    root = Path(root)
    steps = sorted(int(p.name[5:]) for p in root.glob("iter_*") if p.is_dir() and p.name[5:].isdigit())
    protected = set(steps[-keep.keep_last :] if keep.keep_last > 0 else []) | keep_steps(keep, train_iters)
    removed = [s for s in steps if s not in protected]
    for s in removed:
        shutil.rmtree(step_dir(root, s), ignore_errors=True)
    return removed


def read_meta(path: str | Path) -> dict:
    ckpt = resolve(path)
    meta = json.loads((ckpt / META).read_text())
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{ckpt / META}: checkpoint version {meta.get('version')}, this glotta reads {VERSION}")
    return meta


def load_checkpoint(path: str | Path, chunks, optimizer=None, dims=None, strict: bool = True) -> dict:
    """Load model weights (and the optimizer when given) into this rank's chunks, resharding to the
    current TP/PP/DP layout. Collective. Returns meta.json plus `loader_state` for this DP rank
    (None if the checkpoint has none for it) and `rng_restored`."""
    from megatron.core import dist_checkpointing

    ckpt = resolve(path)
    meta = read_meta(ckpt)
    loaded = dist_checkpointing.load(sharded_state_dict(chunks, optimizer, is_loading=True), str(ckpt))
    for key, m in zip(_model_keys(chunks), chunks):
        _unwrap(m).load_state_dict(loaded[key], strict=strict)
    if optimizer is not None:
        optimizer.load_state_dict(loaded[OPTIMIZER])
    meta["loader_state"] = None
    meta["rng_restored"] = False
    if dims is not None:
        same_layout = meta["world"] == _world(dims)
        rng_file = ckpt / RNG_DIR / f"rank_{dims.rank:05d}.pt"
        if same_layout and rng_file.is_file():
            rng = torch.load(rng_file, weights_only=True)
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"])
            meta["rng_restored"] = True
        meta["loader_state"] = load_loader_states(ckpt)
    return meta


def load_loader_states(path: str | Path) -> list[dict]:
    """Loader states of all data-parallel ranks of the checkpoint, in DP-rank order."""
    files = sorted((Path(path) / LOADER_DIR).glob("dp_*.json"))
    return [_from_json(json.loads(f.read_text())) for f in files]
