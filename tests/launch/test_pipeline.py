"""`glotta pipeline run`: stages as processes, verified skips, --from/--until, failures, MLflow runs.

One pipeline run (module fixture) is shared; tests that change a run work on a copy of it.
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
REPO = Path(__file__).resolve().parents[2]
TRAIN = ["train_iters=12", "eval_interval=12", "eval_iters=4", "checkpoint.interval=1000", "log_interval=4"]
STAGES = ["import", "consent", "holdout", "tokenizer", "stage1", "cat", "stage2"]


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
        "holdout": {"fraction": 0.2, "max_docs_per_lang": 8},
        "stage1": {"config": str(REPO / "configs/gpt-tiny.yaml"), "set": TRAIN + ["eval_at_start=true", "checkpoint.keep_steps=[4, 8, 12]"]},
        "cat": {"method": "cat", "keep": 0.5},
        "stage2": {"config": str(REPO / "configs/gpt-tiny.yaml"), "set": TRAIN},
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
    assert stage_status(summary) == {name: "ran" for name in STAGES}
    rows = {r["lang"]: r for r in summary["corpus"]}
    assert set(rows) == {"en", "de", "ja"}
    for r in rows.values():
        assert 0 < r["consent docs"] <= r["import docs"] and 0 < r["consent tokens"] <= r["import tokens"]
        assert 0 < r["train docs"] < r["consent docs"]  # the held-out documents are not trained on
        assert 0.3 < r["cat tokens"] / r["train tokens"] < 0.7  # CAT keeps ~50% of each language's tokens
    assert sum(r["consent docs"] for r in rows.values()) < sum(r["import docs"] for r in rows.values())
    prem = {r["lang"]: r["premium"] for r in summary["premiums"]}
    assert prem["en"] == pytest.approx(1.0) and all(0.2 < p < 5 for p in prem.values())
    val = {r["lang"]: r for r in summary["validation"]}
    for stage in ("untrained", "stage1", "stage2"):
        assert all(math.isfinite(v) for v in (r[f"{stage} val loss"] for r in val.values()) if v is not None)
    assert val["all"]["stage1 val loss"] < val["all"]["untrained val loss"]
    assert val["all"]["stage2 val loss"] < val["all"]["untrained val loss"]


def test_mlflow_parent_and_child_runs(first_run):
    from mlflow.tracking import MlflowClient

    _, _, summary = first_run
    client = MlflowClient(summary["mlflow"]["tracking_uri"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.info.run_name == "pipeline"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert {c.data.tags["glotta.stage"] for c in children} == set(STAGES)
    assert all(c.info.status == "FINISHED" for c in children)
    tok = next(c for c in children if c.data.tags["glotta.stage"] == "tokenizer")
    arts = [a.path for a in client.list_artifacts(tok.info.run_id, "tokenizer")]
    assert "tokenizer/premiums.png" in arts and "tokenizer/glotta.card.json" in arts
    stage1 = next(c for c in children if c.data.tags["glotta.stage"] == "stage1")
    history = client.get_metric_history(stage1.info.run_id, "loss")
    assert len(history) >= 3 and stage1.data.params["model.num_layers"] == "2"  # the trainer logged into its child


def test_rerun_skips_everything(first_run):
    _, path, _ = first_run
    again = json.loads(glotta("pipeline", "run", path, "--json").stdout)
    assert set(stage_status(again).values()) == {"skipped"}


def test_from_cat_reruns_only_the_last_stages(first_run, tmp_path):
    path = copy_run(first_run, tmp_path)
    partial = json.loads(glotta("pipeline", "run", path, "--from", "cat", "--json").stdout)
    assert stage_status(partial) == {"cat": "ran", "stage2": "ran"}


def test_failed_stage_keeps_earlier_outputs_and_rerun_resumes(first_run, tmp_path):
    path = copy_run(first_run, tmp_path)
    bad = glotta("pipeline", "run", path, "--set", "stage2.set=[no_such_key=1]", check=False)
    assert bad.returncode == 2 and "stage 'stage2' failed" in bad.stderr
    assert (tmp_path / "run/cat/exclude.txt").is_file() and (tmp_path / "run/stage1/checkpoints/latest").is_file()
    good = json.loads(glotta("pipeline", "run", path, "--json").stdout)
    assert stage_status(good) == {**{name: "skipped" for name in STAGES[:-1]}, "stage2": "ran"}


def test_missing_file_fails_before_any_stage(tmp_path):
    path = recipe(tmp_path, tmp_path / "run", consent={"robots": str(tmp_path / "nope")})
    r = glotta("pipeline", "run", path, check=False)
    assert r.returncode == 2
    assert "consent.robots" in r.stderr and "nope" in r.stderr
    assert not (tmp_path / "run").exists()
