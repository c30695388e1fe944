"""SentencePiece on the fly: the document index, and reading + encoding documents in workers.

The index is one pass over the shards with the C++ tar reader: where each document starts
(shard, byte offset), its language and size. Exclude lists are applied here, so excluded
documents never enter the schedule. Workers then read documents by offset (TarReader.seek) and
encode them in batches (`sp.encode(list_of_texts)`), appending EOD. Workers are stateless: the
result of a task depends only on the task, which is what makes resume exact with any number
of workers.

This module must not import torch: spawned workers import it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sentencepiece as spm

from glotta.data.exclude import is_excluded
from glotta.data.native import TarError, TarReader, token_dtype
from glotta.errors import DataError

log = logging.getLogger(__name__)

# Per-document status returned by workers, counted when the loader consumes the document.
OK, UTF8_REPLACED, EMPTY = 0, 1, 2
STATUS_NAMES = {UTF8_REPLACED: "utf8_replaced", EMPTY: "empty_text"}


# ---- tokenizer ------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenizerInfo:
    path: str
    vocab_size: int
    eod_id: int
    pad_id: int


def open_tokenizer(path: str | Path) -> tuple[spm.SentencePieceProcessor, TokenizerInfo]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"tokenizer file not found: {p}")
    sp = spm.SentencePieceProcessor()
    try:
        sp.Load(str(p))
    except (OSError, RuntimeError) as e:
        raise DataError(f"{p}: not a SentencePiece model ({e})") from None
    eod = sp.eos_id()
    if eod < 0:
        raise DataError(f"{p}: the SentencePiece model has no EOS piece (train it with eos_id >= 0); it marks document ends")
    pad = sp.pad_id() if sp.pad_id() >= 0 else eod  # padding is masked out of the loss either way
    return sp, TokenizerInfo(str(p), sp.get_piece_size(), eod, pad)


# ---- document index -------------------------------------------------------------------------
@dataclass
class DocIndex:
    shards: list[str]  # shard paths
    shard: np.ndarray  # int32 per document
    offset: np.ndarray  # int64: TarReader offset of the document's first member
    nbytes: np.ndarray  # int64: UTF-8 bytes of the text
    lang: list[str]
    key: list[str]
    counters: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.names = [Path(s).name for s in self.shards]

    def doc_id(self, i: int) -> str:
        return f"{self.names[self.shard[i]]}/{self.key[i]}"


def build_index(shards: list[Path], exclude: set[str], strict: bool = False) -> DocIndex:
    """One pass over the shards: offset, language and size of every document not excluded."""
    counters: Counter = Counter()
    sh, off, nb, langs, keys = [], [], [], [], []

    def skip(reason: str, msg: str) -> None:
        if strict:
            raise DataError(msg)
        counters[reason] += 1
        log.warning(msg)

    for si, path in enumerate(shards):
        name = Path(path).name
        if name in exclude:
            counters["excluded_shards"] += 1
            continue
        try:
            reader = TarReader(str(path))
        except (OSError, RuntimeError) as e:
            skip("unreadable_shard", f"{path}: {e}")
            continue
        try:
            while True:
                at = reader.offset
                try:
                    raw = reader.read(1)
                except TarError as e:
                    skip("corrupt_shard", f"{path}: {e} (documents before the damage are kept)")
                    break
                if not raw:
                    break
                key, fields = raw[0]
                if is_excluded(exclude, name, key):
                    counters["excluded"] += 1
                    continue
                if "txt" not in fields:
                    skip("missing_text", f"{name}/{key}: sample has no .txt member (has: {sorted(fields)})")
                    continue
                lang = "und"
                if "json" in fields:
                    try:
                        meta = json.loads(fields["json"])
                        lang = (meta.get("lang") if isinstance(meta, dict) else None) or "und"
                    except (json.JSONDecodeError, UnicodeDecodeError) as e:
                        skip("bad_json", f"{name}/{key}: .json is not valid JSON: {e}")
                        continue
                sh.append(si)
                off.append(at)
                nb.append(len(fields["txt"]))
                langs.append(str(lang))
                keys.append(key)
        finally:
            for k, v in reader.counters().items():
                counters[k] += v
            reader.close()
    counters["indexed"] = len(keys)
    return DocIndex(
        shards=[str(p) for p in shards],
        shard=np.asarray(sh, np.int32),
        offset=np.asarray(off, np.int64),
        nbytes=np.asarray(nb, np.int64),
        lang=langs,
        key=keys,
        counters=counters,
    )


_INDEX_CACHE: dict[tuple, DocIndex] = {}


def cached_index(shards: list[Path], exclude: set[str], strict: bool = False) -> DocIndex:
    """build_index, remembered per process while the shard files are unchanged (size, mtime):
    a trainer that builds a fresh validation loader for every evaluation indexes once."""
    key = (
        tuple((str(p), os.stat(p).st_size, os.stat(p).st_mtime_ns) if os.path.exists(p) else (str(p),) for p in shards),
        hashlib.sha256("\n".join(sorted(exclude)).encode()).hexdigest(),
        strict,
    )
    if key not in _INDEX_CACHE:
        if len(_INDEX_CACHE) >= 8:
            _INDEX_CACHE.pop(next(iter(_INDEX_CACHE)))
        _INDEX_CACHE[key] = build_index(shards, exclude, strict)
    return _INDEX_CACHE[key]


# ---- reading + encoding (runs in workers, or in-process with num_workers=0) -----------------
class Encoder:
    def __init__(self, shards: list[str], tokenizer: str, strict: bool = False):
        self.shards, self.strict = shards, strict
        self.names = [Path(s).name for s in shards]
        self.sp, self.info = open_tokenizer(tokenizer)
        self.dtype = token_dtype(self.info.vocab_size)
        self._readers: dict[int, TarReader] = {}
        self._numpy = True

    def _text(self, shard: int, offset: int, key: str) -> tuple[str, int]:
        reader = self._readers.get(shard)
        if reader is None:
            reader = self._readers[shard] = TarReader(self.shards[shard])
        name = self.names[shard]
        try:
            reader.seek(int(offset))
            raw = reader.read(1)
        except (TarError, ValueError) as e:
            raise DataError(f"{name}/{key}: cannot re-read the document at offset {offset}: {e}") from None
        if not raw or raw[0][0] != key:
            raise DataError(f"{name}: expected document {key!r} at offset {offset}; the shard changed after indexing")
        data = raw[0][1]["txt"]
        try:
            return data.decode("utf-8"), OK
        except UnicodeDecodeError as e:
            if self.strict:
                raise DataError(f"{name}/{key}: invalid UTF-8 at byte {e.start}") from None
            return data.decode("utf-8", errors="replace"), UTF8_REPLACED

    def encode(self, shard: np.ndarray, offset: np.ndarray, keys: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(flat tokens, length per document, status per document); EOD ends every document."""
        texts, status = [], np.zeros(len(keys), np.int8)
        for i, (s, o, k) in enumerate(zip(shard, offset, keys)):
            text, status[i] = self._text(int(s), int(o), k)
            if not text or text.isspace():
                status[i] = EMPTY
                text = ""
            texts.append(text)
        arrays = self._encode(texts)
        eod = np.array([self.info.eod_id], np.int32)
        lengths = np.zeros(len(arrays), np.int64)
        parts = []
        for i, (x, st) in enumerate(zip(arrays, status)):
            if st != EMPTY:
                parts += (x, eod)
                lengths[i] = len(x) + 1
        flat = np.concatenate(parts).astype(self.dtype, copy=False) if parts else np.zeros(0, self.dtype)
        return flat, lengths, status

    def _encode(self, texts: list[str]) -> list[np.ndarray]:
        """Ids per text as numpy arrays (sentencepiece >= 0.2.1 returns them without Python ints)."""
        if self._numpy:
            try:
                return self.sp.encode(texts, return_type="numpy", num_threads=1)
            except (TypeError, ValueError):
                self._numpy = False
        return [np.asarray(x, np.int32) for x in self.sp.encode(texts, out_type=int, num_threads=1)]

    def close(self) -> None:
        for r in self._readers.values():
            r.close()
        self._readers.clear()


_WORKER: Encoder | None = None


def worker_init(shards: list[str], tokenizer: str, strict: bool) -> None:
    global _WORKER
    _WORKER = Encoder(shards, tokenizer, strict)


def worker_encode(shard: np.ndarray, offset: np.ndarray, keys: list[str]):
    assert _WORKER is not None, "worker_init did not run"
    return _WORKER.encode(shard, offset, keys)
