"""The store indexed by origin hash: a rank keeps only a few buckets loaded and decides exactly
as with the whole store; the index follows the JSONL parts."""
from __future__ import annotations

import random
import shutil

import pytest

from glotta.data import Sample
from glotta.pruning.consent import ConsentFilter, DecideConfig, Snapshot, SnapshotStore
from glotta.errors import DataError
from glotta.pruning.consent.store_index import (IndexConfig, IndexedStore, build_index, index_current,
                                                  index_state, open_store, run_index)

BODIES = ["User-agent: *\nDisallow: /private\n", "User-agent: GPTBot\nDisallow: /\n", "User-agent: *\nAllow: /\n"]


def test_indexed_store_decides_like_the_whole_store(tmp_path):
    rnd = random.Random(3)
    snaps = [Snapshot(f"https://h{o}.example", f"202{y}-01-01", 200, rnd.choice(BODIES), f"s{o}{y}", "t")
             for o in range(300) for y in range(rnd.randint(1, 3))]
    store = tmp_path / "store"
    SnapshotStore.append(store / "import.jsonl", snaps)
    assert not index_current(store)
    meta = build_index(store, buckets=16, spill_bytes=2048)  # spills many times on the way: same index
    assert meta["origins"] == 300 and meta["spilled_buckets"] == 16 and index_current(store)
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
    SnapshotStore.append(store / "fetch.jsonl", snaps[:1])  # a new part: the index is stale and refused
    assert index_state(store)[0] == "stale"
    for rank in (0, 1):
        with pytest.raises(DataError, match="stale.*glotta consent index --store"):
            open_store(store, rank=rank, world_size=2)
    res = run_index(IndexConfig(store=store))
    assert res["was"] == "stale" and res["captures"] == len(snaps) + 1 and index_current(store)
    assert isinstance(open_store(store, rank=0, world_size=2), IndexedStore)
    with open(store / "fetch.jsonl", "a") as f:
        f.write('{"origin": "https://torn')  # a fetch killed mid-line: counted, or an error with --strict
    with pytest.raises(DataError, match="torn"):
        run_index(IndexConfig(store=store, strict=True))
    assert run_index(IndexConfig(store=store))["torn_lines"] == 1


def test_missing_index_is_built_by_rank_0_and_a_copy_stays_current(tmp_path):
    store = tmp_path / "store"
    SnapshotStore.append(store / "import.jsonl", [Snapshot("https://a.example", "2024-01-01", 200, BODIES[1], "x", "t")])
    assert index_state(store)[0] == "missing"
    assert isinstance(open_store(store, rank=0, world_size=1), IndexedStore) and index_current(store)
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)  # new mtimes, same content: the hash still matches
    assert index_current(copy)
