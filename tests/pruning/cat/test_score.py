"""`glotta prune score`: packing, TP=1 vs TP=2 equality, resume after an interruption, bad input.

The checkpoints come from a real stage-1 run (`glotta train`, configs/gpt-tiny.yaml, 8 steps on the
tiny shard set) that keeps steps 2 and 4 across time; the scorer finds them from the checkpoint root.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from glotta.data import ShardWriter, iter_samples, list_shards
from glotta.data.manifest import Manifest
from glotta.launch.cli import app
from glotta.pruning.cat.score import doc_nll_sums, pack
from glotta.pruning.cat.table import read_scores


# fp32 on CPU: TP=2 splits the matmuls and the vocab-parallel softmax, so sums are reordered.
TP_TOLERANCE = 1e-4  # nats, on token-mean NLL

REPO = Path(__file__).resolve().parents[3]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


@pytest.fixture(scope="module")
def tiny_shards(demo_shards, tmp_path_factory):
    """Three documents per language in two shards; the third is long enough for several windows."""
    out = tmp_path_factory.mktemp("tiny")
    count: dict[str, int] = {}
    with ShardWriter(out, prefix="tiny", max_samples=15) as w:
        for p in list_shards(demo_shards):
            for s in iter_samples(p):
                n = count[s.lang] = count.get(s.lang, 0) + 1
                if n <= 3:
                    s.text = s.text[: 300 if n < 3 else 1200]
                    w.write(s)
    Manifest(shards=w.written).save(out)
    return out


@pytest.fixture(scope="module")
def run_dir(spm_model, tiny_shards, tmp_path_factory):
    """A real stage-1 run: `glotta train` (gpt-tiny, 8 steps) keeping steps 2 and 4 across time."""
    root = tmp_path_factory.mktemp("stage1")
    sets = ["data.train=[%s]" % tiny_shards, f"data.tokenizer={spm_model}", "tracking.enabled=false",
            "eval_interval=0", "data.num_workers=0", "checkpoint.keep_steps=[2, 4]", "checkpoint.keep_last=1",
            "optim.warmup_iters=2"]
    cmd = [sys.executable, "-m", "glotta.launch.cli", "train", "-c", str(REPO / "configs" / "gpt-tiny.yaml"),
           "--run-dir", str(root), "--iters", "8"] + [a for x in sets for a in ("--set", x)]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return root


def _score(args, nproc=0, timeout=400):
    cli = ["-m", "glotta.launch.cli", "prune", "score", *map(str, args), "--json"]
    if nproc:
        cmd = [shutil.which("torchrun"), "--standalone", f"--nproc-per-node={nproc}", *cli]
    else:
        cmd = [sys.executable, *cli]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout[r.stdout.index("{"):])


def test_pack_windows_cover_every_token_once():
    ids = [list(range(10, 160)), [5, 6, 7], []]  # 151, 4 and 1 predicted tokens
    rows = pack(ids, eod=2, pad=0, seq_len=64)
    mask = rows.loss_mask > 0
    assert mask.sum() == 151 + 4 + 1
    for d, x in enumerate(ids):
        sel = mask & (rows.doc_of == d)
        assert rows.labels[sel].tolist() == x + [2]  # every target once, in order, then EOD
        assert rows.tokens[sel].tolist() == [2] + x  # input = EOD + ids (teacher forcing)
    # Windows restart positions; the 151-token document spans 3 windows (64 + 64 + 23).
    starts = rows.position_ids[mask] == 0
    assert starts.sum() == 3 + 1 + 1
    losses = np.ones(rows.tokens.shape)
    assert doc_nll_sums(rows, losses, 3).tolist() == [151, 4, 1]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_tp2_equals_tp1_and_resume(run_dir, tiny_shards, tmp_path):
    ckpts = run_dir / "checkpoints"
    out1 = tmp_path / "tp1"
    base = ["--checkpoints", ckpts, "--shards", tiny_shards]
    # Interrupted job: stops after the first checkpoint pass, leaving per-shard parts and no table.
    first = _score([*base, "--out", out1, "--set", "stop_after_checkpoints=1"])
    assert first["checkpoints_scored"] == [2] and first["shards_written"] == 0
    assert not list(out1.glob("*.parquet"))
    parts = sorted((out1 / ".parts").rglob("ckpt_1.npy"))
    assert len(parts) == 2
    # Restart: checkpoint 2's parts are reused (not reloaded, not recomputed); only step 4 runs.
    again = _score([*base, "--out", out1])
    assert again["checkpoints_scored"] == [4] and again["shards_written"] == 2
    assert not list((out1 / ".parts").rglob("*.npy"))  # parts are folded into the tables
    # Same checkpoints scored with tensor parallelism 2 under torchrun (2 processes, gloo).
    out2 = tmp_path / "tp2"
    tp2 = _score([*base, "--out", out2, "--tp", 2], nproc=2)
    assert tp2["tp"] == 2 and tp2["throughput"][0]["tokens_per_s_per_device"] > 0
    a, meta_a = read_scores(out1)
    b, meta_b = read_scores(out2)
    assert meta_a.identity() == meta_b.identity() and meta_a.checkpoint_steps == [2, 4]
    assert len(a) == 30 and (a[["shard", "key", "n_tokens", "n_bytes"]] == b[["shard", "key", "n_tokens", "n_bytes"]]).all().all()
    assert a["n_tokens"].max() > 64  # at least one document spans several windows
    for col in ("nll_ckpt_1", "nll_ckpt_2"):
        assert np.abs(a[col] - b[col]).max() < TP_TOLERANCE
        assert (a[col] > 0).all()
    # Different weights at the two checkpoints give different scores.
    assert np.abs(a["nll_ckpt_1"] - a["nll_ckpt_2"]).max() > 1e-3


def test_score_refuses_bad_input_before_starting(run_dir, tiny_shards, spm_model, tmp_path):
    runner = CliRunner()
    ckpts = run_dir / "checkpoints"

    def invoke(*args):
        return runner.invoke(app, ["prune", "score", "--shards", str(tiny_shards), *map(str, args)])

    r = invoke("--checkpoints", ckpts / "iter_0000002", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "CAT needs at least 2 checkpoints" in r.output
    # A checkpoint of another run (different seed in its config).
    other = tmp_path / "other" / "iter_0000006"
    shutil.copytree(ckpts / "iter_0000004", other)
    meta = json.loads((other / "meta.json").read_text())
    meta["step"], meta["config"]["seed"] = 6, 2
    (other / "meta.json").write_text(json.dumps(meta))
    r = invoke("--checkpoints", ckpts / "iter_0000002", "--checkpoints", other, "--out", tmp_path / "o")
    assert r.exit_code == 2 and "checkpoints from different runs" in r.output and "seed" in r.output
    wrong = tmp_path / "wrong.model"
    wrong.write_bytes(spm_model.read_bytes() + b"\0")
    r = invoke("--checkpoints", ckpts, "--tokenizer", wrong, "--out", tmp_path / "o")
    assert r.exit_code == 2 and "is not the one the run trained with" in r.output
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "score.json").write_text(json.dumps({"run_id": "x", "checkpoint_steps": [1, 2]}))
    r = invoke("--checkpoints", ckpts, "--out", busy)
    assert r.exit_code == 2 and "holds scores of other inputs" in r.output
    assert not (tmp_path / "o").exists()


def test_windows_with_context_score_every_token_once():
    from glotta.pruning.cat.score import windows

    assert windows(151, 64, 0) == [(0, 64, 0), (64, 128, 64), (128, 151, 128)]
    # 16 tokens of context: later windows start 16 early and score only their new tokens.
    assert windows(151, 64, 16) == [(0, 64, 0), (48, 112, 64), (96, 151, 112)]
    ids = [list(range(10, 160)), [5, 6, 7]]
    rows = pack(ids, eod=2, pad=0, seq_len=64, context=16)
    mask = rows.loss_mask > 0
    for d, x in enumerate(ids):
        assert rows.labels[mask & (rows.doc_of == d)].tolist() == x + [2]
    # The context tokens are in the rows (attended to) but not scored.
    assert (rows.doc_of == 0).sum() == 151 + 2 * 16
    assert doc_nll_sums(rows, np.ones(rows.tokens.shape), 2).tolist() == [151, 4]
    with pytest.raises(ValueError, match="context"):
        windows(10, 64, 64)


@pytest.mark.slow
def test_heldout_evaluation_uses_the_trainer_step_and_context_changes_only_long_documents(run_dir, tiny_shards,
                                                                                           spm_model):
    from glotta.pruning.cat.heldout import evaluate

    final = run_dir / "checkpoints" / "iter_0000004"
    plain = evaluate([final], tiny_shards, spm_model, micro_batch_size=4)
    carried = evaluate([final], tiny_shards, spm_model, micro_batch_size=4, context=32)
    assert plain.nll.shape == (1, 30) and np.isfinite(plain.nll).all() and (plain.nll > 0).all()
    short = plain.n_tokens <= 64
    assert short.sum() >= 1 and (~short).sum() >= 10
    assert np.allclose(plain.nll[0, short], carried.nll[0, short], atol=1e-5)
    assert np.abs(plain.nll[0, ~short] - carried.nll[0, ~short]).max() > 1e-4
