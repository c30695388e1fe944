"""`glotta pipeline run`: every stage as its own process, skipped when its outputs verify.

A stage is a list of commands (the same `glotta ...` commands a user would type, under torchrun
where the stage is distributed) plus the outputs it leaves. After a stage succeeds the runner
writes `<run_dir>/.pipeline/<stage>.json` with a fingerprint of its commands and a record of its
outputs (shard sets by manifest sha256, files by size and sha256, folders by file sizes). A rerun
skips a stage whose fingerprint matches and whose outputs still verify, so a failed stage leaves
the earlier outputs intact and the rerun resumes there.

MLflow: one parent run for the pipeline and one child run per stage; a stage process inherits
MLFLOW_TRACKING_URI and MLFLOW_RUN_ID (its child run), so `mlflow.start_run()` inside the stage
logs into that child, and the runner attaches the stage's report files (JSON, PNG) afterwards.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.markup import escape

from glotta.data.manifest import MANIFEST, Manifest, atomic_write_text, sha256_file
from glotta.errors import ConfigError, GlottaError
from glotta.progress import console

REPORT_SUFFIXES = (".json", ".png", ".md", ".txt", ".yaml")


@dataclass
class Stage:
    name: str
    commands: list[list[str]]
    outputs: list[Path]
    reports: list[Path] = field(default_factory=list)  # files/folders whose reports go to MLflow
    stdout: dict[int, Path] = field(default_factory=dict)  # command index -> file keeping its stdout (--json)


class StageFailed(GlottaError):
    pass


def glotta_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "glotta.launch.cli", *map(str, args)]


def torchrun_cmd(nproc: int, *args: str) -> list[str]:
    """A single-node torchrun; multi-node launches are `glotta launch train` (docs/scale.md)."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        "-m", "glotta.launch.cli", *map(str, args),
    ]  # fmt: skip


# ---- output records (paths relative to the run directory, so a run can be moved) ------------
def record_outputs(run_dir: Path, paths: list[Path]) -> dict[str, dict]:
    rec = {}
    for p in paths:
        if not p.exists():
            raise StageFailed(f"expected output {p} is missing")
        key = os.path.relpath(p, run_dir)
        if p.is_dir() and (p / MANIFEST).is_file():
            rec[key] = {"manifest_sha256": sha256_file(p / MANIFEST)}
        elif p.is_dir():
            rec[key] = {"files": {str(f.relative_to(p)): f.stat().st_size for f in sorted(p.rglob("*")) if f.is_file()}}
        else:
            rec[key] = {"sha256": sha256_file(p)}
    return rec


def outputs_verify(run_dir: Path, rec: dict[str, dict]) -> list[str]:
    problems = []
    for rel, want in rec.items():
        p = run_dir / rel
        if not p.exists():
            problems.append(f"{p} is missing")
        elif "manifest_sha256" in want:
            if sha256_file(p / MANIFEST) != want["manifest_sha256"]:
                problems.append(f"{p}/{MANIFEST} changed")
            else:
                problems += Manifest.load(p).verify(p, check_hash=False)
        elif "files" in want:
            have = {str(f.relative_to(p)): f.stat().st_size for f in p.rglob("*") if f.is_file()}
            missing = [f for f, size in want["files"].items() if have.get(f) != size]
            if missing:
                problems.append(f"{p}: {len(missing)} file(s) missing or changed, e.g. {missing[0]}")
        elif sha256_file(p) != want["sha256"]:
            problems.append(f"{p} changed")
    return problems


def fingerprint(stage: Stage, run_dir: Path) -> str:
    """Hash of the stage's commands, independent of where the run directory and Python live."""
    text = json.dumps(stage.commands).replace(str(run_dir), "$RUN").replace(sys.executable, "python")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---- running -------------------------------------------------------------------------------
class Runner:
    def __init__(self, run_dir: Path, tracking_uri: str | None = None, dry_run: bool = False):
        self.run_dir = Path(run_dir)
        self.state_dir = self.run_dir / ".pipeline"
        self.logs = self.run_dir / "logs"
        self.tracking_uri = tracking_uri or f"sqlite:///{(self.run_dir / 'mlflow.db').resolve()}"
        self.dry_run = dry_run
        self.results: list[dict] = []
        self._client = None  # MlflowClient, with the parent run and experiment below
        self._parent_id = self._exp_id = ""

    def is_done(self, stage: Stage) -> bool:
        marker = self.state_dir / f"{stage.name}.json"
        if not marker.is_file():
            return False
        rec = json.loads(marker.read_text())
        if rec.get("fingerprint") != fingerprint(stage, self.run_dir):
            console.print(f"[yellow]{stage.name}: commands changed since the last run; running it again[/]")
            return False
        problems = outputs_verify(self.run_dir, rec["outputs"])
        for p in problems:
            console.print(f"[yellow]{stage.name}: {escape(p)}; running it again[/]")
        return not problems

    def run(self, stages: list[Stage], start: str | None = None, until: str | None = None) -> list[dict]:
        names = [s.name for s in stages]
        for opt, value in (("--from", start), ("--until", until)):
            if value is not None and value not in names:
                raise ConfigError(f"{opt} {value!r}: not a stage; stages are {', '.join(names)}")
        lo = names.index(start) if start else 0
        hi = names.index(until) + 1 if until else len(stages)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        if not self.dry_run:
            self._mlflow_parent()
        for i, stage in enumerate(stages):
            if not lo <= i < hi:
                continue
            forced = start is not None and i >= lo  # --from reruns the named stage and the ones after it
            if not forced and self.is_done(stage):
                console.print(f"[green]✓ {stage.name}[/] finished earlier, outputs verified: skipped")
                self.results.append({"stage": stage.name, "status": "skipped", "seconds": 0.0})
                continue
            self.results.append(self._run_stage(stage))
        if self._client is not None:
            self._client.set_terminated(self._parent_id, "FINISHED")
        return self.results

    def _run_stage(self, stage: Stage) -> dict:
        console.rule(f"[bold]{stage.name}")
        if self.dry_run:
            for cmd in stage.commands:
                console.print(" ".join(map(shlex.quote, cmd)), markup=False, highlight=False, soft_wrap=True)
            return {"stage": stage.name, "status": "dry-run", "seconds": 0.0}
        child_id = self._mlflow_child(stage)
        env = dict(os.environ, MLFLOW_TRACKING_URI=self.tracking_uri, GLOTTA_PIPELINE_STAGE=stage.name)
        if child_id:
            env["MLFLOW_RUN_ID"] = child_id
        (self.state_dir / f"{stage.name}.json").unlink(missing_ok=True)
        t0 = time.time()
        for n, cmd in enumerate(stage.commands):
            log_path = self.logs / f"{stage.name}-{n}.log"
            rc = _run_logged(cmd, env, log_path, stage.stdout.get(n))
            if rc != 0:
                if child_id:
                    self._client.set_terminated(child_id, "FAILED")
                    self._client.set_terminated(self._parent_id, "FAILED")
                raise StageFailed(
                    f"stage '{stage.name}' failed (exit {rc}) running: {' '.join(cmd)}\n"
                    f"log: {log_path}\nearlier stages' outputs are intact; rerun the same command to resume here"
                )
        seconds = time.time() - t0
        rec = {"fingerprint": fingerprint(stage, self.run_dir), "outputs": record_outputs(self.run_dir, stage.outputs), "seconds": seconds}
        atomic_write_text(self.state_dir / f"{stage.name}.json", json.dumps(rec, indent=1))
        if child_id:
            self._log_reports(child_id, stage, seconds)
        console.print(f"[green]✓ {stage.name}[/] in {seconds:.0f} s")
        return {"stage": stage.name, "status": "ran", "seconds": round(seconds, 1)}

    # ---- mlflow ----------------------------------------------------------------------------
    def _mlflow_parent(self) -> None:
        from mlflow.tracking import MlflowClient

        self._client = client = MlflowClient(tracking_uri=self.tracking_uri)
        name = f"glotta-pipeline-{self.run_dir.resolve().name}"
        exp = client.get_experiment_by_name(name)
        self._exp_id = exp.experiment_id if exp else client.create_experiment(
            name, artifact_location=(self.run_dir / "mlartifacts").resolve().as_uri()
        )
        tags = {"glotta.run_dir": str(self.run_dir.resolve())}
        self._parent_id = client.create_run(self._exp_id, run_name="pipeline", tags=tags).info.run_id

    def _mlflow_child(self, stage: Stage) -> str | None:
        if self._client is None:
            return None
        tags = {"mlflow.parentRunId": self._parent_id, "glotta.stage": stage.name}
        run_id = self._client.create_run(self._exp_id, run_name=stage.name, tags=tags).info.run_id
        for n, cmd in enumerate(stage.commands):
            self._client.log_param(run_id, f"command_{n}", " ".join(cmd)[:6000])
        return run_id

    def _log_reports(self, run_id: str, stage: Stage, seconds: float) -> None:
        client = self._client
        client.log_metric(run_id, "stage_seconds", seconds)
        for p in stage.reports:
            files = [p] if p.is_file() else sorted(f for f in p.glob("*") if f.is_file()) if p.is_dir() else []
            for f in files:
                if f.suffix in REPORT_SUFFIXES:
                    client.log_artifact(run_id, str(f), artifact_path=stage.name)
        for n in range(len(stage.commands)):
            log = self.logs / f"{stage.name}-{n}.log"
            if log.is_file():
                client.log_artifact(run_id, str(log), artifact_path=f"{stage.name}/logs")
        client.set_terminated(run_id, "FINISHED")


def _run_logged(cmd: list[str], env: dict, log_path: Path, stdout_path: Path | None = None) -> int:
    """Run `cmd` with its stderr shown live (progress bars) and kept in `log_path`.

    stdout goes to `stdout_path` when given (a command's --json result), else to the log too.
    """
    out = None
    if stdout_path is not None:
        stdout_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(stdout_path, "wb")
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd, env=env, stdout=out or subprocess.PIPE, stderr=subprocess.PIPE if out else subprocess.STDOUT
            )
            stream = proc.stderr if out else proc.stdout
            assert stream is not None
            for line in stream:
                log.write(line)
                sys.stderr.buffer.write(line)
                sys.stderr.flush()
            return proc.wait()
    finally:
        if out is not None:
            out.close()
