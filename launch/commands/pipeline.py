"""`glotta pipeline run` and `glotta demo`: the whole stack, stage by stage, resumable."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from glotta.errors import ConfigError
from glotta.launch.console import print_json_if
from glotta.launch.errors import guarded
from glotta.launch.options import JsonOpt, SetOpt

app = typer.Typer(no_args_is_help=True, help="Run the whole pipeline: import -> consent -> tokenizer -> stage 1 -> CAT -> stage 2.")

CONFIGS = Path(__file__).resolve().parents[2] / "configs"  # the repository's named recipes


def load_pipeline(path: Path, sets: list[str] | None):
    """The recipe, checked whole before any stage runs: keys, files, and every stage's set: list."""
    from glotta.launch.checks import load_recipe
    from glotta.launch.stages import PipelineConfig, build_stages

    cfg, origins = load_recipe(PipelineConfig, Path(path), sets)
    cfg = cfg.resolve_paths(Path(path).resolve().parent)
    cfg.check_files()
    return cfg, build_stages(cfg, origins)


def run_pipeline(path: Path, sets, start, until, dry_run, json_out) -> None:
    import logging

    from glotta.launch.pipeline import Runner
    from glotta.launch.summary import pipeline_summary, print_summary, summary_figures, summary_text

    cfg, stages = load_pipeline(path, sets)
    verbose = logging.getLogger().level == logging.DEBUG
    recipe = cfg.model_dump(mode="json")
    runner = Runner(cfg.run_dir, tracking_uri=cfg.tracking_uri, dry_run=dry_run, verbose=verbose, recipe=recipe)
    t0 = time.time()
    results = runner.run(stages, start=start, until=until)
    if dry_run:  # what would run, after every check passed
        if not print_json_if(json_out, {"dry_run": True, "stages": [r.to_json() for r in results]}):
            for r in results:
                print(f"{r.stage}: {r.status}")
        return
    summary = pipeline_summary(cfg, results, time.time() - t0, runner.tracking_uri)
    if runner.mlflow is not None:
        runner.mlflow.summary(summary, summary_text(summary), summary_figures(cfg))
    if not print_json_if(json_out, summary):
        print_summary(summary)


FromOpt = Annotated[Optional[str], typer.Option("--from", help="Start at this stage (it and the later ones run again).")]
UntilOpt = Annotated[Optional[str], typer.Option("--until", help="Stop after this stage.")]
DryOpt = Annotated[bool, typer.Option("--dry-run", help="Print the commands of each stage, run nothing.")]


@app.command("run")
@guarded
def run(
    config: Annotated[Path, typer.Argument(help="Pipeline recipe (YAML), e.g. configs/pipeline.yaml.")],
    sets: SetOpt = None,
    start: FromOpt = None,
    until: UntilOpt = None,
    dry_run: DryOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Run every stage as its own process; finished stages whose outputs verify are skipped."""
    run_pipeline(config, sets, start, until, dry_run, json_out)


@guarded
def demo(
    sets: SetOpt = None,
    start: FromOpt = None,
    until: UntilOpt = None,
    dry_run: DryOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """The whole pipeline on the embedded default: the demo corpus and a tiny GPT, on CPU (configs/demo.yaml)."""
    path = CONFIGS / "demo.yaml"
    if not path.is_file():
        raise ConfigError(f"{path} not found: `glotta demo` runs from a source checkout (pip install -e .)")
    run_pipeline(path, sets, start, until, dry_run, json_out)

