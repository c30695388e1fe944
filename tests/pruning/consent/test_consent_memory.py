"""Memory of `consent filter` does not follow the number of documents: after N documents and
after 4N more over the same origins, the Python heap, every cache and the audit buffer are the
same size (all bounded by their caps). Documents have unique paths and keys, so anything kept
per document (or per distinct path) would show."""
from __future__ import annotations

import gc
import random
import tracemalloc

import pyarrow.parquet as pq

from glotta.data import Sample
from glotta.pruning.consent import ConsentFilter, DecideConfig, Snapshot, SnapshotStore
from glotta.pruning.consent.audit import AuditWriter

BODIES = [
    "User-agent: *\nDisallow: /admin/\nDisallow: /*?sort=\nDisallow: /*/print$\nSitemap: https://{h}/s.xml\n",
    "User-agent: GPTBot\nDisallow: /private/\n\nUser-agent: *\nDisallow: /tmp/\nDisallow: /a/rather/long/plain/rule/\n",
    "User-agent: *\nDisallow:\n",
    "User-agent: CCBot\nDisallow: /\n",
    None,
]


def _docs(start: int, n: int, origins: int, rnd: random.Random):
    for j in range(start, start + n):
        o = rnd.randrange(origins)
        url = f"https://h{o}.example/{rnd.choice(['admin', 'news', 'private', 'tmp'])}/{j}" + rnd.choice(["", "?sort=1", "/print"])
        yield Sample(f"k{j}", "text", {"url": url, "lang": "en", "crawl_date": rnd.choice(["2023-06-01", "2024-06-01"])}, "s.tar")


def test_filter_memory_is_flat_in_the_number_of_documents(tmp_path):
    rnd = random.Random(5)
    origins = 400
    snaps = []
    for o in range(origins):
        for date in ("2023-01-01", "2024-01-01"):
            body = rnd.choice(BODIES)
            snaps.append(Snapshot(f"https://h{o}.example", date, 404 if body is None else 200,
                                  body and body.format(h=f"h{o}.example"), f"{o}{date}" if body else "", "t"))
    store = SnapshotStore(snaps)
    # Caps above what 400 origins need, so no cache churns between the two measurements: any
    # growth would be memory kept per document or per distinct path (the caps are exercised in
    # test_consent_store_index.py).
    store.max_cached = 1000
    cfg = DecideConfig(cache_origins=2000, cache_robots=1000)
    f = ConsentFilter(store, cfg)
    audit = AuditWriter(tmp_path / "audit.parquet", "training", "v", "crawl", batch_rows=500)
    n = 4000
    tracemalloc.start()
    try:
        sizes = []
        for start, count in ((0, n), (n, 3 * n)):  # N documents, then 3N more: 4N in all
            for s in _docs(start, count, origins, rnd):
                audit.add(s.shard, s.key, s.meta["url"], "en", 4, s.meta["crawl_date"], f(s))
            gc.collect()
            sizes.append((tracemalloc.get_traced_memory()[0], f.cache_sizes(), audit.buffered(), len(store._robots)))
    finally:
        tracemalloc.stop()
    audit.close()
    (heap_n, caches_n, buf_n, parsed_n), (heap_4n, caches_4n, buf_4n, parsed_4n) = sizes
    assert pq.read_metadata(tmp_path / "audit.parquet").num_rows == 4 * n  # every row written, none held
    for caches in (caches_n, caches_4n):
        assert caches["by_date"] <= cfg.cache_origins and caches["holding_robots"] <= cfg.cache_robots
        assert caches["plans"] <= cfg.cache_origins
        # one plan per origin (URL head) and one verdict per capture, never one per (origin, day):
        # 400 origins x 2 captures, documents on 2 days
        assert caches["plans"] <= origins and caches["by_snap"] == caches["by_date"] == 0
    assert parsed_n <= 1000 and parsed_4n <= 1000
    assert buf_n == buf_4n or max(buf_n, buf_4n) <= 500 * 9 + 1024  # rows held only until the next record batch
    # 3N more documents (12,000 distinct URLs) add no retained Python memory (an unbounded
    # per-path memo, as before, added ~0.4 MB here; a list of audit rows ~3 MB).
    assert heap_4n - heap_n < 192 * 1024, (heap_n, heap_4n)  # measured: +84 KB; +335 KB without the bound
    assert f.counters["total"] == 4 * n and f.counters["kept"] < 4 * n  # the documents were really decided
