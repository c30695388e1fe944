"""global_state_dict over a real gloo process group: 2 ranks checkpoint, 1 rank resumes."""
from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
import torch
import torch.distributed as dist

from glotta.data.loader import TokenLoader

pytestmark = pytest.mark.distributed

ARGS = dict(seq_len=128, micro_batch_size=2, global_batch_size=4, mix={"method": "temperature"}, seed=3, packing="concat")


def _rank(rank, world, store, shards, model, out):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        ld = TokenLoader(shards, model, dp_rank=rank, dp_size=world, **ARGS)
        it = iter(ld)
        for _ in range(5):  # 5 global steps of 1 micro-batch per rank
            next(it)
        state = ld.global_state_dict()
        if rank == 0:
            torch.save(state, out)
        ld.close()
    finally:
        dist.destroy_process_group()


def test_two_ranks_checkpoint_one_rank_resumes(demo_shards, sp_model, tmp_path):
    ctx = mp.get_context("fork")
    out = tmp_path / "loader_state.pt"
    procs = [
        ctx.Process(target=_rank, args=(r, 2, tmp_path / "store", str(demo_shards), str(sp_model), out)) for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    state = torch.load(out, weights_only=False)
    assert sorted(e[0] for e in state["lanes"]) == [0, 1, 2, 3]
    with TokenLoader(str(demo_shards), str(sp_model), **ARGS) as ref:
        full = [b["tokens"].numpy() for _, b in zip(range(16), ref)]
    with TokenLoader(str(demo_shards), str(sp_model), **ARGS) as ld:
        ld.load_state_dict(state)
        rest = [b["tokens"].numpy() for _, b in zip(range(6), ld)]
    assert all(np.array_equal(a, b) for a, b in zip(rest, full[10:]))  # 5 steps x 2 micro-batches done
