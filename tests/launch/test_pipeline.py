"""`glotta pipeline run` on a messy user corpus with 2 processes: what reruns when, and a summary
that never mixes states.

The corpus (JSONL, two files so each rank imports one): ids repeated across files, the same text
in both files, one huge line of a repeated sentence, records without a url or a language, language
tags spelled EN / de-DE / ja_JP, text under the field `body`. One pipeline run (module fixture);
the tests after it change the recipe and rerun in the same run directory, in order.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
REPO = Path(__file__).resolve().parents[2]
TRAIN = ["train_iters=8", "optim.warmup_iters=2", "eval_interval=8", "eval_iters=2", "checkpoint.interval=1000", "log_interval=2"]
STAGES = ["import", "consent", "holdout", "tokenizer", "stage1", "cat-score", "cat", "stage2"]
TAGS = {"en": ["en", "EN", "en-US"], "de": ["de", "de-DE"], "ja": ["ja", "ja_JP"]}


def messy_corpus(base: Path) -> Path:
    """Real gettext text in en/de/ja, written the way user corpora come."""
    from glotta.data.demo_corpus import build_demo_corpus
    from glotta.data.shards import iter_samples, list_shards

    build_demo_corpus(base / "gettext", langs=["en", "de", "ja"], max_docs_per_lang=36, shard_samples=500)
    docs = [s for p in list_shards(base / "gettext") for s in iter_samples(p)]
    rows = []
    for i, s in enumerate(docs):
        r = {"doc_id": f"d{i % 40}", "body": s.text, "language": TAGS[s.lang][i % len(TAGS[s.lang])], "url": s.meta["url"]}
        if i % 9 == 0:
            del r["url"]  # no url: consent drops these (counted)
        if i % 11 == 0:
            del r["language"]  # no language: language id decides
        rows.append(r)
    rows.append({"doc_id": "huge", "body": "The same sentence again. " * 4000, "language": "en", "url": "https://spam.example/x"})
    rows += [dict(r) for r in rows[:5]]  # exact duplicates, in the other file
    d = base / "corpus"
    d.mkdir()
    half = len(rows) // 2
    for name, part in (("a.jsonl", rows[:half]), ("b.jsonl", rows[half:])):
        (d / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part))
    return d


def robots(base: Path) -> Path:
    d = base / "robots"
    (d / "bash.l10n.example").mkdir(parents=True)
    (d / "bash.l10n.example/2020-01-01.txt").write_text("User-agent: CCBot\nDisallow: /ja/\n")
    return d


def recipe(base: Path, **over) -> Path:
    cfg = {
        "run_dir": str(base / "run"),
        "nproc": 2,
        "data": {"inputs": [str(base / "corpus/*.jsonl")], "fields": {"text": "body", "lang": "language", "id": "doc_id"},
                 "set": ["max_chars=6000", "shard_samples=40", "max_skip_share=0.2"]},
        "consent": {"robots": str(base / "robots"), "agents": "training", "as_of": "strictest"},
        "tokenizer": {"vocab_size": 1200, "alpha": 0.3, "sample_bytes": 150_000},
        "holdout": {"fraction": 0.2, "max_docs_per_lang": 6},
        "stage1": {"config": str(REPO / "configs/gpt-tiny.yaml"), "set": TRAIN + ["eval_at_start=true", "checkpoint.keep_steps=[2, 4, 8]"]},
        "cat": {"method": "cat", "keep": 0.5},
        "stage2": {"config": str(REPO / "configs/gpt-tiny.yaml"), "set": TRAIN},
    }
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v}
    path = base / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def glotta(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "glotta.launch.cli", *map(str, args)], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"glotta {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout}\n{r.stderr[-4000:]}")
    return r


def status(summary: dict) -> dict[str, str]:
    return {s["stage"]: s["status"] for s in summary["stages"]}


def reports_parse(run: Path) -> list[str]:
    names = []
    for p in sorted((run / "reports").glob("*.json")):
        json.loads(p.read_text())  # every report is one valid JSON document
        names.append(p.stem)
    return names


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    base = tmp_path_factory.mktemp("pipeline")
    messy_corpus(base)
    robots(base)
    r = glotta("pipeline", "run", recipe(base), "--json")
    return base, json.loads(r.stdout), r.stderr


def test_messy_corpus_runs_and_every_loss_is_counted(first):
    base, summary, stderr = first
    assert status(summary) == {name: "ran" for name in STAGES}
    counters = {(r["stage"], r["counter"]): r["value"] for r in summary["counters"]}
    assert counters[("import", "split_docs")] == 1  # the huge line, split at sentence boundaries ...
    assert counters[("import", "duplicate_docs")] >= 10  # ... into identical parts, removed
    assert counters[("import", "duplicate_docs_across_ranks")] >= 5  # the 5 copies in the other file
    assert counters[("import", "duplicate_ids")] + counters[("import", "duplicate_ids_across_ranks")] >= 60
    assert counters[("import", "missing_url")] >= 12 and counters[("import", "missing_lang")] >= 9
    assert any(stage == "consent" and "url" in name and v >= 12 for (stage, name), v in counters.items())
    rows = {r["lang"]: r for r in summary["corpus"]}
    # CAT scoring's own counters: the held-out documents it skipped, every training document scored
    held = json.loads((base / "run/reports/holdout.json").read_text())["held_out"]
    assert counters[("cat-score", "excluded")] == sum(held.values()) > 0
    assert counters[("cat-score", "scored_docs")] == sum(r["train docs"] for r in rows.values())
    assert {"en", "de", "ja"} <= set(rows)  # EN, en-US, de-DE, ja_JP normalized
    for r in (rows["en"], rows["de"], rows["ja"]):
        assert 0 < r["cat docs"] < r["train docs"] <= r["consent docs"] <= r["import docs"]
    assert {r["lang"] for r in summary["premiums"]} >= {"en", "de", "ja"}
    assert set(reports_parse(base / "run")) == {
        "import", "import-inspect", "consent-import", "consent-index", "consent-filter", "consent-report", "holdout",
        "tokenizer-parallel",
        "tokenizer-build", "tokenizer-eval", "stage1", "cat-score", "cat-select", "stage2", "stage2-generate",
    }  # fmt: skip
    gens = {g["lang"]: g for g in summary["generations"]}  # one held-out line continued per language
    assert {"en", "de", "ja"} <= set(gens) <= set(rows)
    assert all(g["prompt"] and len(g["prompt"]) <= 48 for g in gens.values())
    assert "step · loss" in stderr and "OMP_NUM_THREADS" not in stderr  # progress shown, banner not
    val = {r["lang"]: r for r in summary["validation"]}
    assert all(math.isfinite(v) for r in val.values() for v in r.values() if isinstance(v, float))
    assert {"en", "de", "ja", "all"} <= set(val)  # every held-out language has a loss after each stage
    assert all(r[f"{c} val loss"] is not None for r in val.values() for c in ("untrained", "stage1", "stage2"))


def test_one_mlflow_parent_with_every_stage_and_no_empty_experiment(first):
    from mlflow.tracking import MlflowClient

    _, summary, _ = first
    client = MlflowClient(summary["mlflow"]["tracking_uri"])
    exps = {e.name: e.experiment_id for e in client.search_experiments()}
    assert set(exps) == {"Default", "glotta-pipeline-run"}  # the trainer logged into its child, made none
    runs = client.search_runs([exps["glotta-pipeline-run"]])
    [parent] = [r for r in runs if r.info.run_name == "pipeline"]
    children = {r.data.tags["glotta.stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == set(STAGES)
    assert parent.data.params["cat.keep"] == "0.5"
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.json", "summary.txt", "figures", "stages", "recipe.json"} <= arts
    cat = {a.path for a in client.list_artifacts(children["cat"].info.run_id, "cat/report")}
    assert any(p.endswith(".png") for p in cat)  # CAT's histograms
    assert len(client.get_metric_history(children["stage1"].info.run_id, "loss")) >= 3


# The reruns keep 30% and skip stage 2's generation (shown by the first run; ~10 s a rerun)
KEEP_03 = {"cat": {"keep": 0.3}, "stage2": {"generate_tokens": 0}}


def test_changing_cat_keep_reruns_selection_and_stage2_not_scoring(first):
    base, before, _ = first
    scores = {p.name: p.stat().st_mtime_ns for p in (base / "run/cat-score").glob("*.parquet")}
    after = json.loads(glotta("pipeline", "run", recipe(base, **KEEP_03), "--json").stdout)
    assert status(after) == {**{n: "skipped" for n in STAGES[:6]}, "cat": "ran", "stage2": "ran"}
    assert after["generations"] == [] and before["generations"]  # the old stage 2's report moved aside with it
    assert scores and {p.name: p.stat().st_mtime_ns for p in (base / "run/cat-score").glob("*.parquet")} == scores
    old = {r["lang"]: r for r in before["corpus"]}
    new = {r["lang"]: r for r in after["corpus"]}
    for lang in ("en", "de", "ja"):
        assert new[lang]["train tokens"] == old[lang]["train tokens"]
        assert new[lang]["cat tokens"] < old[lang]["cat tokens"]
    assert len(list((base / "run/previous").glob("*/stage2/checkpoints"))) == 1  # old stage 2 kept aside
    assert after["validation"][0]["stage2 val loss"] != before["validation"][0]["stage2 val loss"]
    assert reports_parse(base / "run")


def test_from_stage2_retrains_from_scratch(first):
    base, _, _ = first
    r = glotta("pipeline", "run", recipe(base, **KEEP_03), "--from", "stage2", "--json")
    assert status(json.loads(r.stdout)) == {**{n: "current" for n in STAGES[:7]}, "stage2": "ran"}
    steps = [json.loads(x)["step"] for x in (base / "run/stage2/metrics.jsonl").read_text().splitlines()]
    assert steps[0] == 2 and steps[-1] == 8  # trained again from step 0, not resumed at the end
    assert "resumed from" not in r.stderr


def test_bad_set_fails_before_any_stage_naming_its_origin(tmp_path):
    base = tmp_path
    (base / "corpus").mkdir()
    (base / "corpus/a.jsonl").write_text('{"text": "x"}\n')
    robots(base)
    path = recipe(base, stage2={"set": ["no_such_key=1"]})
    r = glotta("pipeline", "run", path, "--dry-run", check=False)
    assert r.returncode == 2 and "no_such_key" in r.stderr and f"{path}:" in r.stderr
    r = glotta("pipeline", "run", path, "--set", "cat.select_set=[selection.fraction=abc]", check=False)
    assert r.returncode == 2 and "--set cat.select_set=[selection.fraction=abc]" in r.stderr
    assert not (base / "run").exists()
