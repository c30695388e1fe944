"""Packing lanes of documents into rows of seq_len+1 tokens (the C++ `Lanes` of csrc/lanes.cpp).

A lane is one row position of the global batch (see loader.py). Each lane owns a document
stream (position p = 0, 1, ...) and a packer whose state is three integers, so the loader
state stays small and a lane can move to another rank on an elastic resume:

  concat    (rows, p, offset): Megatron's concat-and-chunk. Rows are windows of S+1 tokens
            that overlap by one token, so every token is a label exactly once.
  best_fit  (rows, buffer start, rows emitted from the buffer): Ding et al. 2024 over a
            buffer of `buffer` documents: only documents longer than a row are split, the
            rest are placed whole by best-fit-decreasing; short rows are padded.

The walk, the documents and the batch assembly live in C++: the loader hands each task's
tokens over once and asks for one micro-batch at a time; a walk never reads past what its
row needs, so tokenization stays lazy (`next_batch` names a block not delivered yet).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from glotta.data.native import Lanes_i32, Lanes_u16

Lanes = Lanes_u16 | Lanes_i32


@dataclass
class RowStats:
    docs: int = 0  # documents whose first token was placed
    split: int = 0  # ... of which were cut across rows
    empty: int = 0  # documents without text (nothing to place)


def new_lanes(
    dtype: np.dtype,
    n_lanes: int,
    row_len: int,
    packing: Literal["concat", "best_fit"],
    best_fit_buffer: int,
    pad_id: int,
    eod_id: int,
    reset_position_ids: bool,
    eod_mask_loss: bool,
    lang_names: list[str],
) -> Lanes:
    """The lanes of one rank over token buffers of `dtype` (uint16 or int32, token_dtype); language
    i is lang_names[i] (a batch's `doc_langs`)."""
    cls = Lanes_u16 if np.dtype(dtype) == np.uint16 else Lanes_i32
    return cls(
        n_lanes, row_len, best_fit_buffer if packing == "best_fit" else 0, pad_id, eod_id,
        reset_position_ids, eod_mask_loss, list(lang_names),
    )  # fmt: skip


@dataclass
class BatchTotals:
    rows: int = 0
    pad_tokens: int = 0  # in the token regions (seq_len per row)
    pad_rows: int = 0  # rows of lanes whose stream had ended (num_batches set)
    utf8_replaced: int = 0  # documents read with U+FFFD in place of invalid UTF-8


def row_stats(lanes: Lanes) -> RowStats:
    return RowStats(*lanes.counts)


def batch_totals(lanes: Lanes) -> BatchTotals:
    return BatchTotals(*lanes.totals)
