"""CorpusIndex.fetch and the locator (the loader's per-task gathers) on a real corpus."""
from __future__ import annotations

import numpy as np

from glotta.data import list_shards
from glotta.data.corpus_index import build_corpus_index


def _check(index, ids, task) -> None:
    """Every document of the task comes back once, at its task position, with its own shard,
    key and byte offset from that shard's index; entries are grouped by shard."""
    n = len(ids)
    assert task.n == n and sorted(task.pos.tolist()) == list(range(n))
    assert task.which.dtype == np.int32 and task.pos.dtype == np.int64
    which = task.which.tolist()
    assert which == sorted(which) and task.shards == sorted(set(task.shards))  # grouped, shards ascending
    starts = [0, *task.key_ends[:-1].tolist()]
    for i in range(n):
        g = int(ids[task.pos[i]])
        s, j = g >> 32, g & 0xFFFFFFFF
        assert task.shards[which[i]] == s
        assert task.key_blob[starts[i] : int(task.key_ends[i])].decode() == index.indexes[s].keys()[j]
        assert int(task.offsets[i]) == int(index.indexes[s].cols()["offset"][j])
    # Within a shard the task order is kept (the reader walks forward where the task does).
    for k in set(which):
        at = task.pos[task.which == k].tolist()
        assert at == sorted(at)


def test_fetch_returns_each_document_where_the_index_says(demo_shards):
    index = build_corpus_index([(p, None) for p in list_shards(demo_shards)], set())
    every = np.concatenate([(np.int64(s) << 32) | np.arange(idx.docs, dtype=np.int64) for s, idx in enumerate(index.indexes)])
    assert len(index.indexes) > 3 and len(every) > 500
    rng = np.random.default_rng(5)
    sets = [every[:0], every[:1], every[-1:], every, every[::-1], np.repeat(every[:3], 4)]
    sets += [rng.choice(every, size=int(rng.integers(1, 300)), replace=bool(k % 2)) for k in range(40)]
    for ids in sets:
        _check(index, ids, index.fetch(ids))


def test_index_mappings_hold_no_file_descriptors_and_survive_eviction(demo_shards, monkeypatch):
    """The index LRU's mappings hold no descriptor (with Python's mmap each held one, so 'ulimit -n 64'
    and more than ~50 shards failed with EMFILE on the first task); evicted and re-mapped, an
    index reads the same."""
    import os

    from glotta.data import shard_index

    index = build_corpus_index([(p, None) for p in list_shards(demo_shards)], set())
    monkeypatch.setattr(shard_index._MAPS, "size", 2)
    before = len(os.listdir("/proc/self/fd"))
    first = [ix.cols()["offset"].tolist() for ix in index.indexes]
    kept = index.indexes[0].cols()["keys"]  # a view held past eviction keeps its mapping alive
    again = [ix.cols()["offset"].tolist() for ix in index.indexes]
    assert len(os.listdir("/proc/self/fd")) == before
    assert len(index.indexes) > 2 and first == again and all(first)
    assert kept.tobytes() == index.indexes[0].cols()["keys"].tobytes()
