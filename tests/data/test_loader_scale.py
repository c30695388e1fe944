"""Start-up and per-rank memory at scale, asserted structurally (bytes per document), not by time.

20,000 real documents in 20 shards, loaded as each of 8 data-parallel ranks: start-up reads the
index headers only (no tar is opened), the loader's in-memory index is O(shards x languages),
each rank tokenizes only its own lanes' documents, and the resume state does not grow with the
shard list.
"""
from __future__ import annotations

import json
import tracemalloc

import pytest

from glotta.data import Sample, ShardWriter, iter_samples, list_shards
from glotta.data import shard_index, shards
from glotta.data.corpus_index import _CACHE, build_corpus_index, open_corpus_index
from glotta.data.loader import TokenLoader
from glotta.data.manifest import Manifest
from glotta.data.shards import shard_entries

N_DOCS, N_SHARDS, DP = 20_000, 20, 8


@pytest.fixture(scope="module")
def big_set(demo_shards, tmp_path_factory):
    """20k documents: paragraphs of the demo corpus (real text, 10 languages), 1,000 per shard."""
    paras = [(s.lang, p) for sh in list_shards(demo_shards) for s in iter_samples(sh) for p in s.text.split("\n") if len(p) > 20]
    out = tmp_path_factory.mktemp("big")
    with ShardWriter(out, max_samples=N_DOCS // N_SHARDS) as w:
        for i in range(N_DOCS):
            lang, text = paras[i % len(paras)]
            w.write(Sample(key=f"d{i:06d}", text=f"{text} {i}", meta={"lang": lang, "url": f"https://example.org/{i}"}))
    Manifest(shards=w.written).save(out)
    return out


def test_startup_reads_headers_only_and_index_memory_is_per_shard_not_per_document(big_set, sp_model, monkeypatch):
    opened = []
    real = shards.open_reader
    monkeypatch.setattr(shard_index, "open_reader", lambda *a, **k: opened.append(a) or real(*a, **k))
    entries = shard_entries(big_set)
    build_corpus_index(entries[:1], set())  # warm up: first-call caches are not per-document costs
    tracemalloc.start()
    idx = build_corpus_index(entries, set())
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert opened == []  # every shard came with its index from the writer: no tar was read
    assert idx.documents == N_DOCS
    arrays = sum(a.nbytes for t in idx.tables.values() for a in (t.shards, t.ends, t.local))
    pairs = sum(len(t.shards) for t in idx.tables.values())
    assert pairs <= N_SHARDS * len(idx.tables)
    assert arrays == pairs * (4 + 8 + 4)  # 16 bytes per (shard, language) pair, nothing per document
    assert arrays / N_DOCS < 0.2
    # Everything it keeps (headers included) is per shard: a few KiB, whatever the shard holds
    # (the old full index kept ~155 B per document, ~238 B at its peak).
    assert kept / N_SHARDS < 8192, f"{kept / N_SHARDS:.0f} B kept per shard"
    assert peak - kept < 64 * 1024  # no transient per-document buffer either


def _kept(start) -> tuple[object, int, int]:
    tracemalloc.start()
    out = start()
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, kept, peak


def test_start_up_from_heads_idx_keeps_less_than_from_the_headers(big_set, monkeypatch):
    # The usual start-up (data/set_heads.py): one file for the set, no header dict made per shard.
    opened = []
    real = shards.open_reader
    monkeypatch.setattr(shard_index, "open_reader", lambda *a, **k: opened.append(a) or real(*a, **k))
    _CACHE.clear()
    open_corpus_index([str(big_set)], set())  # writes heads.idx if an earlier test did not
    _CACHE.clear()
    entries = shard_entries(big_set)
    headers, kept_headers, _ = _kept(lambda: build_corpus_index(entries, set()))
    idx, kept, peak = _kept(lambda: open_corpus_index([str(big_set)], set()))
    _CACHE.clear()
    assert opened == [] and idx.read_from == ["heads.idx"] and idx.documents == headers.documents == N_DOCS
    assert all(ix._header is None for ix in idx.indexes)  # built only when asked for
    # Per shard, the fixed costs of 20 shards included: ~1.9 KiB against ~3.1 KiB from the headers
    # (938 shards: ~1.3 against ~2.9 KiB, docs/loader.md).
    assert kept < kept_headers and kept / N_SHARDS < 4096, (kept / N_SHARDS, kept_headers / N_SHARDS)
    assert peak - kept < 64 * 1024


def test_each_of_8_ranks_touches_only_its_own_documents(big_set, sp_model):
    seen: dict[int, set[str]] = {}
    states = []
    for rank in range(DP):
        with TokenLoader(
            str(big_set), str(sp_model), seq_len=128, micro_batch_size=2, global_batch_size=2 * DP,
            dp_rank=rank, dp_size=DP, mix={"method": "natural"},
        ) as ld:  # fmt: skip
            assert ld.tokenized_docs == 0  # start-up tokenizes (and reads) nothing
            it = iter(ld)
            for _ in range(3):
                b = next(it)
                seen.setdefault(rank, set()).update(d for d in b["doc_ids"] if d)
            # A rank tokenizes a few tasks ahead of its lanes, never the corpus: far below N/DP.
            assert 0 < ld.tokenized_docs < N_DOCS / DP / 4
            states.append(ld.state_dict())
    for a in range(DP):
        for b in range(a + 1, DP):
            assert not seen[a] & seen[b]  # ranks never share a document
    st = json.dumps(states[0])
    assert len(st) < 2000  # the state holds a 16-character hash of the shard list, not 20 names
    assert states[0]["fingerprint"]["shards"] == states[1]["fingerprint"]["shards"]
    assert len(states[0]["fingerprint"]["shards"]) == 16


def _mapped_kib(folder) -> int:
    """RSS of this process's mappings of the shard files in `folder` (/proc/self/smaps)."""
    total, ours = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):  # a mapping's first line
                ours = len(head) > 5 and head[5].startswith(str(folder)) and head[5].endswith(".tar")
            elif ours and head[0] == "Rss:":
                total += int(head[1])
    return total


def test_the_loader_maps_no_shard_pages_sparse_or_dense(big_set, sp_model):
    """A default random reader preads its first 32 documents, then maps its file (asked for more,
    its pages stay mapped until drop_pages). The loader's workers read with pread only, so however
    densely a shard is read no shard page is mapped into the process (they stay in the page
    cache): the shard pages in RSS are 0 with a few documents per shard and with hundreds."""
    from glotta.data.shard_index import load_index

    path = list_shards(big_set)[0]
    idx = load_index(path)
    keys = [k.encode() for k in idx.keys()]
    offsets = idx.cols()["offset"].astype("uint64")

    def ask(reader, lo, hi):
        ends = [sum(map(len, keys[lo : i + 1])) for i in range(lo, hi)]
        texts, status = reader.texts(offsets[lo:hi], b"".join(keys[lo:hi]), ends)
        assert status.tolist() == [0] * (hi - lo)
        return texts

    r = shards.open_reader(path, sequential=False)
    first = ask(r, 0, 20)
    assert not r.mapped and _mapped_kib(big_set) == 0
    assert ask(r, 20, 60) and r.mapped and _mapped_kib(big_set) > 0  # served 60 > 32: mapped
    assert ask(r, 0, 20) == first  # the same bytes through the mapping
    r.drop_pages()
    assert _mapped_kib(big_set) == 0
    r.close()
    p = shards.open_reader(path, sequential=False, mapped=False)  # the loader's kind
    assert ask(p, 0, 60)[:20] == first and not p.mapped and _mapped_kib(big_set) == 0
    p.close()

    def run(batches: int, seq_len: int, mbs: int) -> tuple[int, int]:
        with TokenLoader(
            str(big_set), str(sp_model), seq_len=seq_len, micro_batch_size=mbs, global_batch_size=mbs,
            num_workers=0, mix={"method": "natural"},
        ) as ld:  # fmt: skip
            it = iter(ld)
            for _ in range(batches):
                next(it)
            return ld.tokenized_docs, _mapped_kib(big_set)

    docs, kib = run(3, 128, 2)  # a few documents per shard
    assert 0 < docs < 32 * N_SHARDS // 2 and kib == 0
    docs, kib = run(8, 1024, 4)  # dense: more than 32 documents per shard
    assert docs > 32 * N_SHARDS and kib == 0
