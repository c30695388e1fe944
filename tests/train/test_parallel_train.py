"""Tensor x pipeline parallel training under torchrun (gloo, CPU) with MLflow, and preemption.

1. TP=2 x PP=2 on 4 processes logs to a real `mlflow server` on 127.0.0.1; the server is killed
   mid-run and training still finishes; the server's store is then checked.
2. PP=2 on 2 processes is stopped with SIGTERM: it saves a checkpoint that loads; the embedded
   MLflow store in the run directory holds the run.
"""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from trainrun import TINY, env, losses, metrics, run_train, torchrun_cmd, wait_for

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        return urllib.request.urlopen(url + "/health", timeout=2).read() == b"OK"
    except OSError:
        return False


def assert_loss_falls(run_dir: Path) -> None:
    got = {s: v[0] for s, v in losses(run_dir).items()}
    steps = sorted(got)
    first, last = got[steps[0]], sum(got[s] for s in steps[-3:]) / 3
    assert last < first - 0.3, (first, last)


def test_tp2_pp2_trains_and_survives_mlflow_server_death(train_data, tmp_path):
    store, run_dir = tmp_path / "mlflow", tmp_path / "run"
    store.mkdir()
    url = f"http://127.0.0.1:{free_port()}"
    server = subprocess.Popen(
        ["mlflow", "server", "--backend-store-uri", f"sqlite:///{store / 'db.sqlite'}", "--artifacts-destination",
         str(store / "artifacts"), "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1], "--workers", "1"],
        stdout=open(store / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    train = None
    try:
        wait_for(lambda: healthy(url), 180, server, "the mlflow server")
        sets = TINY + train_data.overrides(valid=True) + [
            f"run_dir={run_dir}", "train_iters=16", "eval_interval=4", "eval_iters=1", "checkpoint.interval=100",
            "parallel.tensor_parallel=2", "parallel.pipeline_parallel=2", "tracking.experiment=tp2pp2",
            "tracking.flush_interval_s=0.5", "tracking.retry_interval_s=1", "stage=stage1",
        ]
        train = subprocess.Popen(torchrun_cmd(4, sets), env=env(MLFLOW_TRACKING_URI=url),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        client = MlflowClient(url)

        def validation_logged():
            exp = client.get_experiment_by_name("tp2pp2")
            runs = client.search_runs([exp.experiment_id]) if exp else []
            return (runs and any(k.startswith("val/bpb/") for k in runs[0].data.metrics)
                    and list((store / "artifacts").rglob("config.json")))

        wait_for(validation_logged, 300, train, "validation metrics on the server")
        os.killpg(server.pid, signal.SIGKILL)  # the tracking server dies mid-run
        server.wait()
        out, err = train.communicate(timeout=300)
    finally:
        for p in (train, server):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL) if p is server else p.kill()
    assert train.returncode == 0, err[-4000:]
    assert "cannot log to" in err  # one warning, training went on
    assert max(m["step"] for m in metrics(run_dir)) == 16
    assert_loss_falls(run_dir)
    # every evaluation has a loss for every held-out language (one batch of 8 rows cannot hold all 10)
    from glotta.data import iter_samples, list_shards

    held_out = {s.lang for p in list_shards(train_data.valid) for s in iter_samples(p)}
    evals = [m for m in metrics(run_dir) if "val/loss" in m]
    assert len(evals) == 4 and all({k.removeprefix("val/loss/") for k in m if k.startswith("val/loss/")} == held_out
                                   for m in evals)
    assert any(m["val/langs_own_batch"] > 0 for m in evals)

    # What reached the server, read from its SQLite store.
    client = MlflowClient(f"sqlite:///{store / 'db.sqlite'}")
    run = client.search_runs([client.get_experiment_by_name("tp2pp2").experiment_id])[0]
    params, tags, logged = run.data.params, run.data.tags, run.data.metrics
    assert params["model.hidden_size"] == "64" and params["parallel.tensor_parallel"] == "2"
    assert params["parallel.pipeline_parallel"] == "2" and params["data.tokenizer"] == str(train_data.tokenizer)
    assert tags["glotta.stage"] == "stage1" and len(tags["glotta.git_sha"]) == 40
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "tflops_per_gpu", "loader_padding_pct", "val/loss"):
        assert key in logged, key
    langs = {k.split("/")[-1] for k in logged if k.startswith("val/bpb/")}
    assert len(langs) >= 3 and all(f"val/loss/{lang}" in logged for lang in langs)
    assert all(0 < logged[f"val/bpb/{lang}"] < 20 for lang in langs)
    local = {m["step"]: m["loss"] for m in metrics(run_dir) if "loss" in m}
    history = client.get_metric_history(run.info.run_id, "loss")
    assert history and all(math.isclose(h.value, local[h.step], rel_tol=1e-9) for h in history)
    assert list((store / "artifacts").rglob("config.json")), "config.json artifact missing"


def test_pp2_sigterm_saves_a_loadable_checkpoint(train_data, tmp_path):
    run_dir = tmp_path / "run"
    sets = TINY + train_data.overrides() + [
        f"run_dir={run_dir}", "train_iters=400", "checkpoint.interval=1000", "parallel.pipeline_parallel=2",
        "tracking.flush_interval_s=0.5", "stage=stage2",
    ]
    train = subprocess.Popen(torchrun_cmd(2, sets), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(m.get("step", 0) >= 12 for m in metrics(run_dir)), 240, train, "step 12")
        train.send_signal(signal.SIGTERM)  # what Slurm preemption or a scheduler does
        out, err = train.communicate(timeout=180)
    finally:
        if train.poll() is None:
            train.kill()
    summary = json.loads(out[out.index("{\n"):])
    assert summary["interrupted"] is True, err[-3000:]
    ckpts = run_dir / "checkpoints"
    step = int((ckpts / "latest").read_text())
    assert 12 <= step < 400 and step == summary["step"]
    assert not list(ckpts.glob("*.tmp"))
    assert_loss_falls(run_dir)

    # The checkpoint loads in a plain process (PP=2 -> PP=1) and scores text (what CAT does).
    code = (
        "import sys, torch\n"
        "from glotta.train import load_model, token_losses\n"
        "from glotta.data.loader import TokenLoader\n"
        f"model, meta = load_model({str(ckpts)!r})\n"
        f"b = next(iter(TokenLoader([{str(train_data.train)!r}], {str(train_data.tokenizer)!r}, seq_len=64, micro_batch_size=2)))\n"
        "l = token_losses(model, b['tokens'], b['labels'])\n"
        "print(meta['step'], float((l * b['loss_mask']).sum() / b['loss_mask'].sum()))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    loaded_step, loss = p.stdout.split()[-2:]
    assert int(loaded_step) == step and 0 < float(loss) < 8

    # Embedded MLflow store in the run directory (no server configured).
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("glotta").experiment_id])[0]
    assert run.data.tags["glotta.stage"] == "stage2" and run.info.status == "KILLED"
    assert len(client.get_metric_history(run.info.run_id, "loss")) >= 12
    # the finished checkpoint is named by a pointer artifact (path, step), not copied into MLflow
    pointers = list((run_dir / "mlartifacts").rglob(f"iter_{step:07d}.json"))
    assert len(pointers) == 1, list((run_dir / "mlartifacts").rglob("*"))
    pointer = json.loads(pointers[0].read_text())
    assert pointer["step"] == step and Path(pointer["path"]) == (ckpts / f"iter_{step:07d}").resolve()


def test_interleaved_pipeline_trains_and_checkpoints(train_data, tmp_path):
    """PP=2 with 2 virtual stages per rank (interleaved 1F1B, 4 layers): loss falls, the two model
    chunks of each rank are saved in one checkpoint."""
    run_dir = tmp_path / "run"
    sets = [s for s in TINY if not s.startswith("model.num_layers")] + train_data.overrides() + [
        f"run_dir={run_dir}", "model.num_layers=4", "train_iters=10", "checkpoint.interval=10",
        "parallel.pipeline_parallel=2", "parallel.virtual_pipeline=2", "tracking.enabled=false",
    ]
    run_train(2, sets)
    assert_loss_falls(run_dir)
    assert int((run_dir / "checkpoints" / "latest").read_text()) == 10
