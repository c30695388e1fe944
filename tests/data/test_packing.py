"""C++ packing: best-fit-decreasing (Ding et al. 2024), concat-and-chunk lanes, batch assembly."""
from __future__ import annotations

import math

import numpy as np
import pytest
import sentencepiece as spm

from glotta.data import iter_samples, list_shards
from glotta.data.native import assemble, best_fit_pack
from glotta.data.packing import BestFitLane, ConcatLane, Doc, RowStats


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


def _docs(real_docs, n):
    return [Doc(real_docs[i], 0, i, 0) for i in range(n)]


def test_concat_lane_windows_overlap_by_one_and_cover_the_stream(real_docs):
    docs = _docs(real_docs, 60)
    stream = np.concatenate([d.tokens for d in docs])
    lane, stats, rows = ConcatLane(33), RowStats(), []
    get = lambda p: docs[p] if p < len(docs) else None  # noqa: E731
    while (segs := lane.next_row(get, stats)) is not None:
        rows.append(np.concatenate([d.tokens[s : s + n] for d, s, n in segs]))
    for k, r in enumerate(rows):
        assert np.array_equal(r, stream[32 * k : 32 * k + 33])
    assert len(rows) == math.ceil((len(stream) - 1) / 32)
    assert stats.docs == 60
    # Documents that cross a window boundary are the split ones.
    assert 0 < stats.split < 60


def test_best_fit_lane_state_restores_mid_buffer(real_docs):
    docs = _docs(real_docs, 50)
    get = lambda p: docs[p] if p < len(docs) else None  # noqa: E731
    a, rows = BestFitLane(65, buffer=16), []
    while (segs := a.next_row(get, RowStats())) is not None:
        rows.append([(d.index, s, n) for d, s, n in segs])
        if len(rows) == 9:
            state = a.state()
    b = BestFitLane(65, buffer=16, state=state)
    rest = []
    while (segs := b.next_row(get, RowStats())) is not None:
        rest.append([(d.index, s, n) for d, s, n in segs])
    assert rest == rows[9:]


def test_assemble_builds_megatron_fields():
    # Two rows of S+1 = 6: [a a a | b b b] and [c c | pad pad pad pad].
    flat = np.array([10, 11, 2, 20, 21, 2, 30, 2], np.uint16)
    out = assemble(
        flat,
        seg_row=np.array([0, 0, 1, 1]),
        seg_start=np.array([0, 3, 6, -1]),
        seg_len=np.array([3, 3, 2, 4]),
        seg_lang=np.array([0, 1, 2, -1]),
        rows=2,
        row_len=6,
        pad_id=3,
        eod_id=2,
        reset_position_ids=True,
        eod_mask_loss=False,
    )
    assert out["tokens"].tolist() == [[10, 11, 2, 20, 21], [30, 2, 3, 3, 3]]
    assert out["labels"].tolist() == [[11, 2, 20, 21, 2], [2, 3, 3, 3, 3]]
    assert out["loss_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    assert out["lang_ids"].tolist() == [[0, 0, 0, 1, 1], [2, 2, -1, -1, -1]]
    assert out["cu_seqlens"].tolist() == [0, 3, 5, 7, 10]
    assert out["max_seqlen"] == 3
    assert out["segments"].tolist() == [0, 1, 2, 3]
    assert out["lang_tokens"].tolist() == [3, 2, 2]  # token region only: row 0's last label is not counted
    masked = assemble(flat, np.array([0, 0]), np.array([0, 3]), np.array([3, 3]), np.array([0, 1]), 1, 6, 3, 2, False, True)
    assert masked["loss_mask"].tolist() == [[1, 1, 0, 1, 1]]
    assert masked["position_ids"].tolist() == [[0, 1, 2, 3, 4]]


def test_assemble_rejects_rows_that_do_not_add_up():
    flat = np.arange(8, dtype=np.int32)
    with pytest.raises(ValueError, match="row 0"):
        assemble(flat, np.array([0]), np.array([0]), np.array([5]), np.array([0]), 1, 6, 0, 1, True, False)
    with pytest.raises(ValueError, match="past the token buffer"):
        assemble(flat, np.array([0]), np.array([4]), np.array([6]), np.array([0]), 1, 6, 0, 1, True, False)
    with pytest.raises(TypeError):
        assemble(flat.astype(np.int64), np.array([0]), np.array([0]), np.array([6]), np.array([0]), 1, 6, 0, 1, True, False)


def test_deal_is_the_permutation_at_the_lanes():
    from glotta.data.native import deal, permutation

    seeds, lanes = [1, 2, 3 << 61], [0, 3, 6]
    got = deal(7, seeds, lanes)
    assert got.tolist() == [permutation(7, s)[lanes].tolist() for s in seeds]


def test_concat_counts_every_empty_document_once():
    # Empty documents (no text: skipped by the tokenizer) between, and after, real ones.
    lens = [5, 0, 0, 9, 0, 3, 0, 0]
    docs = [Doc(np.arange(n, dtype=np.uint16), 0, i, 0) for i, n in enumerate(lens)]
    lane, stats = ConcatLane(4), RowStats()
    rows = 0
    while lane.next_row(lambda p: docs[p] if p < len(docs) else None, stats) is not None:
        rows += 1
    assert stats.empty == lens.count(0) and rows == 6  # 17 tokens, windows of 4 advancing by 3
    assert lane.next_row(lambda p: docs[p] if p < len(docs) else None, stats) is None and stats.empty == lens.count(0)
