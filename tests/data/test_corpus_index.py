"""CorpusIndex.fetch (the loader's per-task gather) against the per-shard loop it replaced."""
from __future__ import annotations

import numpy as np

from glotta.data import list_shards
from glotta.data.corpus_index import build_corpus_index


def fetch_per_shard(index, ids):
    """The code before session 5: a dozen numpy calls per shard, each over the whole task."""
    ids = np.asarray(ids, np.int64)
    shard, local = ids >> 32, ids & 0xFFFFFFFF
    groups = []
    for s in sorted(set(shard.tolist())):
        pos = np.flatnonzero(shard == s)
        j = local[pos]
        c = index.indexes[s].cols()
        hi = c["key_end"][j].astype(np.int64)
        lo = np.where(j > 0, c["key_end"][np.maximum(j - 1, 0)], 0).astype(np.int64)
        lens = hi - lo
        ends = np.cumsum(lens)
        gather = np.repeat(lo - (ends - lens), lens) + np.arange(int(ends[-1]) if len(ends) else 0)
        groups.append((int(s), pos, c["offset"][j].astype(np.int64), c["keys"][gather].tobytes(), ends))
    return len(ids), groups


def _same(a, b) -> bool:
    (na, ga), (nb, gb) = a, b
    if na != nb or len(ga) != len(gb):
        return False
    for x, y in zip(ga, gb):
        if x[0] != y[0] or x[3] != y[3] or not isinstance(x[3], bytes):
            return False
        for u, v in ((x[1], y[1]), (x[2], y[2]), (x[4], y[4])):
            if u.dtype != v.dtype or u.tobytes() != v.tobytes():
                return False
    return True


def test_fetch_equals_the_per_shard_loop_on_a_real_corpus(demo_shards):
    index = build_corpus_index([(p, None) for p in list_shards(demo_shards)], set())
    every = np.concatenate([(np.int64(s) << 32) | np.arange(idx.docs, dtype=np.int64) for s, idx in enumerate(index.indexes)])
    assert len(index.indexes) > 3 and len(every) > 500
    rng = np.random.default_rng(5)
    sets = [every[:0], every[:1], every[-1:], every, every[::-1], np.repeat(every[:3], 4)]
    sets += [rng.choice(every, size=int(rng.integers(1, 300)), replace=bool(k % 2)) for k in range(40)]
    for ids in sets:
        new, old = index.fetch(ids), fetch_per_shard(index, ids)
        assert _same(new, old), ids[:8]
    # Every document comes back once with its own key and offset (the oracle is not trivially equal).
    n, groups = index.fetch(every[::-1])
    assert n == len(every) and sorted(np.concatenate([g[1] for g in groups]).tolist()) == list(range(n))
    s, pos, offs, blob, ends = groups[1]
    keys = index.indexes[s].keys()
    local = (every[::-1][pos] & 0xFFFFFFFF).tolist()
    assert [blob[a:b].decode() for a, b in zip([0, *ends[:-1].tolist()], ends.tolist())] == [keys[j] for j in local]
    assert offs.tolist() == index.indexes[s].cols()["offset"][local].astype(np.int64).tolist()


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
