"""glotta.train: Megatron-core GPT training (TP/PP/DP under torchrun, CPU + gloo or GPU + nccl).

Entry points: `train(cfg)` runs a job (glotta train); `build_model`, `load_checkpoint`,
`save_checkpoint` and `load_model`/`token_losses` serve other stages (CAT scoring, tokenizer
adaptation). Imports are lazy so `import glotta.train` stays cheap.
"""
from __future__ import annotations

_EXPORTS = {
    "train": "glotta.train.loop",
    "TrainConfig": "glotta.train.config",
    "load_train_config": "glotta.train.config",
    "ModelConfig": "glotta.train.model",
    "build_model": "glotta.train.model",
    "padded_vocab_size": "glotta.train.model",
    "ParallelConfig": "glotta.train.parallel",
    "ParallelDims": "glotta.train.parallel",
    "init_parallel": "glotta.train.parallel",
    "destroy_parallel": "glotta.train.parallel",
    "save_checkpoint": "glotta.train.checkpoint",
    "load_checkpoint": "glotta.train.checkpoint",
    "read_meta": "glotta.train.checkpoint",
    "load_model": "glotta.train.inference",
    "token_losses": "glotta.train.inference",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'glotta.train' has no attribute {name!r}")
