"""`glotta prune select` end to end on the demo shard set: outputs, loader-format exclude list, bad input."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from glotta.data import iter_samples, list_shards
from glotta.data.manifest import Manifest
from glotta.launch.cli import app
from glotta.pruning.cat.table import ScoresMeta, read_meta, write_scores

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, ["prune", "select", *map(str, args)])


def test_select_writes_exclude_list_report_and_shards(scores_dir, demo_shards, spm_model, tmp_path):
    out = tmp_path / "sel"
    r = invoke("--scores", scores_dir, "--shards", demo_shards, "--out", out, "--method", "zscore", "--keep", 0.5,
               "--tokenizer", spm_model, "--materialize", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    sel = pd.read_parquet(out / "selection.parquet")
    assert len(sel) == res["docs"] == 800
    ids = sel["shard"] + "/" + sel["key"]
    lines = (out / "exclude.txt").read_text(encoding="utf-8").splitlines()
    assert set(lines) == set(ids[~sel["kept"]]) and len(lines) == res["docs"] - res["kept_docs"]
    shard_names = {p.name for p in list_shards(demo_shards)}
    assert all(line.split("/", 1)[0] in shard_names for line in lines)
    # The report compares kept and dropped documents and draws one histogram per language.
    assert {row["lang"] for row in res["langs"]} == set(sel["lang"])
    stats = res["text_stats"]["all"]
    assert stats["kept"]["docs"] == res["kept_docs"] and stats["kept"]["sample_docs"] == res["kept_docs"]
    assert 0 < stats["kept"]["type_token_ratio"] < 1 and 0 < stats["dropped"]["type_token_ratio"] < 1
    assert 0 <= stats["kept"]["rare_token_rate"] < 1
    assert sorted(p.rsplit("_", 1)[1] for p in res["histograms"]) == sorted(f"{x}.png" for x in set(sel["lang"]))
    assert json.loads((out / "report.json").read_text())["kept_docs"] == res["kept_docs"]
    # Materialised shards hold exactly the kept documents, text unchanged, with a verifiable manifest.
    pruned = out / "shards"
    assert Manifest.load(pruned).verify(pruned) == []
    src = {s.id: s.text for p in list_shards(demo_shards) for s in iter_samples(p)}
    got = [s for p in list_shards(pruned) for s in iter_samples(p)]
    kept_ids = set(ids[sel["kept"]])
    assert len(got) == len(kept_ids)
    by_key = {i.split("/", 1)[1]: i for i in kept_ids}
    assert all(src[by_key[s.key]] == s.text for s in got)


def test_exclude_list_is_honoured_by_the_loader(scores_dir, demo_shards, spm_model, tmp_path):
    loader_mod = pytest.importorskip("glotta.data.loader")
    out = tmp_path / "sel"
    r = invoke("--scores", scores_dir, "--shards", demo_shards, "--out", out, "--method", "random", "--keep", 0.3,
               "--set", "histograms=false", "--json")
    assert r.exit_code == 0, r.output
    sel = pd.read_parquet(out / "selection.parquet")
    kept = set((sel["shard"] + "/" + sel["key"])[sel["kept"]])
    loader = loader_mod.TokenLoader([str(demo_shards)], str(spm_model), seq_len=64, micro_batch_size=4,
                                    exclude=[str(out / "exclude.txt")])
    assert set(loader.index.doc_ids()) == kept
    seen = set()
    for i, batch in enumerate(loader):
        seen |= {d for d in batch["doc_ids"] if d}
        if i == 20:
            break
    assert seen and seen <= kept


def test_earlier_exclude_lists_are_respected(scores_dir, demo_shards, tmp_path):
    first = sorted(s.id for s in iter_samples(list_shards(demo_shards)[0]))[:7]
    consent = tmp_path / "consent.txt"
    consent.write_text("# consent filter\n" + "\n".join(first) + "\n", encoding="utf-8")
    r = invoke("--scores", scores_dir, "--shards", demo_shards, "--out", tmp_path / "sel", "--exclude", consent,
               "--set", "histograms=false", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["docs"] == 793 and res["counters"]["scored_but_excluded"] == 7
    assert not set(first) & set((tmp_path / "sel" / "exclude.txt").read_text().splitlines())


def _copy_scores(scores_dir, dest, drop_first_row=False, **meta_change):
    dest.mkdir()
    for f in sorted(scores_dir.glob("*.parquet")):
        df = pd.read_parquet(f)
        meta = read_meta(f)
        if drop_first_row:
            df, drop_first_row = df.iloc[1:], False
        write_scores(dest / f.name, df, ScoresMeta(**{**meta.__dict__, **meta_change}))
    return dest


def test_bad_input_fails_before_any_output(scores_dir, demo_shards, spm_model, tmp_path):
    out = tmp_path / "never"
    base = ["--shards", demo_shards, "--out", out]
    # Scores missing for one document of the shard set.
    holes = _copy_scores(scores_dir, tmp_path / "holes", drop_first_row=True)
    r = invoke("--scores", holes, *base)
    assert r.exit_code == 2 and "scores missing for 1 of 800 documents" in r.output
    # Scores from two runs.
    other = _copy_scores(scores_dir, tmp_path / "other", run_id="another-run")
    r = invoke("--scores", scores_dir, "--scores", other, *base)
    assert r.exit_code == 2 and "scores from different runs" in r.output
    # The tokenizer given is not the one the scores were computed with.
    wrong = tmp_path / "wrong.model"
    wrong.write_bytes(spm_model.read_bytes() + b"\0")
    r = invoke("--scores", scores_dir, "--tokenizer", wrong, *base)
    assert r.exit_code == 2 and "is not the one the scores were computed with" in r.output
    # Keep fraction outside (0, 1].
    for keep in ("0", "1.2"):
        r = invoke("--scores", scores_dir, "--keep", keep, *base)
        assert r.exit_code == 2 and "keep fraction must be in (0, 1]" in r.output
    # A single checkpoint cannot give CAT dynamics (but does give the perplexity baselines).
    one = tmp_path / "one"
    one.mkdir()
    for f in sorted(scores_dir.glob("*.parquet")):
        meta = read_meta(f)
        df = pd.read_parquet(f).drop(columns=["nll_ckpt_2", "nll_ckpt_3"])
        write_scores(one / f.name, df, ScoresMeta(**{**meta.__dict__, "checkpoint_steps": [600]}))
    r = invoke("--scores", one, *base)
    assert r.exit_code == 2 and "needs >= 2 checkpoints" in r.output
    # Scores of another shard set.
    shutil.copy(next(scores_dir.glob("*.parquet")), tmp_path / "x.parquet")
    few = tmp_path / "few"
    few.mkdir()
    shutil.copytree(demo_shards, few / "set", ignore=shutil.ignore_patterns("*0001.tar", "manifest*"))
    r = invoke("--scores", scores_dir, "--shards", few / "set", "--out", out)
    assert r.exit_code == 2 and "scores cover shards that are not in the shard set" in r.output
    assert not out.exists()
    r = invoke("--scores", one, *base, "--method", "ppl_mid", "--set", "histograms=false")
    assert r.exit_code == 0, r.output
    assert "kept 5" in r.output  # "kept 50.x% of tokens"


@pytest.mark.slow
def test_select_logs_to_mlflow(scores_dir, demo_shards, tmp_path):
    import mlflow

    out = tmp_path / "sel"
    r = invoke("--scores", scores_dir, "--shards", demo_shards, "--out", out, "--method", "nll_var", "--mlflow", "--json")
    assert r.exit_code == 0, r.output
    logged = json.loads(r.stdout)["mlflow"]
    assert logged["tracking_uri"] == f"sqlite:///{(out / 'mlflow.db').resolve()}"
    client = mlflow.MlflowClient(tracking_uri=logged["tracking_uri"])
    run = client.get_run(logged["run_id"])
    assert run.data.params["method"] == "nll_var" and run.data.params["selection.fraction"] == "0.5"
    assert 0.5 <= run.data.metrics["kept_frac_tokens"] < 0.55
    assert {f"kept_frac_tokens.{x}" for x in ("en", "ja", "ar")} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(logged["run_id"])}
    assert {"report.json", "report"} <= artifacts
    assert len(client.list_artifacts(logged["run_id"], "report")) == 10
