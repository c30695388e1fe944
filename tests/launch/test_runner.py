"""The pipeline runner on small real stages (Python one-liners as commands): what reruns when.

Content-addressed fingerprints, --from into fresh outputs (previous ones kept under previous/),
resume after a crash with unchanged inputs, stale stages after --until, one JSON report per
command even when several ranks print one each.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from glotta.errors import ConfigError
from glotta.launch.pipeline import Runner, Stage, StageFailed


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def stages(run: Path, src: Path) -> list[Stage]:
    a, b = run / "a", run / "b"
    copy = f"import pathlib,json; p=pathlib.Path({str(a)!r}); p.mkdir(exist_ok=True); t=pathlib.Path({str(src)!r}).read_text(); (p/'out.txt').write_text(t.upper()); print(json.dumps({{'chars': len(t)}}))"
    # stage b fails once when asked to (crash), keeping what it wrote so far; a rerun resumes it
    crash = run.parent / "crash-once"
    count = (
        f"import pathlib,sys,json; b=pathlib.Path({str(b)!r}); b.mkdir(exist_ok=True); "
        f"(b/'attempts').open('a').write('x'); c=pathlib.Path({str(crash)!r}); "
        f"sys.exit(c.unlink() or 3) if c.exists() else None; "
        f"(b/'out.txt').write_text(pathlib.Path({str(a / 'out.txt')!r}).read_text()[::-1]); "
        "print('{'); print('  \"rank\": 0'); print('}'); print(json.dumps({'rank': 1}))"
    )
    return [
        Stage("a", [py(copy)], outputs=[a / "out.txt"], inputs=[src], report_names={0: "a"}),
        Stage("b", [py(count)], outputs=[b / "out.txt"], inputs=[a / "out.txt"], report_names={0: "b"}),
    ]


def run_once(run: Path, src: Path, **kw) -> dict[str, str]:
    r = Runner(run)
    return {x.stage: x.status for x in r.run(stages(run, src), **kw)}


def test_what_reruns_when(tmp_path):
    run, src = tmp_path / "run", tmp_path / "in.txt"
    src.write_text("hello")
    assert run_once(run, src) == {"a": "ran", "b": "ran"}
    reports = {p.name: json.loads(p.read_text()) for p in (run / "reports").glob("*.json")}
    assert reports == {"a.json": {"chars": 5}, "b.json": {"ranks": [{"rank": 0}, {"rank": 1}]}}
    assert run_once(run, src) == {"a": "skipped", "b": "skipped"}

    src.write_text("world")  # an input's content changed: both rerun, into fresh outputs
    assert run_once(run, src) == {"a": "ran", "b": "ran"}
    assert (run / "b/out.txt").read_text() == "DLROW"
    assert (run / "b/attempts").read_text() == "x"  # a fresh folder, not the old one resumed
    old = list((run / "previous").glob("*/b/out.txt"))
    assert [p.read_text() for p in old] == ["OLLEH"]

    assert run_once(run, src, start="b") == {"a": "current", "b": "ran"}  # --from: reruns although nothing changed
    assert (run / "b/attempts").read_text() == "x"

    src.write_text("again")
    assert run_once(run, src, until="a") == {"a": "ran", "b": "stale"}  # b was made from the old a


def test_crash_resumes_with_unchanged_inputs(tmp_path):
    run, src = tmp_path / "run", tmp_path / "in.txt"
    src.write_text("hello")
    (tmp_path / "crash-once").touch()
    with pytest.raises(StageFailed, match="stage 'b' failed"):
        run_once(run, src)
    assert run_once(run, src) == {"a": "skipped", "b": "resumed"}
    assert (run / "b/attempts").read_text() == "xx"  # the same folder, continued
    assert (run / "b/out.txt").read_text() == "OLLEH"


def test_one_parent_mlflow_run_reused(tmp_path):
    from mlflow.tracking import MlflowClient

    run, src = tmp_path / "run", tmp_path / "in.txt"
    src.write_text("hello")
    run_once(run, src)
    src.write_text("world")
    run_once(run, src)
    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    exps = client.search_experiments()
    assert [e.name for e in exps if e.name != "Default"] == [f"glotta-pipeline-{run.name}"]
    runs = client.search_runs([e.experiment_id for e in exps])
    parents = [r for r in runs if r.info.run_name == "pipeline"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(c.info.run_name for c in children) == ["a", "a", "b", "b"]
    arts = [a.path for a in client.list_artifacts(children[0].info.run_id, children[0].info.run_name)]
    assert any(a.endswith(".json") for a in arts)


def test_summary_leaves_out_stale_stages(tmp_path):
    from types import SimpleNamespace

    from glotta.launch.pipeline import StageResult
    from glotta.launch.summary import pipeline_summary

    for stage, loss in (("stage1", 6.0), ("stage2", 5.5)):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "metrics.jsonl").write_text(json.dumps({"step": 8, "val/loss": loss, "val/loss/en": loss}) + "\n")
    cfg = SimpleNamespace(run_dir=tmp_path, consent=SimpleNamespace(enabled=True), stage1=object(), stage2=object())
    current = [StageResult("stage1", "skipped"), StageResult("cat", "ran"), StageResult("stage2", "ran")]
    cols = pipeline_summary(cfg, current, 1.0, "sqlite://")["validation"][0]
    assert cols["stage1 val loss"] == 6.0 and cols["stage2 val loss"] == 5.5
    stale = [StageResult("stage1", "skipped"), StageResult("cat", "ran"), StageResult("stage2", "stale")]
    cols = pipeline_summary(cfg, stale, 1.0, "sqlite://")["validation"][0]
    assert "stage2 val loss" not in cols and cols["stage1 val loss"] == 6.0


def test_a_stage_check_stops_the_run_before_the_next_stage(tmp_path, demo_shards):
    """tokenizer.target_langs is checked on the imported corpus' manifest before later stages spend time."""
    from glotta.launch.base_model import check_corpus_langs

    run, src = tmp_path / "run", tmp_path / "in.txt"
    src.write_text("hello")
    a, b = stages(run, src)
    a.check = check_corpus_langs(["el", "xx", "yy"], demo_shards, "import")
    with pytest.raises(ConfigError, match=r"target_langs: xx, yy not in the corpus after import .*which has .*de, el, en"):
        Runner(run).run([a, b])
    assert (run / "a/out.txt").is_file() and not (run / "b").exists()
    a.check = check_corpus_langs(["el"], demo_shards, "import")  # the recipe fixed: import is not redone
    assert {x.stage: x.status for x in Runner(run).run([a, b])} == {"a": "skipped", "b": "ran"}
