"""MLflow logging for pruning runs: params, metrics and report files, only when asked for.

Logging is on when `enabled`, `tracking_uri` or `run_id` is set. Without a URI the store is
SQLite under the output folder (`<out>/mlflow.db`; MLflow 3 keeps its file store in maintenance
mode). With `run_id` the numbers go into that existing run (e.g. the stage-1 training run), keyed
under `prune.<method>.` so several selections can share it.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from glotta.config import StrictModel

log = logging.getLogger(__name__)


class MlflowConfig(StrictModel):
    enabled: bool = False
    tracking_uri: str | None = None
    experiment: str = "glotta-prune"
    run_id: str | None = None
    run_name: str | None = Field(None, description="name of a new run (default: the method)")

    @property
    def active(self) -> bool:
        return self.enabled or bool(self.tracking_uri) or bool(self.run_id)


def log_run(cfg: MlflowConfig, out_dir: Path, prefix: str, params: dict[str, Any], metrics: dict[str, float],
            artifacts: list[Path], run_name: str) -> dict[str, str]:
    """Log one stage result; returns {"tracking_uri", "run_id"}."""
    import mlflow

    uri = cfg.tracking_uri or f"sqlite:///{(out_dir / 'mlflow.db').resolve()}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    if cfg.run_id:
        run_id = cfg.run_id
        client.get_run(run_id)  # raises if the run does not exist in this store
    else:
        exp = client.get_experiment_by_name(cfg.experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(cfg.experiment)
        run_id = client.create_run(exp_id, run_name=cfg.run_name or run_name).info.run_id
    p = f"{prefix}." if cfg.run_id else ""
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(f"{p}{k}", float(v), now, 0) for k, v in metrics.items() if v is not None],
        params=[Param(f"{p}{k}", str(v)[:6000]) for k, v in params.items()],
    )
    for a in artifacts:
        if a.is_dir():
            client.log_artifacts(run_id, str(a), artifact_path=f"{prefix}/{a.name}" if cfg.run_id else a.name)
        elif a.is_file():
            client.log_artifact(run_id, str(a), artifact_path=prefix if cfg.run_id else None)
    if not cfg.run_id:
        client.set_terminated(run_id)
    log.info("logged %s to MLflow run %s at %s", prefix, run_id, uri)
    return {"tracking_uri": uri, "run_id": run_id}
