"""Exact resume (any interruption point, with workers) and elastic resume across dp sizes."""
from __future__ import annotations

import numpy as np
import pytest
import sentencepiece as spm

from glotta.data import iter_samples, list_shards

from glotta.data.loader import TokenLoader

KEYS = ("tokens", "labels", "loss_mask", "position_ids", "lang_ids", "cu_seqlens")


def _loader(demo_shards, sp_model, **kw):
    args = dict(seq_len=96, micro_batch_size=2, mix={"method": "temperature", "exhausted": "drop"}, seed=7)
    args.update(kw)
    return TokenLoader(str(demo_shards), str(sp_model), **args)


def _same(a: dict, b: dict) -> bool:
    return all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in KEYS) and all(
        a[k] == b[k] for k in ("max_seqlen", "doc_langs", "doc_ids")
    )


def _take(it, n):
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("packing,workers", [("concat", 2), ("best_fit", 2), ("best_fit", 0)])
def test_resume_is_bitwise_identical(demo_shards, sp_model, packing, workers):
    with _loader(demo_shards, sp_model, packing=packing, num_workers=workers, global_batch_size=4) as ref:
        full = _take(iter(ref), 40)
    # Interrupt after a few batches, mid-step (odd counts) and later; resume in a fresh loader.
    for cut in (1, 7, 24):
        with _loader(demo_shards, sp_model, packing=packing, num_workers=workers, global_batch_size=4) as a:
            it = iter(a)
            head = _take(it, cut)
            state = a.state_dict()
            stats = a.stats()
        assert all(_same(x, y) for x, y in zip(head, full))
        # Resume with another worker count: workers are stateless, so nothing changes.
        with _loader(demo_shards, sp_model, packing=packing, num_workers=2 - workers, global_batch_size=4) as b:
            b.load_state_dict(state)
            drop = lambda st: {k: v for k, v in st.items() if k != "tokenized_documents"}  # noqa: E731 (per process)
            assert drop(b.stats()) == drop(stats)
            tail = _take(iter(b), 40 - cut)
        assert all(_same(x, y) for x, y in zip(tail, full[cut:])), f"resume after {cut} batches differs"


def test_thread_and_process_workers_give_identical_batches(demo_shards, sp_model):
    with _loader(demo_shards, sp_model, num_workers=2, worker_type="thread", global_batch_size=4) as a:
        threads = _take(iter(a), 20)
    with _loader(demo_shards, sp_model, num_workers=2, worker_type="process", global_batch_size=4) as b:
        procs = _take(iter(b), 20)
    assert all(_same(x, y) for x, y in zip(threads, procs))


ELASTIC = dict(seq_len=256, packing="concat", mix={"method": "natural", "exhausted": "drop", "langs": ["en", "de", "ja"]})


def _global_steps(demo_shards, sp_model, layout, steps_per_phase, gbs=8):
    """Run phases with the given dp sizes, handing all ranks' states over; global batches per step."""
    states, out = None, []
    for dp, n_steps in zip(layout, steps_per_phase):
        loaders = [
            _loader(demo_shards, sp_model, dp_rank=r, dp_size=dp, global_batch_size=gbs, num_batches=10_000, **ELASTIC)
            for r in range(dp)
        ]
        if states is not None:
            for ld in loaders:
                ld.load_state_dict(states)
        its = [iter(ld) for ld in loaders]
        per_rank = gbs // (2 * dp)  # micro-batches per rank per global step
        for _ in range(n_steps):
            out.append([next(it) for it in its for _ in range(per_rank)])  # ranks in order hold lanes in order
        states = [ld.state_dict() for ld in loaders]
        for ld in loaders:
            ld.close()
    return out


def _cat(rows, key):
    return np.concatenate([r[key].numpy() for r in rows])


def test_elastic_resume_2_1_4_same_global_batches_and_each_document_once(demo_shards, sp_model):
    steps = 150  # 8 rows of 256 tokens per step: enough to run the 240 documents dry
    ref = _global_steps(demo_shards, sp_model, [1], [steps])
    got = _global_steps(demo_shards, sp_model, [2, 1, 4], [20, 31, steps - 51])
    for k, (a, b) in enumerate(zip(ref, got)):
        for key in ("tokens", "labels", "loss_mask", "position_ids", "lang_ids", "cu_seqlens"):
            assert np.array_equal(_cat(a, key), _cat(b, key)), f"global step {k}: {key} differs"
    assert _cat(got[-1], "loss_mask").sum() == 0, "the corpus should have run dry"
    # Rebuild every document from the token region of its segments (concat rows overlap by one
    # token, so each token of a lane's stream is a token exactly once, except the lane's last).
    rebuilt: dict[str, list[int]] = {}
    for rows in got:
        for b in rows:
            flat = b["tokens"].numpy().reshape(-1)
            cu = b["cu_seqlens"].numpy()
            for i, doc in enumerate(b["doc_ids"]):
                if doc:
                    rebuilt.setdefault(doc, []).extend(flat[cu[i] : cu[i + 1]].tolist())
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    texts = {s.id: s.text for p in list_shards(demo_shards) for s in iter_samples(p) if s.lang in ("en", "de", "ja")}
    assert rebuilt.keys() == texts.keys()
    short = 0
    for doc, text in texts.items():
        want = sp.encode(text) + [sp.eos_id()]
        if rebuilt[doc] != want:
            assert rebuilt[doc] == want[:-1], f"{doc}: tokens lost or repeated"
            short += 1
    assert short <= 8  # at most the last document of each of the 8 lanes


def test_ranks_yield_equal_batches_and_disjoint_documents(demo_shards, sp_model):
    """Finite data, 2 ranks: both yield num_batches (padding once dry), together every document once."""
    lds = [
        _loader(demo_shards, sp_model, dp_rank=r, dp_size=2, global_batch_size=8, num_batches=300, num_workers=1, **ELASTIC)
        for r in range(2)
    ]
    seen, counts, tail_mask, tokenized = [], [], [], []
    for ld in lds:
        ids, n = set(), 0
        for b in ld:
            ids |= {d for d in b["doc_ids"] if d}
            n += 1
            last = b["loss_mask"].sum().item()
        seen.append(ids)
        counts.append(n)
        tail_mask.append(last)
        tokenized.append(ld.stats()["tokenized_documents"])
        ld.close()
    assert counts == [300, 300]
    assert tail_mask == [0, 0]  # both ran dry and padded up to num_batches
    assert not (seen[0] & seen[1])
    assert len(seen[0] | seen[1]) == 240
    assert tokenized == [len(seen[0]), len(seen[1])]  # each rank tokenizes only its own documents, once


def test_resume_from_a_schedule_snapshot_deep_into_the_run(demo_shards, sp_model, monkeypatch):
    """A tiny schedule window forces trimming, so the resume restarts from a snapshot, not slot 0."""
    from glotta.data.mixing import Schedule

    monkeypatch.setattr(Schedule, "CHUNK", 16)
    args = dict(packing="concat", global_batch_size=2, mix={"method": "temperature"}, seq_len=64)
    with _loader(demo_shards, sp_model, **args) as ref:
        full = _take(iter(ref), 500)
    with _loader(demo_shards, sp_model, **args) as a:
        _take(iter(a), 300)
        state = a.state_dict()
    assert state["schedule"]["pos"] >= 16  # the window moved: slots before it are gone
    with _loader(demo_shards, sp_model, **args) as b:
        b.load_state_dict(state)
        assert b.schedule._base == state["schedule"]["pos"]
        tail = _take(iter(b), 200)
    assert all(_same(x, y) for x, y in zip(tail, full[300:]))
