"""Which stage-1 checkpoints to score, and the proof that they belong together.

The trainer keeps the early checkpoints named by `checkpoint.keep_steps` in the stage-1 config
(steps, or fractions of `train_iters`; glotta.train.checkpoint never deletes them). `resolve`
accepts either the checkpoint directories themselves or one checkpoint root, whose kept steps
are read from its latest `meta.json`. Before any scoring it checks that every checkpoint comes from
the same run (run_dir, seed, model config, vocabulary) and the same tokenizer file (by sha256).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from glotta.data.manifest import sha256_file
from glotta.errors import ConfigError, DataError


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    meta: dict


@dataclass(frozen=True)
class CheckpointSet:
    checkpoints: list[Checkpoint]
    run_id: str
    tokenizer: Path
    tokenizer_sha256: str
    model: dict  # the run's model config section
    vocab_size: int
    mlflow_uri: str | None = None  # the stage-1 run's MLflow store, when it has one


    @property
    def steps(self) -> list[int]:
        return [c.step for c in self.checkpoints]


def _ckpt_api():
    from glotta.train import checkpoint as ckpt

    return ckpt


def expand(paths: list[Path]) -> list[Path]:
    """Checkpoint directories; a root (holding iter_* and `latest`) stands for its kept steps."""
    ckpt = _ckpt_api()
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if (p / ckpt.META).is_file():
            out.append(p)
            continue
        if not p.is_dir():
            raise ConfigError(f"checkpoints: not found: {p}")
        latest = ckpt.resolve(p)  # raises if p is neither a checkpoint nor a root
        cfg = ckpt.read_meta(latest).get("config", {})
        kept = sorted(ckpt.keep_steps(ckpt.CheckpointConfig(**cfg.get("checkpoint", {})), cfg.get("train_iters", 0)))
        if not kept:
            raise ConfigError(f"checkpoints: {p} is a checkpoint root but its run kept no early checkpoints "
                              "(set checkpoint.keep_steps in the stage-1 config, e.g. [0.1, 0.2, 0.3, 0.4])")
        missing = [s for s in kept if not ckpt.step_dir(p, s).is_dir()]
        if missing:
            raise DataError(f"{p}: kept steps {missing} are missing (the run stopped before them?)")
        out += [ckpt.step_dir(p, s) for s in kept]
    return out


def _run_identity(meta: dict) -> dict:
    cfg = meta.get("config", {})
    return {"run_dir": cfg.get("run_dir"), "seed": cfg.get("seed"), "model": cfg.get("model"),
            "vocab_size": meta.get("vocab_size")}


def resolve(paths: list[Path], tokenizer: Path | None = None) -> CheckpointSet:
    ckpt = _ckpt_api()
    dirs = expand(paths)
    if len(dirs) < 2:
        raise ConfigError(f"checkpoints: CAT needs at least 2 checkpoints across time, got {len(dirs)} "
                          f"({', '.join(map(str, dirs)) or 'none'})")
    cks = sorted((Checkpoint(d, int(m["step"]), m) for d in dirs for m in [ckpt.read_meta(d)]), key=lambda c: c.step)
    steps = [c.step for c in cks]
    if len(set(steps)) != len(steps):
        raise ConfigError(f"checkpoints: step given twice in {steps}")
    ident = _run_identity(cks[0].meta)
    for c in cks[1:]:
        other = _run_identity(c.meta)
        diff = [k for k in ident if ident[k] != other[k]]
        if diff:
            raise DataError(f"checkpoints from different runs: {c.path} and {cks[0].path} differ in {', '.join(diff)}")
    toks = {str(c.meta.get("config", {}).get("data", {}).get("tokenizer")) for c in cks}
    shas = {}
    for t in toks:
        if t != "None" and Path(t).is_file():
            shas[t] = sha256_file(t)
    if len(set(shas.values())) > 1:
        raise DataError(f"checkpoints trained with different tokenizers: {sorted(shas)}")
    if tokenizer is None:
        if len(toks) != 1 or not shas:
            raise ConfigError(f"tokenizer: the checkpoints name {sorted(toks)}; pass --tokenizer with the run's model")
        tokenizer = Path(next(iter(shas)))
    if not Path(tokenizer).is_file():
        raise ConfigError(f"tokenizer: file not found: {tokenizer}")
    sha = sha256_file(tokenizer)
    if shas and sha not in shas.values():
        raise DataError(f"tokenizer {tokenizer} (sha256 {sha[:12]}) is not the one the run trained with "
                        f"({next(iter(shas.values()))[:12]})")
    run_dir = Path(ident["run_dir"] or cks[0].path.parent)
    id_file = run_dir / "mlflow_run_id"  # glotta.train.tracking writes it when MLflow is on
    uri = None
    if id_file.is_file():
        run_id = id_file.read_text().strip()
        db = run_dir / "mlflow.db"  # the trainer's default store (tracking.uri may point elsewhere)
        uri = (cks[-1].meta.get("config", {}).get("tracking", {}).get("uri")) or (
            f"sqlite:///{db.resolve()}" if db.is_file() else None)
    else:
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]
        run_id = f"{run_dir.name}#{digest}"
    return CheckpointSet(cks, run_id, Path(tokenizer), sha, ident["model"] or {}, int(ident["vocab_size"]), uri)
