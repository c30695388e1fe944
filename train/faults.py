"""Fault handling in the loop: non-finite loss or gradients, poisoned batches, run-directory lock,
parent (torchrun agent) death.

- Non-finite loss (after the step's all-reduce, so every rank decides alike) or gradient norm
  (megatron's norm over all model-parallel and data-parallel shards): `faults.on_nonfinite=skip`
  drops the update and counts it (`skipped_nonfinite`); `stop` raises `TrainingFault` naming the
  step and the global samples of its batch, and records the step in `<run_dir>/faults.jsonl`.
  More than `faults.max_consecutive_skips` skips in a row stop the run too: skipping does not
  rescue a diverged model.
- Skipping data (Megatron's `--iterations-to-skip`): the steps in `faults.skip_steps`, and with
  `faults.skip_recorded` the steps a previous attempt stopped on, read their batches and drop them
  without a forward pass, so `torchrun --max-restarts` does not replay a poisoned batch forever.
- `RunLock`: one job per run directory (flock on `<run_dir>/.lock`, held by global rank 0; the OS
  releases it when the process dies, also on SIGKILL).
- `ParentWatch`: under torchrun, a worker whose agent disappears (SIGKILL, OOM killer) raises
  SIGTERM on itself, so the step finishes and a checkpoint is written, and exits hard after
  `grace_s` if that does not complete (a peer may be gone too).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Literal

from glotta.config import StrictModel
from glotta.errors import GlottaError

FAULTS_FILE = "faults.jsonl"
# Fault injection for drills and tests (like Megatron's --error-injection-*): "loss@3,grad@6" puts a
# NaN into rank 0's loss contribution at step 3 and into one of rank 0's gradients at step 6;
# "spike@5" makes step 5's reduced loss ten times larger on every rank (a loss spike for the guard).
INJECT_ENV = "GLOTTA_FAULT_INJECT"
LOCK_FILE = ".lock"


class FaultConfig(StrictModel):
    # Non-finite (NaN/Inf) loss or gradient norm: skip the update (counted) or stop naming step and data.
    on_nonfinite: Literal["skip", "stop"] = "stop"
    # Stop anyway after this many non-finite or spike skips in a row.
    max_consecutive_skips: int = 10
    # Steps whose batches are read and dropped without a forward pass (Megatron's --iterations-to-skip).
    skip_steps: list[int] = []
    # On restart, also drop the batches of the steps a previous attempt stopped on (faults.jsonl).
    skip_recorded: bool = True
    # Under torchrun: exit (after a checkpoint when possible) when the agent process dies.
    exit_on_parent_death: bool = True
    # Seconds a worker whose agent died may spend saving before it exits hard.
    parent_death_grace_s: float = 300.0


class TrainingFault(GlottaError):
    pass


def record(run_dir: Path, entry: dict) -> None:
    """Append one fault to <run_dir>/faults.jsonl (rank 0)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / FAULTS_FILE, "a") as f:
        f.write(json.dumps({"time": time.time(), **entry}) + "\n")


def recorded_stops(run_dir: Path) -> set[int]:
    f = Path(run_dir) / FAULTS_FILE
    if not f.is_file():
        return set()
    return {e["step"] for e in map(json.loads, f.read_text().splitlines()) if e.get("action") == "stop"}


def steps_to_skip(cfg: FaultConfig, run_dir: Path) -> set[int]:
    return set(cfg.skip_steps) | (recorded_stops(run_dir) if cfg.skip_recorded else set())


def finite(x: float) -> bool:
    return x == x and x not in (float("inf"), float("-inf"))


class FaultGuard:
    """Decides what a non-finite value does; counts skips. All ranks see the same values."""

    def __init__(self, cfg: FaultConfig, run_dir: Path, is_rank0: bool):
        self.cfg, self.run_dir, self.is_rank0 = cfg, Path(run_dir), is_rank0
        self.consecutive = 0

    def nonfinite(self, what: str, value: float, step: int, samples: tuple[int, int]) -> None:
        """Called when `what` (loss / grad_norm) is not finite: returns to skip, raises to stop."""
        where = f"step {step} (global samples {samples[0]}..{samples[1] - 1})"
        action = self.cfg.on_nonfinite
        if action == "skip" and self.consecutive + 1 > self.cfg.max_consecutive_skips:
            action = "stop"
        if self.is_rank0:
            record(self.run_dir, {"step": step, "what": what, "value": str(value), "samples": list(samples), "action": action})
        if action == "stop":
            raise TrainingFault(
                f"{where}: {what} is {value}; stopped (faults.on_nonfinite={self.cfg.on_nonfinite}). "
                f"A restart skips this batch (faults.skip_recorded), or pass --set faults.skip_steps=[{step}]")
        self.skipped()

    def skipped(self) -> None:
        self.consecutive += 1
        if self.consecutive > self.cfg.max_consecutive_skips:
            raise TrainingFault(f"{self.consecutive} steps skipped in a row (faults.max_consecutive_skips="
                                f"{self.cfg.max_consecutive_skips}); the run has diverged")

    def applied(self) -> None:
        self.consecutive = 0


def injections() -> dict[str, set[int]]:
    out: dict[str, set[int]] = {"loss": set(), "grad": set(), "spike": set()}
    for item in filter(None, os.environ.get(INJECT_ENV, "").split(",")):
        what, _, step = item.partition("@")
        if what not in out or not step.isdigit():
            raise GlottaError(f"{INJECT_ENV}: {item!r} is not loss@STEP, grad@STEP or spike@STEP")
        out[what].add(int(step))
    return out


def poison_gradient(model) -> None:
    """A NaN in this rank's first gradient (after the data-parallel reduction)."""
    p = next(p for m in model for p in m.parameters() if p.requires_grad)
    getattr(p, "main_grad", p.grad).view(-1)[0] = float("nan")


def drop_batches(train_iter, num_microbatches: int) -> None:
    """Read and discard one step's micro-batches from every model chunk's iterator."""
    iters = train_iter if isinstance(train_iter, list) else [train_iter]
    for it in iters:
        if it is None:
            continue
        for _ in range(num_microbatches):
            next(it)


# --- one job per run directory -------------------------------------------------------------------


class RunLock:
    """Exclusive flock on <run_dir>/.lock; the file names the holder for the error message."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise GlottaError(f"{self.path.parent} is in use by another training job ({holder}); "
                              "stop it or choose another run_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


# --- parent death --------------------------------------------------------------------------------


class ParentWatch:
    """Polls the parent pid; when the torchrun agent is gone, SIGTERM to self, then a hard exit."""

    def __init__(self, grace_s: float, interval_s: float = 1.0):
        self.ppid, self.grace_s, self.interval_s = os.getppid(), grace_s, interval_s
        self.thread = threading.Thread(target=self._run, name="glotta-parent-watch", daemon=True)

    @staticmethod
    def wanted(cfg: FaultConfig) -> bool:
        return cfg.exit_on_parent_death and "TORCHELASTIC_RESTART_COUNT" in os.environ

    def start(self) -> "ParentWatch":
        self.thread.start()
        return self

    def _run(self) -> None:
        while os.getppid() == self.ppid:
            time.sleep(self.interval_s)
        print(f"glotta train: torchrun agent (pid {self.ppid}) is gone; pid {os.getpid()} saves and exits", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(self.grace_s)
        print(f"glotta train: pid {os.getpid()} did not finish within {self.grace_s:.0f} s after the agent died; exiting",
              flush=True)
        os._exit(1)
