"""MLflow for a pipeline run directory: one parent run, reused on every rerun, one child per stage run.

The parent's id is kept in `.pipeline/mlflow_parent`; it holds the recipe (params + YAML), the
resolved record of every stage (its commands, fingerprint, inputs: `.pipeline/<stage>.json`), the
final summary (JSON + text table) and the figures. A child run holds its stage's reports, PNGs and
logs; a stage process inherits MLFLOW_RUN_ID so the trainer and the other stages log into it.
Only one experiment is created: `glotta-pipeline-<run_dir name>`.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from glotta.launch.layout import RunLayout

log = logging.getLogger(__name__)
PARENT_FILE = "mlflow_parent"
ATTACH = (".json", ".png", ".md", ".txt", ".yaml", ".log")


class PipelineTracking:
    def __init__(self, uri: str, layout: RunLayout, recipe: dict):
        from mlflow.tracking import MlflowClient

        self.uri, self.layout = uri, layout
        self.client = client = MlflowClient(tracking_uri=uri)
        name = f"glotta-pipeline-{layout.root.resolve().name}"
        exp = client.get_experiment_by_name(name)
        self.exp_id = exp.experiment_id if exp else client.create_experiment(
            name, artifact_location=layout.mlartifacts.resolve().as_uri() if uri.startswith("sqlite:") else None
        )  # fmt: skip
        id_file = layout.state / PARENT_FILE
        self.parent = id_file.read_text().strip() if id_file.is_file() else ""
        if self.parent:
            try:
                client.get_run(self.parent)
                client.update_run(self.parent, status="RUNNING")
            except Exception:  # the store was replaced: start a new parent
                self.parent = ""
        if not self.parent:
            tags = {"glotta.run_dir": str(layout.root.resolve())}
            self.parent = client.create_run(self.exp_id, run_name="pipeline", tags=tags).info.run_id
            id_file.write_text(self.parent + "\n")
        self._log_recipe(recipe)

    def _log_recipe(self, recipe: dict) -> None:
        from mlflow.entities import Param

        from glotta.train.tracking import flatten

        have = self.client.get_run(self.parent).data.params
        params = [Param(k, v[:6000]) for k, v in sorted(flatten(recipe).items()) if k not in have]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.parent, params=params[i : i + 100])
        # a param cannot change once logged: the current recipe is the artifact, replaced on every run
        path = self.layout.state / "recipe.json"
        path.write_text(json.dumps(recipe, indent=1, default=str))
        self.client.log_artifact(self.parent, str(path))

    def child(self, stage) -> str:
        tags = {"mlflow.parentRunId": self.parent, "glotta.stage": stage.name}
        run_id = self.client.create_run(self.exp_id, run_name=stage.name, tags=tags).info.run_id
        for n, cmd in enumerate(stage.commands):
            self.client.log_param(run_id, f"command_{n}", " ".join(cmd)[:6000])
        return run_id

    def failed(self, run_id: str | None) -> None:
        if run_id:
            self.client.set_terminated(run_id, "FAILED")

    def finish_child(self, run_id: str | None, stage, seconds: float) -> None:
        if not run_id:
            return
        c = self.client
        c.log_metric(run_id, "stage_seconds", seconds)
        for p in stage.reports + [self.layout.report(n) for n in stage.report_names.values()]:
            files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else []
            for f in files:
                if f.suffix in ATTACH:
                    sub = f.parent.relative_to(p).as_posix() if p.is_dir() else ""
                    c.log_artifact(run_id, str(f), artifact_path=f"{stage.name}/{sub}".rstrip("/."))
        for n in range(len(stage.commands)):
            if self.layout.log(stage.name, n).is_file():
                c.log_artifact(run_id, str(self.layout.log(stage.name, n)), artifact_path=f"{stage.name}/logs")
        marker = self.layout.marker(stage.name)
        if marker.is_file():
            c.log_artifact(self.parent, str(marker), artifact_path="stages")
        c.set_terminated(run_id, "FINISHED")

    def summary(self, summary: dict, text: str, figures: list[Path]) -> None:
        """The final summary table (JSON + the printed text) and its figures, on the parent run."""
        s = self.layout.state
        (s / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        (s / "summary.txt").write_text(text)
        for f in (s / "summary.json", s / "summary.txt"):
            self.client.log_artifact(self.parent, str(f))
        for f in figures:
            if f.is_file():
                self.client.log_artifact(self.parent, str(f), artifact_path="figures")

    def close(self, failed: bool) -> None:
        try:
            self.client.set_terminated(self.parent, "FAILED" if failed else "FINISHED")
        except Exception as e:  # never hide the stage's own error behind a tracking one
            log.warning("mlflow: could not close the pipeline run: %s", e)
