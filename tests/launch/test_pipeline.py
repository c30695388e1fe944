"""`glotta pipeline run`: stages as processes, verified skips, --from/--until, failures, MLflow runs.

One pipeline run (module fixture) is shared; tests that change a run work on a copy of it.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow


def robots(base: Path) -> Path:
    """Captures for hosts of the small demo set: one full opt-out, one path-level opt-out."""
    d = base / "robots"
    (d / "appstream.l10n.example").mkdir(parents=True)
    (d / "appstream.l10n.example/2020-01-01.txt").write_text("User-agent: GPTBot\nDisallow: /\n")
    (d / "bash.l10n.example").mkdir()
    (d / "bash.l10n.example/2020-01-01.txt").write_text("User-agent: CCBot\nDisallow: /ja/\n")
    return d


def recipe(base: Path, run_dir: Path, **over) -> Path:
    cfg = {
        "run_dir": str(run_dir),
        "nproc": 1,
        "data": {"demo_corpus": {"langs": ["en", "de", "ja"], "max_docs_per_lang": 40, "shard_samples": 50}},
        "consent": {"robots": str(base / "robots"), "agents": "training", "as_of": "strictest"},
        "tokenizer": {"vocab_size": 1200, "alpha": 0.3, "sample_bytes": 200_000, "eval_langs": ["en", "de", "ja"]},
    }
    cfg.update(over)
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def glotta(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "glotta.launch.cli", *map(str, args)], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"glotta {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def stage_status(summary: dict) -> dict[str, str]:
    return {s["stage"]: s["status"] for s in summary["stages"]}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("pipeline")
    robots(base)
    path = recipe(base, base / "run")
    return base, path, json.loads(glotta("pipeline", "run", path, "--json").stdout)


def copy_run(first_run, tmp_path, **over) -> Path:
    base, _, _ = first_run
    shutil.copytree(base / "run", tmp_path / "run")
    return recipe(base, tmp_path / "run", **over)


def test_summary_numbers_are_sane(first_run):
    _, _, summary = first_run
    assert stage_status(summary) == {"import": "ran", "consent": "ran", "tokenizer": "ran"}
    rows = {r["lang"]: r for r in summary["corpus"]}
    assert set(rows) == {"en", "de", "ja"}
    for r in rows.values():
        assert 0 < r["consent docs"] <= r["import docs"] and 0 < r["consent tokens"] <= r["import tokens"]
    assert sum(r["consent docs"] for r in rows.values()) < sum(r["import docs"] for r in rows.values())
    prem = {r["lang"]: r["premium"] for r in summary["premiums"]}
    assert prem["en"] == pytest.approx(1.0) and all(0.2 < p < 5 for p in prem.values())


def test_mlflow_parent_and_child_runs(first_run):
    from mlflow.tracking import MlflowClient

    _, _, summary = first_run
    client = MlflowClient(summary["mlflow"]["tracking_uri"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.info.run_name == "pipeline"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert {c.data.tags["glotta.stage"] for c in children} == {"import", "consent", "tokenizer"}
    assert all(c.info.status == "FINISHED" for c in children)
    tok = next(c for c in children if c.data.tags["glotta.stage"] == "tokenizer")
    arts = [a.path for a in client.list_artifacts(tok.info.run_id, "tokenizer")]
    assert "tokenizer/premiums.png" in arts and "tokenizer/glotta.card.json" in arts


def test_rerun_skips_everything(first_run):
    _, path, _ = first_run
    again = json.loads(glotta("pipeline", "run", path, "--json").stdout)
    assert set(stage_status(again).values()) == {"skipped"}


def test_from_reruns_only_the_later_stages(first_run, tmp_path):
    path = copy_run(first_run, tmp_path)
    model = tmp_path / "run/tokenizer/glotta.model"
    before = model.stat().st_mtime_ns
    partial = json.loads(glotta("pipeline", "run", path, "--from", "tokenizer", "--json").stdout)
    assert stage_status(partial) == {"tokenizer": "ran"}
    assert model.stat().st_mtime_ns != before


def test_failed_stage_keeps_earlier_outputs_and_rerun_resumes(first_run, tmp_path):
    path = copy_run(first_run, tmp_path)
    bad = glotta("pipeline", "run", path, "--set", "tokenizer.vocab_size=900000", check=False)
    assert bad.returncode == 2 and "stage 'tokenizer' failed" in bad.stderr
    assert (tmp_path / "run/data/manifest.json").is_file() and (tmp_path / "run/consent/exclude.txt").is_file()
    good = json.loads(glotta("pipeline", "run", path, "--json").stdout)
    assert stage_status(good) == {"import": "skipped", "consent": "skipped", "tokenizer": "ran"}


def test_missing_file_fails_before_any_stage(tmp_path):
    path = recipe(tmp_path, tmp_path / "run", consent={"robots": str(tmp_path / "nope")})
    r = glotta("pipeline", "run", path, check=False)
    assert r.returncode == 2
    assert "consent.robots" in r.stderr and "nope" in r.stderr
    assert not (tmp_path / "run").exists()
