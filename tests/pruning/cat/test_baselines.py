"""Baselines behind `glotta prune select`: dedup pre-step, DSIR toward a target sample, early loss."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from glotta.data import iter_samples, list_shards
from glotta.launch.cli import app
from glotta.pruning.cat import statistics as st
from glotta.pruning.cat.dedup import DedupConfig, find_duplicates
from glotta.pruning.cat.dsir import log_weights, words

runner = CliRunner()

BASE = ("The kernel schedules processes by priority; a process that waits for input sleeps until the "
        "device signals that data is ready, and then it is woken and placed back on the run queue. ") * 3


def test_exact_and_near_duplicates_are_found_first_kept():
    texts = [BASE, "Something else entirely, about gardens and the plants that grow in them. " * 4,
             BASE.upper(),  # exact after normalisation (case-folded)
             BASE.replace("priority", "niceness"),  # near: one word changed
             "Der Kern plant Prozesse nach Priorität und weckt sie, wenn Daten bereitstehen. " * 4]
    d = find_duplicates(texts, DedupConfig(mode="near"))
    assert d.keep.tolist() == [True, True, False, False, True]
    assert (d.exact, d.near) == (1, 1)
    e = find_duplicates(texts, DedupConfig(mode="exact"))
    assert e.keep.tolist() == [True, True, False, True, True] and (e.exact, e.near) == (1, 0)
    assert find_duplicates(texts, DedupConfig()).keep.all()


def test_dsir_prefers_documents_like_the_target():
    rng = np.random.default_rng(0)
    cook = "flour butter oven bake sugar dough recipe knead salt yeast".split()
    net = "packet router socket address port protocol interface kernel route bridge".split()
    texts = [" ".join(rng.choice(cook if i % 2 else net, 60)) for i in range(40)]
    target = [(" ".join(rng.choice(cook, 60)), "en") for _ in range(5)]
    w = log_weights(texts, ["en"] * 40, target, buckets=4096)
    top = np.argsort(-w)[:20]
    assert all(i % 2 for i in top)  # every cooking document ranks above every networking one
    assert words("日本語テキスト and words") == list("日本語テキスト") + ["and", "words"]


def test_early_loss_is_the_first_checkpoint():
    df = pd.DataFrame({"lang": ["en"] * 3, "n_tokens": [5, 5, 5], "shard": "s", "key": ["a", "b", "c"]})
    nll = np.array([[3.0, 2.0], [5.0, 1.0], [4.0, 3.5]])
    assert st.score("early_loss", df, nll).tolist() == [3.0, 5.0, 4.0]


def test_select_cli_with_dedup_and_dsir(scores_dir, demo_shards, tmp_path):
    docs = [s for p in list_shards(demo_shards) for s in iter_samples(p)]
    target = tmp_path / "target.jsonl"
    target.write_text("".join(json.dumps({"text": s.text, "lang": s.lang}) + "\n" for s in docs[::7]))
    out = tmp_path / "dsir"
    r = runner.invoke(app, ["prune", "select", "--scores", str(scores_dir), "--shards", str(demo_shards), "--out",
                            str(out), "--method", "dsir", "--target", str(target), "--dedup", "near", "--keep", "0.5",
                            "--set", "histograms=false", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    c = res["counters"]
    assert c["not_selectable"] == c.get("exact_duplicates", 0) + c.get("near_duplicates", 0)
    sel = pd.read_parquet(out / "selection.parquet")
    assert not sel.loc[sel["score"] == -np.inf, "kept"].any()
    # Target documents are in the pool: DSIR keeps most of them.
    target_ids = {s.id for s in docs[::7]}
    kept_ids = set((sel["shard"] + "/" + sel["key"])[sel["kept"]])
    assert len(target_ids & kept_ids) > 0.7 * len(target_ids)
    r = runner.invoke(app, ["prune", "select", "--scores", str(scores_dir), "--shards", str(demo_shards), "--out",
                            str(tmp_path / "x"), "--method", "dsir"])
    assert r.exit_code != 0 and "target" in r.output
