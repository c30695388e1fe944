"""bench/prune_eval.py --quick end to end on the demo corpus (the CI mode of the pruning benchmark):
real proxy training, scoring, selection, stage-2 training per arm and seed, per-document held-out
loss, paired intervals; the null control (random with other selection seeds) must not "win"."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_quick_mode_runs_and_reports_intervals(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "prune_eval.py"), "--quick", "--work", str(tmp_path / "w"),
                        "--json", str(out), "--png", str(tmp_path / "r.png")],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    setup = res["setup"]
    assert setup["arms"] == ["random", "cat", "random_alt"] and setup["seeds"] == 2
    assert len(setup["langs"]) == 3
    for split in ("valid", "test"):
        c = res["results"]["sub"][split]
        assert c["corrected_for"] == 2 and c["seed_noise_known"]
        for arm in ("cat", "random_alt"):
            m = c["methods"][arm]
            assert set(m["langs"]) == set(setup["langs"])
            for iv in [m["mean"], m["worst"], *m["langs"].values()]:
                assert iv["low"] <= iv["delta"] <= iv["high"] and len(iv["seeds"]) == 2
        null = c["methods"]["random_alt"]
        assert not null["better_mean_and_worst"]
    d = res["decision"]["sub"]
    assert d["default"] in ("random", "cat", "random_alt") and isinstance(d["evidence"], bool)
    assert (tmp_path / "r.png").stat().st_size > 10_000
    assert "decision (sub)" in r.stdout and "| random (loss) |" in r.stdout
