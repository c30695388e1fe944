"""TrainConfig: the root of a training run's config, composed of the sections next to their code."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from glotta.config import StrictModel, load_config
from glotta.train.checkpoint import CheckpointConfig
from glotta.train.data import DataConfig
from glotta.train.faults import FaultConfig
from glotta.train.model import ModelConfig
from glotta.train.optim import OptimConfig
from glotta.train.parallel import ParallelConfig
from glotta.train.tracking import TrackingConfig


class TrainConfig(StrictModel):
    run_dir: str = "runs/train"
    # Name of this training stage (tag in MLflow; "stage1" before CAT pruning, "stage2" after).
    stage: str = "stage1"
    seed: int = 1234
    train_iters: int = 100
    micro_batch_size: int = 2
    # Sequences per optimizer step over all DP ranks: micro_batch_size x DP x micro-batches.
    global_batch_size: int = 8
    log_interval: int = 10
    eval_interval: int = 50
    eval_iters: int = 2
    # Also evaluate before the first step (the untrained model's validation loss).
    eval_at_start: bool = False
    # Stop after this many steps of this process (for tests and preemption drills); 0 = no limit.
    exit_after_iters: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    faults: FaultConfig = Field(default_factory=FaultConfig)

    @model_validator(mode="after")
    def _check(self):
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError("global_batch_size must be a multiple of micro_batch_size")
        if self.optim.warmup_iters >= self.train_iters:
            raise ValueError(f"optim.warmup_iters ({self.optim.warmup_iters}) must be < train_iters ({self.train_iters})")
        if self.optim.schedule == "wsd" and self.optim.warmup_iters + self.optim.wsd_decay_iters > self.train_iters:
            raise ValueError("optim.warmup_iters + optim.wsd_decay_iters must be <= train_iters")
        return self

    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir) if self.checkpoint.dir else Path(self.run_dir) / "checkpoints"

    def num_microbatches(self, dp: int) -> int:
        per_step = self.micro_batch_size * dp
        if self.global_batch_size % per_step:
            from glotta.errors import ConfigError

            raise ConfigError(
                f"global_batch_size={self.global_batch_size} is not a multiple of "
                f"micro_batch_size x data-parallel size = {self.micro_batch_size} x {dp}"
            )
        return self.global_batch_size // per_step


def load_train_config(path=None, overrides=None) -> TrainConfig:
    """YAML (optionally with a top-level `train:` section) + --set overrides -> TrainConfig."""
    from glotta.config import read_yaml

    section = None
    if path is not None and "train" in read_yaml(path):
        section = "train"
    return load_config(TrainConfig, path, overrides, section=section)
