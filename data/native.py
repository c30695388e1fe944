"""Typed façade over the C++ extension glotta._native (built at install time by setup.py).

The bindings take raw numpy buffers; the functions here pick the dtype instantiation, convert
inputs and check bounds so that a mistake is a clear Python error, not a C++ one.
"""
from __future__ import annotations

import numpy as np

try:
    from glotta._native import BlendSchedule, TarError, TarReader, collapse_ws, tar_sample
    from glotta._native import assemble_i32, assemble_u16  # the loader's per-batch call (arrays already typed)
    from glotta._native import best_fit_pack as _best_fit_pack
    from glotta._native import deal as _deal
    from glotta._native import permutation as _permutation
    from glotta._native import permute as _permute
except ImportError as e:  # pragma: no cover - only when the package was not installed/built
    raise ImportError(
        "glotta._native is not built: install the package with `pip install -e .` "
        "(needs a C++17 compiler and the Python headers)"
    ) from e

__all__ = ["BlendSchedule", "TarError", "TarReader", "assemble", "assemble_i32", "assemble_u16", "collapse_ws", "best_fit_pack", "deal", "permutation", "permute", "tar_sample", "token_dtype"]

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


def deal(n: int, seeds: list[int], lanes: list[int]) -> np.ndarray:
    """[len(seeds), len(lanes)]: permutation(n, seed)[lanes] for each seed, in one call."""
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


def assemble(
    flat: np.ndarray,
    seg_row: np.ndarray,
    seg_start: np.ndarray,
    seg_len: np.ndarray,
    seg_lang: np.ndarray,
    rows: int,
    row_len: int,
    pad_id: int,
    eod_id: int,
    reset_position_ids: bool,
    eod_mask_loss: bool,
    n_langs: int = 0,
) -> dict:
    """Megatron batch arrays from rows given as segments of `flat` (start -1 = padding), plus
    `segments` (input segment of each cu_seqlens segment) and `lang_tokens` (tokens per language
    in the token region; languages must be in [0, n_langs), or n_langs >= max language + 1)."""
    if flat.dtype == np.uint16:
        fn = assemble_u16
    elif flat.dtype == np.int32:
        fn = assemble_i32
    else:
        raise TypeError(f"token buffer must be uint16 or int32, got {flat.dtype}")
    seg_start = np.ascontiguousarray(seg_start, dtype=np.int64)
    seg_len = np.ascontiguousarray(seg_len, dtype=np.int64)
    seg_lang = np.ascontiguousarray(seg_lang, dtype=np.int32)
    n_langs = max(int(n_langs), int(seg_lang.max(initial=-1)) + 1)
    if (seg_start + seg_len)[seg_start >= 0].max(initial=0) > flat.size:
        raise ValueError("a segment points past the token buffer")
    return fn(
        np.ascontiguousarray(flat),
        np.ascontiguousarray(seg_row, dtype=np.int32),
        seg_start,
        seg_len,
        seg_lang,
        int(rows),
        int(row_len),
        int(pad_id),
        int(eod_id),
        bool(reset_position_ids),
        bool(eod_mask_loss),
        n_langs,
    )
