"""Background checkpoint saves under torchrun (gloo, CPU, DP=2), interrupted while a write is in
flight (the writer is held back by GLOTTA_FAULT_CKPT_WRITE_DELAY_S so the signal lands inside it):

1. the torchrun agent alone is SIGKILLed: the workers notice, finish the in-flight save, save
   once more and exit; no process of the job is left and `latest` names a complete checkpoint;
2. the whole job is SIGKILLed: `latest` still names the previous complete checkpoint, never
   the half-written one.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil
import pytest
from trainrun import TINY, env, torchrun_cmd, wait_for

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def sets(data, run_dir) -> list[str]:
    return TINY + data.overrides() + [
        f"run_dir={run_dir}", "train_iters=400", "tracking.enabled=false", "checkpoint.async_save=true",
        "checkpoint.interval=4", "checkpoint.keep_last=10",
    ]


def complete(ckpt) -> bool:
    return (ckpt / "meta.json").is_file() and (ckpt / "metadata.json").is_file() and any(ckpt.glob("*.distcp"))


def start(data, run_dir):
    run_dir.mkdir(parents=True)
    log = open(run_dir.parent / f"{run_dir.name}.log", "w")
    proc = subprocess.Popen(torchrun_cmd(2, sets(data, run_dir)), env=env(GLOTTA_FAULT_CKPT_WRITE_DELAY_S="4"),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def test_agent_sigkill_during_async_save_leaves_no_orphans(train_data, tmp_path):
    run_dir = tmp_path / "agent"
    agent, log = start(train_data, run_dir)
    ckpts = run_dir / "checkpoints"
    try:
        wait_for(lambda: (ckpts / "iter_0000004.tmp").is_dir(), 240, agent, "the first background save")
        job = psutil.Process(agent.pid).children(recursive=True)  # workers (+ any writer process)
        assert len(job) >= 2
        agent.kill()  # the torchrun agent dies, its workers do not get a signal from it
        agent.wait()
        gone, alive = psutil.wait_procs(job, timeout=120)
        assert not alive, f"orphaned processes: {[p.pid for p in alive]}\n{(tmp_path / 'agent.log').read_text()[-3000:]}"
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
        log.close()
    out = (tmp_path / "agent.log").read_text()
    assert "torchrun agent" in out and "is gone" in out
    step = int((ckpts / "latest").read_text())
    assert step > 4 and complete(ckpts / f"iter_{step:07d}") and complete(ckpts / "iter_0000004"), out[-3000:]
    assert not list(ckpts.glob("*.tmp"))


def test_sigkill_during_async_save_never_publishes_a_partial_checkpoint(train_data, tmp_path):
    run_dir = tmp_path / "killed"
    job, log = start(train_data, run_dir)
    ckpts = run_dir / "checkpoints"
    try:
        def second_save_in_flight():
            latest = ckpts / "latest"
            return latest.is_file() and latest.read_text().strip() == "4" and (ckpts / "iter_0000008.tmp").is_dir()

        wait_for(second_save_in_flight, 240, job, "the second background save")
        os.killpg(job.pid, signal.SIGKILL)  # agent, workers and writer processes at once
        job.wait()
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        log.close()
    time.sleep(0.5)
    assert (ckpts / "latest").read_text().strip() == "4"
    assert complete(ckpts / "iter_0000004")
    assert not (ckpts / "iter_0000008").exists()  # only the .tmp, which nothing points to
