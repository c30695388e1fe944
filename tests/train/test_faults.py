"""Fault handling under torchrun (gloo, CPU, DP=2): NaN loss / gradients injected on one rank
(skip and stop actions), a restart that drops the poisoned batch, the run-directory lock."""
from __future__ import annotations

import json
import math
import subprocess

import pytest
from trainrun import TINY, env, losses, metrics, run_train, torchrun_cmd

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def sets(data, run_dir, *extra) -> list[str]:
    return TINY + data.overrides() + [f"run_dir={run_dir}", "tracking.enabled=false", "checkpoint.interval=2", *extra]


def faults(run_dir) -> list[dict]:
    f = run_dir / "faults.jsonl"
    return [json.loads(x) for x in f.read_text().splitlines()] if f.is_file() else []


def test_nonfinite_loss_and_gradient_are_skipped_and_counted(train_data, tmp_path):
    """loss@3 and grad@6 on rank 0 only: every rank skips the same two updates (the gradient one
    is agreed across DP replicas), the LR schedule does not advance on them, training goes on."""
    run_dir = tmp_path / "skip"
    p = run_train(2, sets(train_data, run_dir, "train_iters=8", "faults.on_nonfinite=skip"),
                  GLOTTA_FAULT_INJECT="loss@3,grad@6")
    summary = json.loads(p.stdout[p.stdout.index("{"):])
    assert summary["skipped_nonfinite"] == 2 and summary["step"] == 8, summary
    assert [(f["step"], f["what"], f["action"]) for f in faults(run_dir)] == [(3, "loss", "skip"), (6, "grad_norm", "skip")]
    rows = {m["step"]: m for m in metrics(run_dir) if "lr" in m}
    assert math.isnan(rows[3]["loss"]) and math.isnan(rows[6]["grad_norm"])
    assert rows[3]["lr"] == rows[2]["lr"] and rows[6]["lr"] == rows[5]["lr"]  # no scheduler step when skipped
    assert rows[4]["lr"] > rows[3]["lr"] and math.isfinite(summary["final_loss"])


def test_stop_names_step_and_data_then_restart_drops_the_batch(train_data, tmp_path):
    """on_nonfinite=stop: the job fails naming the step and its global samples; re-running it
    resumes from step 2 and drops step 4's batch (recorded in faults.jsonl) instead of replaying it."""
    run_dir = tmp_path / "stop"
    cmd = torchrun_cmd(2, sets(train_data, run_dir, "train_iters=6"))
    p = subprocess.run(cmd, env=env(GLOTTA_FAULT_INJECT="grad@4"), capture_output=True, text=True, timeout=240)
    assert p.returncode != 0
    assert "step 4 (global samples 24..31): grad_norm is nan" in p.stdout + p.stderr, p.stderr[-3000:]
    assert [(f["step"], f["action"]) for f in faults(run_dir)] == [(4, "stop")]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "2"

    p = run_train(2, sets(train_data, run_dir, "train_iters=6"))  # the same command again, no injection
    summary = json.loads(p.stdout[p.stdout.index("{"):])
    assert summary["skipped_data"] == 1 and summary["step"] == 6 and not summary["interrupted"]
    assert "step 4: batch of samples 24..31 dropped" in p.stdout
    got = losses(run_dir)
    assert all(math.isfinite(v) for s in (5, 6) for v in got[s])


def test_second_job_on_the_same_run_dir_is_refused(train_data, tmp_path):
    from glotta.errors import GlottaError
    from glotta.train.faults import RunLock

    held = RunLock(tmp_path)
    held.acquire()
    try:
        with pytest.raises(GlottaError, match="in use by another training job"):
            RunLock(tmp_path).acquire()
    finally:
        held.release()
    RunLock(tmp_path).acquire()  # released: free again
