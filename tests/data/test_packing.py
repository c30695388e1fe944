"""C++ packing: best-fit-decreasing (Ding et al. 2024), the loader's lanes (concat and best_fit), batch assembly."""
from __future__ import annotations

import math

import numpy as np
import pytest
import sentencepiece as spm

from glotta.data import iter_samples, list_shards
from glotta.data.native import Lanes_u16, best_fit_pack
from glotta.data.packing import new_lanes


@pytest.fixture(scope="module")
def real_docs(demo_shards, sp_model):
    """Token ids (+EOD) of the demo corpus, cut into paragraphs for a realistic spread of lengths."""
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    texts = [para for p in list_shards(demo_shards) for s in iter_samples(p) for para in s.text.split("\n")[:6] if para]
    return [np.asarray(ids + [sp.eos_id()], np.int32) for ids in sp.encode(texts)]


@pytest.mark.parametrize("capacity", [17, 65, 257])
def test_best_fit_never_truncates_short_documents(real_docs, capacity):
    lengths = np.array([len(d) for d in real_docs], np.int64)
    doc, start, length, row, n_rows = best_fit_pack(lengths, capacity)
    # Row contents never exceed the capacity.
    fill = np.bincount(row, weights=length, minlength=n_rows)
    assert fill.max() <= capacity
    # Every token is placed exactly once.
    for d in range(len(lengths)):
        pieces = sorted(zip(start[doc == d].tolist(), length[doc == d].tolist()))
        at = 0
        for s, n in pieces:
            assert s == at
            at += n
        assert at == lengths[d]
    # A document that fits a row is one piece; a longer one has the fewest possible pieces.
    pieces_per_doc = np.bincount(doc, minlength=len(lengths))
    assert np.all(pieces_per_doc[lengths <= capacity] == 1)
    assert np.all(pieces_per_doc[lengths > capacity] == np.ceil(lengths[lengths > capacity] / capacity))
    # BFD's bound: at most 11/9 OPT + 6/9 rows; OPT >= total / capacity.
    assert n_rows <= math.ceil(11 / 9 * math.ceil(lengths.sum() / capacity) + 6 / 9)
    # Rows come out grouped (the loader emits them in order).
    assert np.all(np.diff(row) >= 0)


def test_best_fit_places_into_the_tightest_row():
    # 6 fills row 0; 5 -> row 1 (1 free); 4 -> row 2 (2 free); 3 opens row 3; the second 3 goes
    # there (0 free) and 2 goes to row 2, the tightest row it fits, not row 3.
    doc, start, length, row, n = best_fit_pack(np.array([5, 3, 9, 2, 4]), 6)
    placed = {(int(d), int(s)): int(r) for d, s, r in zip(doc, start, row)}
    assert n == 4
    assert placed == {(2, 0): 0, (0, 0): 1, (4, 0): 2, (3, 0): 2, (1, 0): 3, (2, 6): 3}


def test_best_fit_rejects_bad_input():
    with pytest.raises(ValueError):
        best_fit_pack(np.array([3, -1]), 4)
    with pytest.raises(ValueError):
        best_fit_pack(np.array([3]), 0)


EOD, PAD = 2, 3


def _lanes(row_len, packing="concat", buffer=0, n_lanes=1, n_langs=4, dtype=np.int32, **kw):
    opts = dict(reset_position_ids=True, eod_mask_loss=False) | kw
    names = [f"l{i}" for i in range(n_langs)]
    return new_lanes(np.dtype(dtype), n_lanes, row_len, packing, buffer, PAD, EOD, opts["reset_position_ids"], opts["eod_mask_loss"], names)


def _feed(lanes, docs, lane=0, first=0, end=True, langs=None, status=None):
    """Lane `lane`'s documents first, first+1, ... (one block each), then the end of its stream."""
    n = len(docs)
    blocks = np.arange(first, first + n + int(end), dtype=np.int64)
    ids = np.arange(first, first + n + int(end), dtype=np.int64)
    if end:
        ids[-1] = -1
    lang = np.zeros(len(ids), np.int64) if langs is None else np.asarray(list(langs) + [0] * int(end), np.int64)
    dtype = np.uint16 if isinstance(lanes, Lanes_u16) else np.int32
    flat = np.concatenate([np.asarray(d, dtype) for d in docs]) if docs else np.zeros(0, dtype)
    lanes.add(blocks, np.full(len(ids), lane, np.int64), lang, ids, flat, np.array([len(d) for d in docs], np.int64),
              np.zeros(n, np.int8) if status is None else np.asarray(status, np.int8))


def _row(b):
    """Row 0 of a batch: (its S+1 tokens, how many are not padding)."""
    real = int((b["lang_ids"][0] >= 0).sum()) + int(b["loss_mask"][0, -1])  # the last label is real when kept
    return np.concatenate([b["tokens"][0], b["labels"][0, -1:]]), real


def _batches(lanes, lane=0):
    """Lane `lane`'s batches until it is dry (blocks past the fed ones are past its end)."""
    while True:
        b = lanes.next_batch([lane])
        if isinstance(b, int):
            _feed(lanes, [], lane, first=b)
        elif b["dry"]:
            return
        else:
            yield b


def _rows(lanes, lane=0):
    """Every row of one lane until its stream is dry (blocks past the fed ones are past its end)."""
    return [_row(b) for b in _batches(lanes, lane)]


def test_concat_lane_windows_overlap_by_one_and_cover_the_stream(real_docs):
    docs = real_docs[:60]
    stream = np.concatenate(docs)
    lanes = _lanes(33)
    _feed(lanes, docs)
    rows = _rows(lanes)
    for k, (r, n) in enumerate(rows):
        want = stream[32 * k : 32 * k + 33]
        assert n == len(want) and np.array_equal(r[:n], want)
        assert np.all(r[n:] == PAD)
    assert len(rows) == math.ceil((len(stream) - 1) / 32)
    docs_placed, split, empty = lanes.counts
    assert docs_placed == 60 and empty == 0
    # Documents that cross a window boundary are the split ones.
    assert 0 < split < 60


@pytest.mark.parametrize("packing,buffer", [("concat", 0), ("best_fit", 16)])
def test_a_lane_waits_for_undelivered_blocks_and_changes_nothing(real_docs, packing, buffer):
    # Delivered in one go, or in three tasks with next_batch asked in between: the same rows.
    docs = real_docs[:50]
    whole = _lanes(65, packing, buffer)
    _feed(whole, docs)
    want = _rows(whole)
    lazy, got = _lanes(65, packing, buffer), []
    parts = [(0, docs[:7]), (7, docs[7:30]), (30, docs[30:])]
    while True:
        b = lazy.next_batch([0])
        if isinstance(b, int) and not parts:
            _feed(lazy, [], first=b)  # past the end
            continue
        if isinstance(b, int):
            first, part = parts.pop(0)
            assert b == first  # the first block nobody delivered
            assert lazy.state(0)[0] == len(got)  # nothing moved
            _feed(lazy, part, first=first, end=not parts)
            continue
        if b["dry"]:
            break
        got.append(_row(b))
    assert not parts and len(got) == len(want)
    assert all(np.array_equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(got, want))
    assert lazy.counts == whole.counts


def test_best_fit_lane_state_restores_mid_buffer(real_docs):
    docs = real_docs[:50]
    a = _lanes(65, "best_fit", 16)
    _feed(a, docs)
    rows = []
    for b in _batches(a):
        rows.append((b["tokens"].copy(), b["doc_id"].tolist()))
        if len(rows) == 9:
            state = a.state(0)
    assert 0 < state[2] < len(rows)  # mid-buffer: some rows of its buffer already emitted
    b2 = _lanes(65, "best_fit", 16)
    b2.set_state(0, *state)
    _feed(b2, docs)
    rest = [(b["tokens"].copy(), b["doc_id"].tolist()) for b in _batches(b2)]
    assert len(rest) == len(rows) - 9
    assert all(np.array_equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(rest, rows[9:]))


def test_batch_has_the_megatron_fields():
    # Two lanes, rows of S+1 = 6: lane 0 reads a (3 tokens) and b (3): [a a a | b b b];
    # lane 1 reads c (2) and ends: [c c | pad pad pad pad].
    lanes = _lanes(6, n_lanes=2)
    _feed(lanes, [[10, 11, EOD], [20, 21, EOD]], lane=0, langs=[0, 1])
    _feed(lanes, [[30, EOD]], lane=1, langs=[2], status=[1])  # 1: UTF-8 replaced when tokenized
    out = lanes.next_batch([0, 1])
    assert out["tokens"].tolist() == [[10, 11, 2, 20, 21], [30, 2, 3, 3, 3]]
    assert out["labels"].tolist() == [[11, 2, 20, 21, 2], [2, 3, 3, 3, 3]]
    assert out["loss_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    assert out["lang_ids"].tolist() == [[0, 0, 0, 1, 1], [2, 2, -1, -1, -1]]
    assert out["cu_seqlens"].tolist() == [0, 3, 5, 7, 10]
    assert out["max_seqlen"] == 3
    assert out["doc_langs"] == ["l0", "l1", "l2", ""] and out["doc_id"].tolist() == [0, 1, 0, -1]
    # The lanes count what their batches held: tokens per language in the token region only (row
    # 0's last label is not counted), padding, padded rows and documents read with U+FFFD.
    assert lanes.lang_tokens.tolist() == [3, 2, 2, 0] and not out["dry"]
    assert lanes.totals == (2, 3, 0, 1)  # rows, pad tokens, pad rows, utf8_replaced
    lanes.totals, lanes.lang_tokens = (7, 1, 1, 1), [1, 2, 3, 4]  # restored by a resume
    assert lanes.totals == (7, 1, 1, 1) and lanes.lang_tokens.tolist() == [1, 2, 3, 4]
    # Lane 1 is dry now: a padding row, counted; with eod_mask_loss and no position reset.
    masked = _lanes(6, n_lanes=2, reset_position_ids=False, eod_mask_loss=True, dtype=np.uint16)
    _feed(masked, [[10, 11, EOD], [20, 21, EOD]], lane=0)
    _feed(masked, [], lane=1)
    out = masked.next_batch([0, 1])
    assert out["loss_mask"].tolist() == [[1, 1, 0, 1, 1], [0, 0, 0, 0, 0]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]
    assert masked.totals == (2, 5, 1, 0) and out["tokens"].dtype == np.int64
    # Every row dry: counted only when asked to (a loader with num_batches yields it as padding).
    _feed(masked, [], lane=0, first=3)
    assert masked.next_batch([0, 1], count_dry=False)["dry"] and masked.totals == (2, 5, 1, 0)
    assert masked.next_batch([0, 1])["dry"] and masked.totals == (4, 15, 3, 0)


def test_lanes_reject_bad_deliveries():
    lanes = _lanes(6)
    one = np.zeros(1, np.int64)
    with pytest.raises(ValueError, match="add up"):
        lanes.add(one, one, one, one, np.arange(4, dtype=np.int32), np.array([5]), np.zeros(1, np.int8))
    with pytest.raises(ValueError, match="lane 3 out of range"):
        lanes.add(one, one + 3, one, one, np.arange(4, dtype=np.int32), np.array([4]), np.zeros(1, np.int8))
    with pytest.raises(ValueError, match="language"):
        lanes.add(one, one, one + 9, one, np.arange(4, dtype=np.int32), np.array([4]), np.zeros(1, np.int8))
    with pytest.raises(ValueError, match="one length per document"):
        lanes.add(one, one, one, one, np.arange(4, dtype=np.int32), np.zeros(0, np.int64), np.zeros(0, np.int8))
    with pytest.raises(TypeError):  # a uint16 lane set takes uint16 buffers only
        _lanes(6, dtype=np.uint16).add(one, one, one, one, np.arange(4, dtype=np.int64), np.array([4]), np.zeros(1, np.int8))


def test_deal_is_the_permutation_at_the_lanes():
    from glotta.data.native import deal, permutation

    seeds, lanes = [1, 2, 3 << 61], [0, 3, 6]
    got = deal(7, seeds, lanes)
    assert got.tolist() == [permutation(7, s)[lanes].tolist() for s in seeds]


def test_concat_counts_every_empty_document_once():
    # Empty documents (no text: skipped by the tokenizer) between, and after, real ones.
    lens = [5, 0, 0, 9, 0, 3, 0, 0]
    lanes = _lanes(4)
    _feed(lanes, [np.arange(n) for n in lens])
    rows = _rows(lanes)
    assert lanes.counts[2] == lens.count(0) and len(rows) == 6  # 17 tokens, windows of 4 advancing by 3
    assert lanes.next_batch([0])["dry"] and lanes.counts[2] == lens.count(0)
