"""`glotta pipeline run`: every stage as its own process, content-addressed.

A stage is a list of commands (the `glotta ...` commands a user would type, under torchrun where
the stage is distributed), the inputs it reads and the outputs it leaves. Its fingerprint is its
commands plus the content digests of its inputs (launch/fingerprint.py), so any upstream change
(an exclude list, the tokenizer, a checkpoint, a corpus file) reruns exactly the stages below it.

`<run_dir>/.pipeline/<stage>.json` records, before the first command, {status: running,
fingerprint}, and after the last {status: done, fingerprint, inputs, outputs}. On a rerun:
- done, same fingerprint, outputs verify            -> skipped;
- running (it crashed), same fingerprint            -> resumed in place (import and training
  continue where they stopped);
- otherwise, or when `--from` names it or an earlier stage -> its folder is moved to
  `previous/<UTC time>/` and it runs into fresh outputs, so a training stage never resumes a
  finished run and an import never meets shards of another configuration.
Stages outside --from/--until whose recorded fingerprint no longer matches are reported `stale`,
and the summary leaves their figures out.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.markup import escape

from glotta.data.manifest import MANIFEST, Manifest, atomic_write_text, sha256_file
from glotta.errors import ConfigError, GlottaError
from glotta.launch.fingerprint import fingerprint, input_digests
from glotta.launch.layout import RunLayout
from glotta.launch.stream import NOISE, OURS, run_command
from glotta.progress import PROGRESS_ENV, console


@dataclass
class Stage:
    name: str
    commands: list[list[str]]
    outputs: list[Path]
    inputs: list[str | Path] = field(default_factory=list)  # files, folders or globs whose content it reads
    reports: list[Path] = field(default_factory=list)  # files/folders attached to the stage's MLflow run
    report_names: dict[int, str] = field(default_factory=dict)  # command index -> reports/<name>.json
    total_steps: int | None = None  # training stages: steps, for the progress bar's ETA
    # A check of the stage's outputs that later stages rely on (e.g. the corpus has the languages
    # the recipe names), run when it ran, was skipped or is current; a ConfigError stops the pipeline
    # before the next stage spends time.
    check: Callable[[], None] | None = None


@dataclass
class StageResult:
    stage: str
    status: str  # ran | resumed | skipped | stale | not run | dry-run: would run ...
    seconds: float = 0.0
    fingerprint: str = ""
    hidden_lines: int = 0

    def to_json(self) -> dict:
        return {"stage": self.stage, "status": self.status, "seconds": round(self.seconds, 1)}


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


# ---- running -------------------------------------------------------------------------------
class Runner:
    def __init__(self, run_dir: Path, tracking_uri: str | None = None, dry_run: bool = False, verbose: bool = False,
                 recipe: dict | None = None):
        self.layout = RunLayout(Path(run_dir))
        self.run_dir = self.layout.root
        self.tracking_uri = tracking_uri or f"sqlite:///{self.layout.mlflow_db.resolve()}"
        self.dry_run, self.verbose = dry_run, verbose
        self.results: list[StageResult] = []
        self.stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.mlflow = None
        self.recipe = recipe or {}

    def marker(self, stage: Stage) -> dict | None:
        p = self.layout.marker(stage.name)
        return json.loads(p.read_text()) if p.is_file() else None

    def fingerprint(self, stage: Stage) -> tuple[str, dict[str, str]]:
        digests = input_digests(stage.inputs, self.run_dir)
        return fingerprint(stage.commands, digests, self.run_dir), digests

    def decide(self, stage: Stage, forced: bool) -> tuple[str, str, dict]:
        """(action, fingerprint, digests): action is skip | resume | fresh, with the reason printed."""
        fp, digests = self.fingerprint(stage)
        rec = self.marker(stage)
        if forced:
            return "fresh", fp, digests
        if rec is None:
            return "fresh", fp, digests
        if rec.get("fingerprint") != fp:
            changed = [k for k, v in digests.items() if rec.get("inputs", {}).get(k) != v]
            why = f"inputs changed: {', '.join(changed[:4])}" if changed and rec.get("inputs") else "commands changed"
            console.print(f"[yellow]{stage.name}: {escape(why)}; running it again into fresh outputs[/]", soft_wrap=True)
            return "fresh", fp, digests
        if rec.get("status") == "running":
            return "resume", fp, digests
        problems = outputs_verify(self.run_dir, rec["outputs"])
        for p in problems:
            console.print(f"[yellow]{stage.name}: {escape(p)}; running it again into fresh outputs[/]", soft_wrap=True)
        return ("fresh" if problems else "skip"), fp, digests

    def run(self, stages: list[Stage], start: str | None = None, until: str | None = None) -> list[StageResult]:
        names = [s.name for s in stages]
        for opt, value in (("--from", start), ("--until", until)):
            if value is not None and value not in names:
                raise ConfigError(f"{opt} {value!r}: not a stage; stages are {', '.join(names)}")
        lo = names.index(start) if start else 0
        hi = names.index(until) + 1 if until else len(stages)
        if not self.dry_run:
            for d in (self.layout.state, self.layout.logs, self.layout.reports):
                d.mkdir(parents=True, exist_ok=True)
            from glotta.launch.mlflow_runs import PipelineTracking

            self.mlflow = PipelineTracking(self.tracking_uri, self.layout, self.recipe)
        upstream_changed = False
        try:
            for i, stage in enumerate(stages):
                if not lo <= i < hi:
                    res = self._outside(stage, upstream_changed)
                    if res.status == "stale" and i < lo:
                        console.print(f"[yellow]{stage.name} is stale (its commands or inputs changed) and --from "
                                      f"{start} does not rerun it; later stages read its old outputs[/]", soft_wrap=True)
                    self.results.append(res)
                    self._check(stage, res.status == "current" and i < lo)
                    continue
                action, fp, digests = self.decide(stage, forced=start is not None)
                if action == "skip" and self.dry_run and upstream_changed:
                    self.results.append(StageResult(stage.name, "dry-run: runs again if its inputs change"))
                    continue
                if action == "skip":
                    console.print(f"[green]✓ {stage.name}[/] inputs unchanged, outputs verified: skipped")
                    self.results.append(StageResult(stage.name, "skipped", fingerprint=fp))
                    self._check(stage, not self.dry_run)
                    continue
                upstream_changed = True
                self.results.append(self._run_stage(stage, action, fp, digests))
                self._check(stage, not self.dry_run)
        finally:
            if self.mlflow is not None:
                self.mlflow.close(failed=any(r.status == "failed" for r in self.results))
        return self.results

    def _check(self, stage: Stage, outputs_there: bool) -> None:
        if stage.check is not None and outputs_there:
            stage.check()

    def _outside(self, stage: Stage, upstream_changed: bool) -> StageResult:
        """A stage before --from or after --until: current, stale (its inputs moved on) or not run."""
        rec = self.marker(stage)
        if rec is None or rec.get("status") != "done":
            return StageResult(stage.name, "not run")
        fp, _ = self.fingerprint(stage)
        stale = rec.get("fingerprint") != fp or (upstream_changed and self.dry_run)
        return StageResult(stage.name, "stale" if stale else "current", fingerprint=rec["fingerprint"])

    def _run_stage(self, stage: Stage, action: str, fp: str, digests: dict) -> StageResult:
        console.rule(f"[bold]{stage.name}")
        if self.dry_run:
            console.print(f"would {'resume' if action == 'resume' else 'run'} {stage.name}", highlight=False)
            for cmd in stage.commands:
                console.print(" ".join(map(shlex.quote, cmd)), markup=False, highlight=False, soft_wrap=True)
            return StageResult(stage.name, f"dry-run: would {'resume' if action == 'resume' else 'run'}")
        if action == "fresh":
            self._move_aside(stage)
        atomic_write_text(self.layout.marker(stage.name), json.dumps({"status": "running", "fingerprint": fp}))
        child = self.mlflow.child(stage) if self.mlflow else None
        env = dict(os.environ, MLFLOW_TRACKING_URI=self.tracking_uri, GLOTTA_PIPELINE_STAGE=stage.name)
        env[PROGRESS_ENV] = "lines"
        env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's own default; setting it silences its banner
        if self.verbose:
            env["GLOTTA_VERBOSE"] = "1"
        if child:
            env["MLFLOW_RUN_ID"] = child
        t0, hidden = time.time(), 0
        for n, cmd in enumerate(stage.commands):
            log_path = self.layout.log(stage.name, n)
            res = run_command(cmd, env, log_path, stage.name, stage.total_steps, self.verbose)
            hidden += res.hidden
            if n in stage.report_names:
                self._write_report(stage.report_names[n], res.documents)
            if res.rc != 0:
                if self.mlflow:
                    self.mlflow.failed(child)
                self.results.append(StageResult(stage.name, "failed", time.time() - t0, fp))
                raise StageFailed(
                    f"stage '{stage.name}' failed (exit {res.rc}) running: {' '.join(cmd)}\n{_tail(log_path)}"
                    f"full log: {log_path}\nearlier stages' outputs are intact; rerun the same command to resume here"
                )
        seconds = time.time() - t0
        rec = {"status": "done", "fingerprint": fp, "inputs": digests,
               "outputs": record_outputs(self.run_dir, stage.outputs), "seconds": seconds,
               "commands": [" ".join(map(shlex.quote, c)) for c in stage.commands],
               "reports": sorted(stage.report_names.values())}  # fmt: skip
        atomic_write_text(self.layout.marker(stage.name), json.dumps(rec, indent=1))
        if self.mlflow:
            self.mlflow.finish_child(child, stage, seconds)
        note = f" ({hidden} library warning lines in the log; -v shows them)" if hidden else ""
        console.print(f"[green]✓ {stage.name}[/] in {seconds:.0f} s{note}", highlight=False)
        return StageResult(stage.name, "resumed" if action == "resume" else "ran", seconds, fp, hidden)

    def _write_report(self, name: str, documents: list) -> None:
        """One valid JSON document per stage command: a rank-0-only result as is, several ranks as a list."""
        if not documents:
            return
        doc = documents[0] if len(documents) == 1 else {"ranks": documents}
        atomic_write_text(self.layout.report(name), json.dumps(doc, indent=1, ensure_ascii=False, default=str) + "\n")

    def _move_aside(self, stage: Stage) -> None:
        """The stage's previous outputs (folder, reports, marker) -> previous/<UTC time>/, kept for the user."""
        dest = self.layout.previous / self.stamp
        src = self.layout.stage_dir(stage.name)
        moved = []
        if src.exists() and any(src.iterdir()):
            n = 2
            while (dest / src.name).exists():  # two reruns within one second
                dest, n = self.layout.previous / f"{self.stamp}-{n}", n + 1
            dest.mkdir(parents=True, exist_ok=True)
            src.rename(dest / src.name)
            moved.append(src.name)
        old = (self.marker(stage) or {}).get("reports", [])  # a command the stage no longer runs left one too
        for n in sorted(set(stage.report_names.values()) | set(old)):
            rep = self.layout.report(n)
            if rep.is_file():
                (dest / "reports").mkdir(parents=True, exist_ok=True)
                rep.rename(dest / "reports" / rep.name)
        self.layout.marker(stage.name).unlink(missing_ok=True)
        if moved:
            console.print(f"{stage.name}: previous outputs moved to {dest / moved[0]}", highlight=False, soft_wrap=True)


def _tail(log_path: Path, n: int = 12) -> str:
    """The last lines of a failed command's log that are not library noise (the error itself)."""
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    useful = [ln for ln in lines if ln.strip() and (not NOISE.search(ln) or OURS.match(ln))][-n:]
    return "".join(f"  | {ln}\n" for ln in useful)
