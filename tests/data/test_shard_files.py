"""ShardFiles (csrc/tar.cpp): a tokenizer worker's readers keep their shard files open between
tasks, never more than their budget, and read exactly what a fresh reader reads."""
from __future__ import annotations

import gc
import hashlib
import os
import shutil
import signal
import threading
import time

import numpy as np
import pytest

from glotta.data import iter_samples, list_shards
from glotta.data.corpus_index import build_corpus_index
from glotta.data.demo_corpus import build_demo_corpus
from glotta.data.tokenize import Encoder, fd_budget
from glotta.errors import DataError


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory):
    """~30 shards of 8 documents in 10 languages (a task of 60 documents touches most of them)."""
    out = tmp_path_factory.mktemp("many_shards")
    build_demo_corpus(out, langs=["en", "de", "fr", "es", "ru", "el", "ja", "zh", "hi", "ar"], max_docs_per_lang=24, shard_samples=8)
    return out


def _shard_fds(shards) -> list[str]:
    """Targets of this process's descriptors that are one of `shards` (or such a file, replaced),
    by full path: other tests' shard sets use the same file names."""
    want = {os.path.realpath(s) for s in shards}
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.removesuffix(" (deleted)") in want:
            out.append(target)
    return out


def _texts(paths):
    return {(s, smp.key): smp.text.encode() for s, p in enumerate(paths) for smp in iter_samples(p)}


def _tasks(index, size, seed):
    every = np.concatenate([(np.int64(s) << 32) | np.arange(ix.docs, dtype=np.int64) for s, ix in enumerate(index.indexes)])
    ids = np.random.default_rng(seed).permutation(every)
    return [ids[i : i + size] for i in range(0, len(ids), size)]


@pytest.mark.parametrize("max_open", [1, 3, 1000])
def test_a_worker_keeps_at_most_max_open_shard_files_and_reads_every_text(many_shards, sp_model, max_open):
    paths = list_shards(many_shards)
    assert len(paths) >= 25
    index = build_corpus_index([(p, None) for p in paths], set())
    want = _texts(paths)
    enc = Encoder(index.shards, str(sp_model), max_open=max_open)
    seen = 0
    for ids in _tasks(index, 60, seed=max_open):
        task = index.fetch(ids)
        assert len(task.shards) > 3  # more shards than the small budgets
        texts, status = enc._read(task)
        assert status.tolist() == [0] * len(ids)
        for g, t in zip(ids.tolist(), texts):
            s, j = g >> 32, g & 0xFFFFFFFF
            assert t == want[(s, index.indexes[s].keys()[j])]
        assert enc.files.open_files == len(_shard_fds(paths)) <= max_open
        seen += len(ids)
    assert seen == sum(ix.docs for ix in index.indexes)
    assert enc.files.open_files == min(max_open, len(paths))  # kept between tasks, up to the budget
    enc.close()
    assert _shard_fds(paths) == []


def _first_shard_reader(many_shards, sp_model, tmp_path):
    """A copy of the set (the test may damage it), its index and texts, a worker keeping every
    file open, and the ids of the first shard's documents."""
    shards = tmp_path / "set"
    shutil.copytree(many_shards, shards)
    paths = list_shards(shards)
    index = build_corpus_index([(p, None) for p in paths], set())
    enc = Encoder(index.shards, str(sp_model), max_open=1000)
    ids = (np.int64(0) << 32) | np.arange(index.indexes[0].docs, dtype=np.int64)
    return paths, index, _texts(paths), enc, ids


def test_a_kept_descriptor_is_reused_by_the_next_task(many_shards, sp_model, tmp_path):
    # A shard replaced (renamed over) after a task read it: the worker still holds the first file
    # (its link reads "(deleted)"), so the next task did not open the shard again; the old file is
    # the one the index describes, and its texts come back unchanged.
    paths, index, want, enc, ids = _first_shard_reader(many_shards, sp_model, tmp_path)
    first, _ = enc._read(index.fetch(ids))
    shutil.copy(paths[0], tmp_path / "copy.tar")
    os.replace(tmp_path / "copy.tar", paths[0])
    assert [t.endswith(" (deleted)") for t in _shard_fds(paths)] == [True]
    again, status = enc._read(index.fetch(ids))
    assert again == first == [want[(0, k)] for k in index.indexes[0].keys()]
    assert status.tolist() == [0] * len(ids)
    enc.close()


def test_a_kept_file_cut_in_place_is_an_error_naming_it_when_a_read_passes_the_cut(many_shards, sp_model, tmp_path):
    # A kept descriptor is not stat-ed again at the next task: the shard, cut in place between two
    # tasks, still gives the documents before the cut unchanged (those whose reads end before
    # it), and the first read past it is a DataError naming the shard (a short pread), never a
    # shorter text or a crash.
    paths, index, want, enc, ids = _first_shard_reader(many_shards, sp_model, tmp_path)
    enc._read(index.fetch(ids))
    assert len(_shard_fds(paths)) == 1
    offsets = index.fetch(ids).offsets  # fetch groups by shard, task order inside: entry i is document i
    cut = int(offsets[len(ids) // 2])  # the middle document's header starts here
    os.truncate(paths[0], cut)
    keys = index.indexes[0].keys()
    # Documents whose first read (a header and 4 KiB behind it) ends before the cut.
    early = [i for i in range(len(ids) // 2) if int(offsets[i]) + 4096 <= cut]
    assert early
    before, status = enc._read(index.fetch(ids[early]))
    assert before == [want[(0, keys[i])] for i in early] and status.tolist() == [0] * len(early)
    with pytest.raises(DataError, match=rf"{paths[0].name}: the shard ends at byte {cut}, before its size \d+ .*changed after indexing"):
        enc._read(index.fetch(ids[len(ids) // 2 :]))
    enc.close()


def test_readers_beyond_max_readers_are_dropped_after_the_task_not_during_it(many_shards, sp_model, monkeypatch):
    paths = list_shards(many_shards)
    index = build_corpus_index([(p, None) for p in paths], set())
    want = _texts(paths)
    monkeypatch.setattr(Encoder, "MAX_READERS", 2)
    enc = Encoder(index.shards, str(sp_model), max_open=4)
    ids = _tasks(index, 100, seed=5)[0]
    task = index.fetch(ids)
    assert len(task.shards) > 2
    texts, status = enc._read(task)
    assert enc.files.readers == 2 and enc.files.open_files <= 2  # trimmed back after the call
    assert [want[(g >> 32, index.indexes[g >> 32].keys()[g & 0xFFFFFFFF])] for g in ids.tolist()] == texts
    enc.close()


def test_fd_budget_shares_half_the_soft_limit_among_the_workers(monkeypatch):
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 4096))
    assert fd_budget(2) == 240 and fd_budget(0) == fd_budget(1) == 480
    monkeypatch.setattr(resource, "getrlimit", lambda which: (64, 64))
    assert fd_budget(64) == 1  # never zero
    monkeypatch.setattr(resource, "getrlimit", lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert fd_budget(2) == 4096


def test_a_loader_whose_worker_failed_closes_its_files_at_close(many_shards, sp_model, tmp_path):
    # The worker's DataError travels to the caller with its traceback, and that traceback holds
    # the worker's frames and so its Encoder (a cycle, freed only by the garbage collector). The
    # loader closes its thread workers' Encoders itself: their files close at close(), not at the
    # next full collection (with the collector off here, as it may well be for a while in a trainer).
    from glotta.data.loader import TokenLoader
    from glotta.errors import DataError

    shards = tmp_path / "set"
    shutil.copytree(many_shards, shards)
    paths = list_shards(shards)
    gc.collect()
    gc.disable()
    try:
        ld = TokenLoader(str(shards), str(sp_model), 64, 2, mix={"method": "natural", "exhausted": "drop"}, num_workers=2, docs_per_task=4)
        first = next(iter(ld))  # the workers hold files now
        assert first["tokens"].shape == (2, 64) and _shard_fds(paths)
        for p in paths:
            os.truncate(p, 1024)  # every shard cut: the next task's read fails
        with pytest.raises(DataError, match="changed after indexing") as caught:
            for _ in ld:
                pass
        ld.close()
        assert caught.value.__traceback__ is not None  # still holding the frames
        assert _shard_fds(paths) == []
    finally:
        gc.enable()


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_the_loader_gives_the_same_batches_with_one_open_file_per_worker(many_shards, sp_model, monkeypatch, worker_type):
    from glotta.data import loader as loader_mod

    def run() -> str:
        h = hashlib.sha256()
        with loader_mod.TokenLoader(
            str(many_shards), str(sp_model), 64, 2, mix={"method": "natural", "exhausted": "drop"}, num_workers=2,
            worker_type=worker_type, docs_per_task=40,
        ) as ld:  # fmt: skip
            for b in ld:
                h.update(b["tokens"].numpy().tobytes() + b["position_ids"].numpy().tobytes())
                h.update("\n".join(b["doc_ids"]).encode())
        return h.hexdigest()

    default = run()
    from glotta.data import tokenize

    monkeypatch.setattr(tokenize, "fd_budget", lambda workers: 1)
    assert run() == default


def test_loaders_alive_at_once_share_one_descriptor_budget(many_shards, sp_model, tmp_path):
    # Train, validation and test loaders iterated together under `ulimit -n 160` (2 workers each):
    # the six workers share half of it, (160 - 64) // 2 = 48 shard files, 8 each; the process
    # never holds more, and every loader reads its whole epoch. With a budget per loader instead
    # (half the limit each) they could hold 144 and the process would reach its limit.
    import json
    import subprocess
    import sys

    script = tmp_path / "three.py"
    script.write_text(
        f"""
import json, os, resource
resource.setrlimit(resource.RLIMIT_NOFILE, (160, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from glotta.data.loader import TokenLoader
from glotta.data.tokenize import _ENCODERS
names = {{p for p in os.listdir({str(many_shards)!r}) if p.endswith(".tar")}}
def shard_fds():
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.path.basename(os.readlink("/proc/self/fd/" + fd)) in names
        except OSError:
            pass
    return n
loaders = [TokenLoader({str(many_shards)!r}, {str(sp_model)!r}, 64, 2, mix={{"method": "natural", "exhausted": "drop"}},
                       num_workers=2, docs_per_task=40, seed=s) for s in range(3)]
its = [iter(ld) for ld in loaders]
most, batches, left = 0, [0, 0, 0], {{0, 1, 2}}
while left:
    for i in sorted(left):
        try:
            next(its[i])
            batches[i] += 1
        except StopIteration:
            left.discard(i)
        most = max(most, shard_fds())
budgets = sorted(e.files.max_open for e in _ENCODERS)
for ld in loaders:
    ld.close()
print(json.dumps({{"most": most, "budgets": budgets, "batches": batches, "after_close": shard_fds()}}))
"""
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["budgets"] == [8] * 6
    assert 8 < got["most"] <= 48  # more than one worker's share was in use, never more than the whole
    assert min(got["batches"]) > 10 and got["after_close"] == 0


def test_a_forked_process_does_not_wait_on_the_parents_workers(many_shards, sp_model, tmp_path):
    # A worker of the parent holds its ShardFiles mutex while it reads (here: blocked opening a
    # FIFO that stands in for a slow shard). A process forked then (a loader's process workers,
    # start_method="fork") inherits that Encoder with its mutex held and no thread to release it.
    # Its first Encoder must not touch the parent's (before: set_max_open waited forever).
    from glotta.data import tokenize

    fifo = tmp_path / "slow.tar"
    os.mkfifo(fifo)
    parent = Encoder([str(fifo)], str(sp_model))
    parent.files.max_open = 1  # not the share a second Encoder would give: old code reset it in the child
    got = []

    def read():  # the shard turns out empty once the FIFO opens: no sample at offset 0 (status 3)
        got.append(parent.files.read_texts([0], np.zeros(1, np.int32), np.zeros(1, np.int64), np.zeros(1, np.uint64), b"k", np.ones(1, np.int64), None)[1].tolist())

    reading = threading.Thread(target=read, daemon=True)
    reading.start()
    time.sleep(0.2)  # the reader is blocked in open(), holding the mutex
    paths = [str(p) for p in list_shards(many_shards)]
    pid = os.fork()
    if pid == 0:  # the child: no pytest here, only an exit code
        try:
            enc = Encoder(paths, str(sp_model))
            code = 0 if list(tokenize._ENCODERS) == [enc] else 3
        except BaseException:
            code = 4
        os._exit(code)
    deadline = time.monotonic() + 30
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    with open(fifo, "wb"):  # let the parent's reader go
        pass
    reading.join(10)
    parent.close()
    assert got == [[3]]
    assert done[0] != 0, "the forked process hung on the parent's worker"
    assert os.waitstatus_to_exitcode(done[1]) == 0
