"""The pipeline's run directory, defined once: every stage and the summary take their paths here.

    run_dir/
      data/                      import: shard set + manifest.json
      consent/ shards/ exclude.txt summary.json consent.png store/
      holdout/ valid/ train.exclude.txt
      base/                      tokenizer.base_model only: the imported HF model (glotta checkpoint)
      tokenizer/ glotta.model glotta.card.json parallel.jsonl premiums.png
      adapt/                     tokenizer.base_model only: the base resized to the extended vocabulary
      stage1/ stage2/            checkpoints/ metrics.jsonl config.json
      cat-score/                 <shard>.parquet score.json (prune score; .parts/ while running)
      cat/ exclude.txt report.json report/*.png
      reports/<stage>[-<step>].json   one JSON document per stage command (--json result)
      logs/<stage>-<n>.log            full output of each command
      .pipeline/<stage>.json          fingerprint, inputs and outputs of the stage's last run
      previous/<UTC time>/<stage>/    outputs a rerun replaced (kept, never read again)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from glotta.data.holdout import EXCLUDE as HOLDOUT_EXCLUDE


@dataclass(frozen=True)
class RunLayout:
    root: Path

    # ---- stage folders ------------------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        """The folder a stage owns: moved aside whole when the stage reruns into fresh outputs."""
        return self.root / {"import": "data"}.get(stage, stage)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def consent(self) -> Path:
        return self.root / "consent"

    @property
    def consent_shards(self) -> Path:
        return self.consent / "shards"

    @property
    def consent_exclude(self) -> Path:
        return self.consent / "exclude.txt"

    @property
    def holdout(self) -> Path:
        return self.root / "holdout"

    @property
    def holdout_valid(self) -> Path:
        return self.holdout / "valid"

    @property
    def holdout_exclude(self) -> Path:
        return self.holdout / HOLDOUT_EXCLUDE

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def tokenizer_model(self) -> Path:
        return self.tokenizer / "glotta.model"

    @property
    def parallel(self) -> Path:
        return self.tokenizer / "parallel.jsonl"

    @property
    def base(self) -> Path:
        """`tokenizer.base_model`: the imported checkpoint root (with tokenizer.model, train.yaml)."""
        return self.root / "base"

    @property
    def adapted(self) -> Path:
        """`tokenizer.base_model`: the base checkpoint resized to the extended tokenizer."""
        return self.root / "adapt"

    def checkpoints(self, stage: str) -> Path:
        return self.root / stage / "checkpoints"

    def metrics(self, stage: str) -> Path:
        return self.root / stage / "metrics.jsonl"

    @property
    def cat(self) -> Path:
        return self.root / "cat"

    @property
    def cat_scores(self) -> Path:
        """The cat-score stage's folder: scoring is its own stage (selection reruns alone on a new keep)."""
        return self.root / "cat-score"

    @property
    def cat_exclude(self) -> Path:
        return self.cat / "exclude.txt"

    @property
    def cat_report(self) -> Path:
        return self.cat / "report.json"

    # ---- the runner's own files ------------------------------------------------------------------
    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def report(self, name: str) -> Path:
        return self.reports / f"{name}.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def log(self, stage: str, n: int) -> Path:
        return self.logs / f"{stage}-{n}.log"

    @property
    def state(self) -> Path:
        return self.root / ".pipeline"

    def marker(self, stage: str) -> Path:
        return self.state / f"{stage}.json"

    @property
    def previous(self) -> Path:
        return self.root / "previous"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlartifacts(self) -> Path:
        return self.root / "mlartifacts"

    def training_shards(self, consent: bool) -> Path:
        """The shard set every stage after consent reads (consent rewrites the kept documents)."""
        return self.consent_shards if consent else self.data
