"""CorpusIndex.fetch and the locator (the loader's per-task gathers) on a real corpus."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

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


@pytest.mark.parametrize("source", ["default", "pread", "mapped"])
def test_fetch_returns_each_document_where_the_index_says(demo_shards, monkeypatch, source):
    # lookup_index reads an index by pread or through its mapping; both must give what the
    # mapped numpy arrays say (_check's reference).
    from glotta.data.corpus_index import CorpusIndex
    from glotta.data.shard_index import ShardIndex

    if source == "pread":
        monkeypatch.setattr(CorpusIndex, "DENSE", 1 << 40)
        monkeypatch.setattr(ShardIndex, "SMALL", 0)
    elif source == "mapped":
        monkeypatch.setattr(CorpusIndex, "DENSE", 1)
    index = build_corpus_index([(p, None) for p in list_shards(demo_shards)], set())
    every = np.concatenate([(np.int64(s) << 32) | np.arange(idx.docs, dtype=np.int64) for s, idx in enumerate(index.indexes)])
    assert len(index.indexes) > 3 and len(every) > 500
    rng = np.random.default_rng(5)
    sets = [every[:0], every[:1], every[-1:], every, every[::-1], np.repeat(every[:3], 4)]
    sets += [rng.choice(every, size=int(rng.integers(1, 300)), replace=bool(k % 2)) for k in range(40)]
    for ids in sets:
        if source == "pread":
            for ix in index.indexes:
                ix.release_mapping()  # unmapped (the reference below maps them again)
        _check(index, ids, index.fetch(ids))


def test_locator_with_exclusions_reads_the_kept_documents(demo_shards):
    # Shards with excluded documents find the k-th document through their kept lists.
    paths = list_shards(demo_shards)
    full = build_corpus_index([(p, None) for p in paths], set())
    rng = np.random.default_rng(11)
    dropped = {f"{full.names[s]}/{k}" for s in (0, 2) for k in rng.choice(full.indexes[s].keys(), 25, replace=False)}
    index = build_corpus_index([(p, None) for p in paths], dropped)
    assert index.kept and set(index.kept) == {0, 2}
    langs = sorted(index.tables)
    locate = index.locator(langs)
    for li, lang in enumerate(langs):
        n = index.tables[lang].docs
        got, task = locate.task(np.full(n, li), np.arange(n))
        names = [index.doc_id(int(g)) for g in got]
        assert not set(names) & dropped and len(set(names)) == n
        _check(index, got, task)
    every = {i for i in full.doc_ids()}
    assert set(index.doc_ids()) == every - dropped


def _damaged_index_cases(conn, paths, blobs) -> None:
    """Child of the fuzz test below: each case writes a damaged copy of shard 0's index after
    start-up and looks documents up by pread; sends (case, outcome)."""
    from glotta.data.corpus_index import CorpusIndex
    from glotta.data.shard_index import ShardIndex
    from glotta.errors import DataError

    CorpusIndex.DENSE, ShardIndex.SMALL = 1 << 40, 0  # pread: nothing mapped that a truncation could fault
    for i, blob in enumerate(blobs):
        index = build_corpus_index([(p, None) for p in paths], set())
        ix = index.indexes[0]
        good = Path(ix.path).read_bytes()
        Path(ix.path).write_bytes(blob)
        outcome = "ok"
        try:
            try:
                task = index.fetch((np.int64(0) << 32) | np.arange(ix.docs, dtype=np.int64))
                assert task.n == ix.docs == len(task.key_ends) and len(task.key_blob) == int(task.key_ends[-1])
            except DataError as e:
                outcome = "named" if Path(ix.path).name in str(e) else f"unnamed: {e}"
            langs = sorted(index.tables)
            for li in range(len(langs)):
                try:
                    index.locator(langs).task(np.full(3, li), np.arange(3))
                except DataError as e:
                    if ".idx" not in str(e):
                        outcome = f"unnamed: {e}"
        except Exception as e:  # anything else is a failure the parent reports
            outcome = f"crash: {type(e).__name__}: {e}"
        finally:
            Path(ix.path).write_bytes(good)
        conn.send((i, outcome))


def test_damaged_or_truncated_index_files_raise_data_errors_naming_them(demo_shards, tmp_path):
    # Fuzz: 30 damaged copies of a real index (truncations; bytes flipped in the by_lang,
    # offset and key arrays), read by pread after start-up, each in a forked child with a time
    # limit: a DataError naming the file or a task of the right shape, never a crash or a hang.
    import shutil

    from case_limit import run_cases  # tests/data

    shutil.copytree(demo_shards, tmp_path / "s")
    paths = list_shards(tmp_path / "s")
    ix = build_corpus_index([(p, None) for p in paths], set()).indexes[0]
    good = Path(ix.path).read_bytes()
    rng = np.random.default_rng(2)
    blobs = [good[: int(rng.integers(16, len(good)))] for _ in range(10)]
    for case in range(20):
        blob = bytearray(good)
        lo = ix.layout[0] if case % 2 else ix.layout[1]  # by_lang, or offset/key arrays on
        for at in rng.integers(lo, len(blob), 8):
            blob[at] ^= int(rng.integers(1, 256))
        blobs.append(bytes(blob))
    out = run_cases(_damaged_index_cases, (paths, blobs), [f"case {i}" for i in range(len(blobs))], 10.0, "index lookup")
    bad = {i: o for i, o in out.items() if o not in ("ok", "named")}
    assert not bad, bad
    assert all(out[i] == "named" for i in range(10))  # every truncation is caught
    assert sum(o == "named" for o in out.values()) > 10  # and some flips are


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


def test_index_mappings_are_bounded_by_bytes_as_well_as_count(demo_shards, monkeypatch):
    """The LRU keeps at most max_bytes of mapped index files (the bound on the RSS their pages
    can add), evicting least recently used first; what it evicts reads the same when re-mapped."""
    from glotta.data import shard_index

    index = build_corpus_index([(p, None) for p in list_shards(demo_shards)], set())
    sizes = [os.stat(ix.path).st_size for ix in index.indexes]
    cache = shard_index._MapCache(size=4096, max_bytes=sizes[0] + sizes[1])
    monkeypatch.setattr(shard_index, "_MAPS", cache)
    for ix in index.indexes:
        ix.release_mapping()
    first = [ix.cols()["offset"].tolist() for ix in index.indexes]
    assert 1 <= len(cache._maps) <= 2 < len(index.indexes)
    assert cache._bytes == sum(len(m) for m, _ in cache._maps.values()) <= cache.max_bytes
    assert list(cache._maps) == [ix.path for ix in index.indexes][-len(cache._maps):]  # the newest stay
    assert [ix.cols()["offset"].tolist() for ix in index.indexes] == first and all(first)


def test_locator_finds_the_kth_document_of_each_language(demo_shards):
    # Against a plain walk over the language tables: shard by shard, by_lang order.
    paths = list_shards(demo_shards)
    index = build_corpus_index([(p, None) for p in paths], set())
    langs = sorted(index.tables)
    locate = index.locator(langs)
    want: dict[int, list[int]] = {}
    for li, lang in enumerate(langs):
        t = index.tables[lang]
        for s, ll in zip(t.shards.tolist(), t.local.tolist()):
            idx = index.indexes[s]
            start = idx.lang_start(ll)
            want.setdefault(li, []).extend((s << 32) | int(j) for j in idx.cols()["by_lang"][start : start + idx.header["lang_docs"][ll]])
    rng = np.random.default_rng(3)
    lang = rng.integers(0, len(langs), 500)
    k = np.array([rng.integers(0, len(want[int(li)])) for li in lang])
    assert locate(lang, k).tolist() == [want[int(li)][int(kk)] for li, kk in zip(lang, k)]
    assert locate(lang[:0], k[:0]).tolist() == []


def test_one_read_per_task_returns_texts_in_task_order(demo_shards, sp_model):
    # Documents of many shards, interleaved and shuffled: each text is the one iter_samples reads.
    # (The readers' budgets: tests/data/test_shard_files.py.)
    from glotta.data import iter_samples
    from glotta.data.tokenize import Encoder

    paths = list_shards(demo_shards)
    index = build_corpus_index([(p, None) for p in paths], set())
    text = {(s, k): smp.text.encode() for s, p in enumerate(paths) for k, smp in enumerate(iter_samples(p))}
    keys = {(s, smp.key): k for s, p in enumerate(paths) for k, smp in enumerate(iter_samples(p))}
    every = np.concatenate([(np.int64(s) << 32) | np.arange(idx.docs, dtype=np.int64) for s, idx in enumerate(index.indexes)])
    ids = np.random.default_rng(9).permutation(every)[:200]
    enc = Encoder(index.shards, str(sp_model))
    task = index.fetch(ids)
    assert len(task.shards) > 2
    texts, status = enc._read(task)
    assert status.tolist() == [0] * len(ids)
    for g, t in zip(ids.tolist(), texts):
        s, j = g >> 32, g & 0xFFFFFFFF
        assert t == text[(s, keys[(s, index.indexes[s].keys()[j])])]
    enc.close()
