"""The store indexed by origin hash: a rank keeps only a few buckets loaded and decides exactly
as with the whole store; the index follows the JSONL parts."""
from __future__ import annotations

import random

from glotta.data import Sample
from glotta.pruning.consent import ConsentFilter, DecideConfig, Snapshot, SnapshotStore
from glotta.pruning.consent.store_index import IndexedStore, build_index, index_current, open_store

BODIES = ["User-agent: *\nDisallow: /private\n", "User-agent: GPTBot\nDisallow: /\n", "User-agent: *\nAllow: /\n"]


def test_indexed_store_decides_like_the_whole_store(tmp_path):
    rnd = random.Random(3)
    snaps = [Snapshot(f"https://h{o}.example", f"202{y}-01-01", 200, rnd.choice(BODIES), f"s{o}{y}", "t")
             for o in range(300) for y in range(rnd.randint(1, 3))]
    store = tmp_path / "store"
    SnapshotStore.append(store / "import.jsonl", snaps)
    assert not index_current(store)
    meta = build_index(store, buckets=16)
    assert meta["origins"] == 300 and index_current(store)
    lazy = IndexedStore(store, max_buckets=2)
    full = SnapshotStore.load(store)
    cfg = DecideConfig(cache_origins=50)  # tiny caches: cleared many times on the way
    a, b = ConsentFilter(lazy, cfg), ConsentFilter(full, cfg)
    for i in range(1500):
        o, path = rnd.randrange(320), rnd.choice(["/", "/private/x", "/a"])
        doc = Sample(str(i), "t", {"url": f"https://h{o}.example{path}", "crawl_date": f"202{rnd.randint(0, 3)}-06-01"}, "s.tar")
        assert a(doc) == b(doc), doc.meta
        assert len(lazy.loaded) <= 2
    assert lazy.bucket_loads > 16  # buckets were evicted and loaded again
    SnapshotStore.append(store / "fetch.jsonl", snaps[:1])  # a new part: the index is stale, rank 0 rebuilds it
    assert not index_current(store)
    assert isinstance(open_store(store, rank=0, world_size=2), IndexedStore) and index_current(store)
