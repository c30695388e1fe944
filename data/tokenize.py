"""SentencePiece on the fly: reading + encoding documents in workers.

Where each document starts comes from the per-shard index (shard_index.py, corpus_index.py).
Workers read a task's documents by offset in one C++ call (ShardFiles.read_texts) and encode them in batches
(`sp.encode(list_of_texts)`), appending EOD. Workers are stateless: the
result of a task depends only on the task, which is what makes resume exact with any number
of workers.

This module must not import torch: spawned workers import it.
"""
from __future__ import annotations

import hashlib
import logging
import os
import resource
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm

from glotta.data.corpus_index import ReadTask
from glotta.data.native import ShardFiles, TarError, join_documents_i32, join_documents_u16, token_dtype
from glotta.errors import DataError

log = logging.getLogger(__name__)

# Per-document status returned by workers, counted when the loader consumes the document.
OK, UTF8_REPLACED, EMPTY = 0, 1, 2
STATUS_NAMES = {UTF8_REPLACED: "utf8_replaced", EMPTY: "empty_text"}
_CPP_SPACE_ONLY = 4  # read_texts: the text is only whitespace
_CPP_SIZE = 5  # read_texts: the text's size is not the indexed one


# ---- tokenizer ------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenizerInfo:
    path: str
    vocab_size: int
    eod_id: int
    pad_id: int
    sha256: str = ""  # of the model file, first 16 hex digits (the loader's resume fingerprint)


_OPEN: dict[tuple, tuple[spm.SentencePieceProcessor, "TokenizerInfo"]] = {}
_OPEN_LOCK = threading.Lock()


def open_tokenizer(path: str | Path) -> tuple[spm.SentencePieceProcessor, TokenizerInfo]:
    """The model, loaded once per process while the file is unchanged: the loader and its
    tokenizer threads share it (SentencePiece's encode is const and thread-safe)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"tokenizer file not found: {p}")
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    with _OPEN_LOCK:
        if key not in _OPEN:
            if len(_OPEN) >= 4:
                _OPEN.pop(next(iter(_OPEN)))
            _OPEN[key] = _load(p)
        return _OPEN[key]


def _load(p: Path) -> tuple[spm.SentencePieceProcessor, TokenizerInfo]:
    sp = spm.SentencePieceProcessor()
    try:
        sp.Load(str(p))
    except (OSError, RuntimeError) as e:
        raise DataError(f"{p}: not a SentencePiece model ({e})") from None
    eod = sp.eos_id()
    if eod < 0:
        raise DataError(f"{p}: the SentencePiece model has no EOS piece (train it with eos_id >= 0); it marks document ends")
    pad = sp.pad_id() if sp.pad_id() >= 0 else eod  # padding is masked out of the loss either way
    # Hashed here, once per process while the file is unchanged, not by every loader built.
    sha = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    return sp, TokenizerInfo(str(p), sp.get_piece_size(), eod, pad, sha)


# ---- reading + encoding (runs in workers, or in-process with num_workers=0) -----------------
class Encoder:
    # The worker's shards (csrc/tar.cpp ShardFiles): a pread reader per shard, made in C++ on its
    # first read (no Python object per shard), and up to `max_open` of them keeping their file
    # open between tasks (by default a share of the process's budget: _share_descriptors). Until session 9 a reader held its descriptor for one call
    # only: on 938 shards of 10 documents a worker opened, stat-ed and closed ~3,000 files an
    # epoch and made a Python reader per shard (together ~50 ms of the workers' CPU an epoch).
    # Readers never map their shard: pread measured the same CPU on bench/loader.py's corpora
    # without the mapped pages in RSS (session 7).
    MAX_READERS = 16384  # ~6 MiB per worker (~0.4 KiB a reader)

    def __init__(self, shards: list[str], tokenizer: str, strict: bool = False, max_open: int | None = None):
        self.shards, self.strict = shards, strict
        self.sp, self.info = open_tokenizer(tokenizer)
        self.dtype = token_dtype(self.info.vocab_size)
        # Nothing per shard in Python here: each worker thread makes one (a Path and its name per
        # shard cost ~9 ms of the first batch on 938 shards).
        self.files = ShardFiles(shards, max_open if max_open is not None else 1, self.MAX_READERS)
        if max_open is None:  # every loader's workers in this process share one budget
            _share_descriptors(self)
        self._numpy = True
        # SentencePiece runs a batch on threads of its own, and without a pool it starts (and
        # joins) a new one for every call, even with num_threads=1: one task's. This worker's own
        # pool keeps that thread, warm, from task to task: bench/loader.py's 6-shard corpus ran
        # 3.3-4.4% faster end to end (paired medians of 40 and 60 epochs), 19 shards 3.1% (20);
        # 938 shards no change (16). A sentencepiece without ThreadPool (older releases): a
        # thread per call, as before.
        pool = getattr(spm, "ThreadPool", None)
        self._sp_pool = {"thread_pool": pool(1)} if pool is not None else {}
        self._join = join_documents_u16 if self.dtype == np.uint16 else join_documents_i32

    def _read(self, task: ReadTask) -> tuple[list[bytes], np.ndarray]:
        """Text bytes (valid UTF-8) and status of the task's documents, in task order, read in one
        C++ call (which also checks each key and finds whitespace-only texts); Python only sees
        the exceptions."""
        try:
            # A shard that shrank is a TarError naming it: a reader checks the size of a file it
            # opens, and a read past the end of one it kept comes up short (a mapping would have
            # faulted, SIGBUS, instead).
            texts, codes = self.files.read_texts(task.shards, task.which, task.pos, task.offsets, task.key_blob, task.key_ends, task.sizes)
        except TarError as e:  # a shard that shrank or cannot be read, named
            raise DataError(str(e)) from None
        if not codes.any():  # the common case: every text valid and not blank
            return texts, codes
        entry = np.empty(task.n, np.int64)
        entry[task.pos] = np.arange(task.n)  # task position -> entry of the grouped arrays
        for i in np.flatnonzero((codes >= 1) & (codes != _CPP_SPACE_ONLY)).tolist():
            t, c, k = texts[i], int(codes[i]), int(entry[i])
            name = os.path.basename(self.shards[task.shards[task.which[k]]])  # only for the message
            key = task.key_blob[int(task.key_ends[k - 1]) if k else 0 : int(task.key_ends[k])].decode("utf-8", "replace")
            if c >= 2:
                if c == _CPP_SIZE:
                    found = f"its text is {t} bytes, the index says {int(task.sizes[k])}"
                else:
                    found = f"found {t!r}" if t else "no sample starts there"
                raise DataError(
                    f"{name}: expected document {key!r} at offset {int(task.offsets[k])} ({found}); the shard changed after indexing"
                )
            try:
                t.decode("utf-8")
            except UnicodeDecodeError as e:
                if self.strict:
                    raise DataError(f"{name}/{key}: invalid UTF-8 at byte {e.start}") from None
            texts[i] = t.decode("utf-8", errors="replace").encode("utf-8")  # U+FFFD: never whitespace-only
            codes[i] = UTF8_REPLACED
        codes[codes == _CPP_SPACE_ONLY] = EMPTY
        return texts, codes

    def encode(self, task: ReadTask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(flat tokens, length per document, status per document) for the documents of a task
        (CorpusIndex.fetch); EOD ends every document. Texts go to SentencePiece as UTF-8 bytes:
        no decode to str and re-encode."""
        texts, status = self._read(task)
        arrays = self._encode(texts)
        # One C++ pass: each kept document's ids + EOD, narrowed to the token dtype; an empty
        # document (status EMPTY) keeps length 0.
        flat, lengths = self._join(arrays, status != EMPTY, self.info.eod_id)
        return flat, lengths, status

    def _encode(self, texts: list[bytes]) -> list[np.ndarray]:
        """Ids per text as numpy arrays (sentencepiece >= 0.2.1 returns them without Python ints)."""
        if self._numpy:
            try:
                return self.sp.encode(texts, return_type="numpy", num_threads=1, **self._sp_pool)
            except (TypeError, ValueError):
                self._numpy = False
        return [np.asarray(x, np.int32) for x in self.sp.encode(texts, out_type=int, num_threads=1, **self._sp_pool)]

    def close(self) -> None:
        self.files.close()
        self._sp_pool = {}  # its thread ends with the pool
        with _ENCODERS_LOCK:
            _ENCODERS.discard(self)


def fd_budget(workers: int) -> int:
    """Shard files each of `workers` tokenizer workers may keep open between tasks: half of the
    process's soft RLIMIT_NOFILE (less 64 for everything else) shared by them, at least 1 and at
    most 4,096. With `ulimit -n 1024` and 2 workers: 240 each; a worker touching more shards
    reopens the least recently used."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(1, min(4096, (soft - 64) // 2 // max(1, workers)))


# Every live Encoder of this process (the workers of all its loaders: a trainer often holds its
# train, validation and test loaders at once): each gets fd_budget(how many there are), and a new
# one lowers the others' budgets, so together they stay within half the soft limit. A budget
# lowered under a worker takes effect after its task in progress (ShardFiles.max_open); a worker
# gone (its thread ended) leaves the others at their share until the next one arrives.
_ENCODERS: "weakref.WeakSet[Encoder]" = weakref.WeakSet()
_ENCODERS_LOCK = threading.Lock()


def _share_descriptors(new: "Encoder") -> None:
    with _ENCODERS_LOCK:
        _ENCODERS.add(new)
        live = list(_ENCODERS)
        share = fd_budget(len(live))
        for enc in live:
            if enc.files.max_open != share:
                enc.files.max_open = share


# A forked process (a loader's process workers with start_method="fork") starts with copies of
# the parent's Encoders but none of their threads. An Encoder whose worker was reading at the fork
# has its ShardFiles mutex held forever, and a lock another thread held stays held: before, a
# process-worker loader made while a thread-worker loader was reading hung in its first worker's
# start (set_max_open on a copied Encoder, waiting on that mutex). So the child forgets the
# parent's Encoders (its own workers share its own budget) and takes fresh locks. The parent's
# Encoders are also pinned across the fork: the child drops the other threads' thread-local data
# at the fork, and an Encoder destroyed there would stop its SentencePiece pool, whose thread
# does not exist in the child; pinned, they are never destroyed (multiprocessing's children end
# with os._exit).
_FORK_PINNED: list["Encoder"] = []


def _pin_encoders_before_fork() -> None:
    global _FORK_PINNED
    refs = list(_ENCODERS.data)  # a C-level copy of the weak references: no lock, no iteration
    _FORK_PINNED = [e for e in (r() for r in refs) if e is not None]


def _unpin_in_parent() -> None:
    global _FORK_PINNED
    _FORK_PINNED = []


def _after_fork_in_child() -> None:
    global _ENCODERS, _ENCODERS_LOCK, _OPEN_LOCK
    _ENCODERS = weakref.WeakSet()
    _ENCODERS_LOCK = threading.Lock()
    _OPEN_LOCK = threading.Lock()


os.register_at_fork(before=_pin_encoders_before_fork, after_in_parent=_unpin_in_parent, after_in_child=_after_fork_in_child)

_WORKER: Encoder | None = None
_THREAD = threading.local()


def worker_init(shards: list[str], tokenizer: str, strict: bool, registry: list["Encoder"] | None = None) -> None:
    """Pool initializer: one Encoder per process (process pool) or per thread (thread pool).
    `registry` (thread pools): the loader's list of its workers' Encoders, which it closes itself
    (a thread's Encoder outlives the thread while an exception's traceback still holds it, and
    with it the shard files it keeps open)."""
    global _WORKER
    enc = Encoder(shards, tokenizer, strict)
    if threading.current_thread() is threading.main_thread():
        _WORKER = enc
    else:
        _THREAD.encoder = enc
    if registry is not None:
        registry.append(enc)


def worker_encode(task: ReadTask):
    assert _WORKER is not None, "worker_init did not run"
    return _WORKER.encode(task)


def thread_encode(task: ReadTask):
    """The same in a thread pool: SentencePiece and the tar reader release the GIL."""
    return _THREAD.encoder.encode(task)
