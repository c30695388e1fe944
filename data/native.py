"""Typed façade over the C++ extension glotta._native (built at install time by setup.py).

The bindings take raw numpy buffers; the functions here pick the dtype instantiation, convert
inputs and check bounds so that a mistake is a clear Python error, not a C++ one.
"""
from __future__ import annotations

import numpy as np

try:
    from glotta._native import BlendSchedule, ShardFiles, TarError, TarReader, collapse_ws, read_texts, tar_sample
    from glotta._native import Lanes_i32, Lanes_u16  # the loader's lanes (data/packing.py)
    from glotta._native import join_documents_i32, join_documents_u16  # data/tokenize.py
    from glotta._native import lookup_index  # data/corpus_index.py
    from glotta._native import best_fit_pack as _best_fit_pack
    from glotta._native import deal as _deal
    from glotta._native import permutation as _permutation
    from glotta._native import permute as _permute
except ImportError as e:  # pragma: no cover - only when the package was not installed/built
    raise ImportError(
        "glotta._native is not built: install the package with `pip install -e .` "
        "(needs a C++17 compiler and the Python headers)"
    ) from e

__all__ = ["BlendSchedule", "ShardFiles", "Lanes_i32", "Lanes_u16", "TarError", "TarReader", "collapse_ws", "best_fit_pack", "join_documents_i32", "join_documents_u16", "lookup_index", "read_texts", "deal", "permutation", "permute", "tar_sample", "token_dtype"]

_MASK63 = (1 << 63) - 1


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (halves what workers send), else int32."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.int32)


def permutation(n: int, seed: int) -> np.ndarray:
    """A permutation of range(n) that depends only on (n, seed), on every platform."""
    if n < 0:
        raise ValueError(f"permutation size must be >= 0, got {n}")
    return _permutation(int(n), int(seed) & _MASK63)


def deal(n: int, seeds: list[int] | np.ndarray, lanes: list[int]) -> np.ndarray:
    """[len(seeds), len(lanes)]: permutation(n, seed)[lanes] for each seed, in one call."""
    if isinstance(seeds, np.ndarray):  # stable_seeds' uint64 array: no Python step per seed
        seeds = seeds.astype(np.uint64, copy=False) & np.uint64(_MASK63)
    else:
        seeds = np.fromiter((int(s) & _MASK63 for s in seeds), np.uint64, len(seeds))
    return _deal(int(n), seeds, np.asarray(lanes, np.int64))


def permute(idx: np.ndarray, n: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Element idx[i] of the seeded permutation of range(n[i]), computed without building it."""
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    n = np.ascontiguousarray(np.broadcast_to(n, idx.shape), dtype=np.int64)
    seed = np.ascontiguousarray(np.broadcast_to(seed, idx.shape), dtype=np.uint64)
    return _permute(idx, n, seed)


def best_fit_pack(lengths: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Best-fit-decreasing of `lengths` into rows of `capacity`: (doc, start, len, row, n_rows)."""
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    if lengths.size and lengths.min() < 0:
        raise ValueError("document lengths must be >= 0")
    return _best_fit_pack(lengths, int(capacity))
