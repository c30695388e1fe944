"""MLflow tracking from one rank, in a background thread that never stalls a training step.

Default store: SQLite + local artifacts inside the run directory (`mlflow ui` command printed);
`tracking.uri` or MLFLOW_TRACKING_URI points at a server instead. Metrics are queued and sent in
batches (`log_batch`) by a daemon thread; if the server is unreachable the thread warns once per
outage, keeps the metrics (bounded buffer) and retries, and training goes on.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

from glotta.config import StrictModel

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id"
MAX_BUFFER = 200_000


class TrackingConfig(StrictModel):
    enabled: bool = True
    # None = $MLFLOW_TRACKING_URI, else sqlite:///<run_dir>/mlflow.db
    uri: str | None = None
    experiment: str = "glotta"
    run_name: str | None = None
    flush_interval_s: float = 2.0
    retry_interval_s: float = 5.0


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


def default_uri(run_dir: str | Path) -> str:
    return f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


class Tracker:
    """`log(step, metrics)` and `artifact(path)` return at once; `close()` flushes with a deadline."""

    def __init__(self, cfg: TrackingConfig, run_dir: str | Path, params: dict, tags: dict[str, str]):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.uri = cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri(run_dir)
        self.params, self.tags = flatten(params), tags
        self.queue: queue.Queue = queue.Queue()
        self.pending: list = []
        self.artifacts: list[str] = []
        self.run_id: str | None = None
        self.dropped = 0
        self._client = None
        self._down_since: float | None = None
        self._stop = threading.Event()
        # Fail fast on HTTP errors: the thread does its own retrying.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        self.thread = threading.Thread(target=self._run, name="glotta-mlflow", daemon=True)
        self.thread.start()

    # --- called from the training loop (cheap) ---
    def log(self, step: int, metrics: dict[str, float]) -> None:
        ts = int(time.time() * 1000)
        self.queue.put(("m", step, ts, {k: float(v) for k, v in metrics.items()}))

    def artifact(self, path: str | Path) -> None:
        self.queue.put(("a", str(path)))

    def ui_command(self) -> str:
        if self.uri.startswith("sqlite:"):
            return f"mlflow ui --backend-store-uri {self.uri}"
        return f"open {self.uri}"

    def close(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.thread.join(timeout)
        left = len(self.pending) + self.queue.qsize()
        if left or self.dropped:
            log.warning("mlflow: %d metric batches not delivered to %s (%d dropped)", left, self.uri, self.dropped)

    # --- background thread ---
    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()
            self._drain()
            if self.pending or self.artifacts or self.run_id is None:
                self._flush()
            if stopping and (not self.pending and not self.artifacts and self.queue.empty() or self._down_since):
                return
            self._stop.wait(self.cfg.retry_interval_s if self._down_since else self.cfg.flush_interval_s)

    def _drain(self) -> None:
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return
            if item[0] == "a":
                self.artifacts.append(item[1])
            else:
                self.pending.append(item[1:])
        if len(self.pending) > MAX_BUFFER:
            self.dropped += len(self.pending) - MAX_BUFFER
            self.pending = self.pending[-MAX_BUFFER:]

    def _flush(self) -> None:
        try:
            if self.run_id is None:
                self._start_run()
            from mlflow.entities import Metric

            while self.artifacts:  # small and few (config, tokenizer card): first
                self._client.log_artifact(self.run_id, self.artifacts[0])
                self.artifacts.pop(0)
            while self.pending:
                chunk, metrics = self.pending[:50], []
                for step, ts, values in chunk:
                    metrics += [Metric(k, v, ts, step) for k, v in values.items()]
                for i in range(0, len(metrics), 1000):  # mlflow's per-request limit
                    self._client.log_batch(self.run_id, metrics=metrics[i : i + 1000])
                del self.pending[: len(chunk)]
            if self._down_since is not None:
                log.warning("mlflow: %s reachable again after %.0f s", self.uri, time.time() - self._down_since)
                self._down_since = None
        except Exception as e:  # any transport/server error: keep the data, warn once, retry later
            if self._down_since is None:
                self._down_since = time.time()
                log.warning("mlflow: cannot log to %s (%s); training continues, retrying", self.uri, str(e)[:200])

    def _start_run(self) -> None:
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.uri)
        id_file = self.run_dir / RUN_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        if run_id:  # a resumed job continues its MLflow run
            try:
                client.get_run(run_id)
            except Exception:
                run_id = None
        if not run_id:
            # A pipeline (or the user) may hand us a run to log into, e.g. a stage's child run.
            given = os.environ.get("MLFLOW_RUN_ID")
            if given:
                run_id = given
                client.log_batch(run_id, tags=[RunTag(k, v) for k, v in self.tags.items()])
            else:  # the experiment only when a run of our own is created (no empty experiments)
                run_id = client.create_run(self._experiment(client), run_name=self.cfg.run_name, tags=self.tags).info.run_id
            params = [Param(k, v[:6000]) for k, v in sorted(self.params.items())]
            for i in range(0, len(params), 100):
                client.log_batch(run_id, params=params[i : i + 100])
            id_file.write_text(run_id + "\n")
        else:
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in self.tags.items()])
        self._client, self.run_id = client, run_id

    def _experiment(self, client) -> str:
        exp = client.get_experiment_by_name(self.cfg.experiment)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:"):
            location = (self.run_dir / "mlartifacts").resolve().as_uri()
        return client.create_experiment(self.cfg.experiment, artifact_location=location)


def finish(tracker: Tracker | None, status: str = "FINISHED") -> None:
    """Close the tracker and mark the run finished (best effort, never raises)."""
    if tracker is None:
        return
    tracker.close()
    if tracker.run_id and tracker._client is not None and not tracker._down_since:
        try:
            tracker._client.set_terminated(tracker.run_id, status)
        except Exception as e:
            log.warning("mlflow: could not mark run %s %s: %s", tracker.run_id, status, e)


def git_sha() -> str:
    """The commit of the glotta checkout (or 'unknown' outside git)."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
    except Exception:
        return "unknown"


def tags_for(stage: str, extra: dict[str, Any] | None = None) -> dict[str, str]:
    sha = git_sha()
    tags = {"glotta.stage": stage, "mlflow.source.git.commit": sha, "glotta.git_sha": sha}
    tags.update({k: str(v) for k, v in (extra or {}).items()})
    return tags
