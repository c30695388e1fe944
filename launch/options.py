"""Option aliases shared by every command (huggingface_hub's _cli_utils pattern)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional, TypeVar

import typer
from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file.")]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a config key: --set key=value (repeatable; dotted keys for sections)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Fail on the first bad input instead of counting and skipping it.")]
MlflowUriOpt = Annotated[Optional[str], typer.Option("--mlflow-uri", help="Log to this MLflow tracking URI.")]
MlflowRunOpt = Annotated[Optional[str], typer.Option("--mlflow-run", help="Log into this existing MLflow run.")]

# Options several commands spell the same way (same flag, same help).
OutDirOpt = Annotated[Optional[Path], typer.Option("--out", help="Output folder.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out.")]
RunTokenizerOpt = Annotated[Optional[Path], typer.Option("--tokenizer", help="SentencePiece model (default: the run's).")]
CheckpointArg = Annotated[Optional[Path], typer.Argument(help="Checkpoint directory, or a root with `latest`.")]
LangsOpt = Annotated[Optional[list[str]], typer.Option("--lang", help="Language to include (repeatable; default all).")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Sampling seed.")]
ContinueTpOpt = Annotated[Optional[int], typer.Option("--tp", help="Tensor-parallel size of the run that continues.")]


def command_config(model: type[M], config: Path | None, sets: list[str] | None, section: str | None, **given) -> M:
    """Every command's prologue: `--config FILE` (its `section`, or the whole file with None), then
    `--set key=value`, then the options typed on the command line (cli_overrides), validated as
    `model` (a bad key is one ConfigError naming it)."""
    from glotta.config import load_config

    return load_config(model, config, cli_overrides(sets, **given), section=section)


def cli_overrides(sets: list[str] | None, **given) -> list[str]:
    """Options typed on the command line become `key=value` overrides, applied after --set.
    None and an empty list (a repeatable option not given) leave the config's value alone; list
    items (paths) are written as YAML strings."""
    out = list(sets or [])
    for key, value in given.items():
        if value is None or (isinstance(value, (list, tuple)) and not value):
            continue
        if isinstance(value, (list, tuple)):
            value = "[" + ", ".join(_yaml_scalar(v) for v in value) + "]"
        else:
            value = _yaml_scalar(value)
        out.append(f"{key}={value}")
    return out


def _yaml_scalar(v) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return json.dumps(str(v), ensure_ascii=False)
