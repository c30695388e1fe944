"""Packing one lane's document stream into rows of seq_len+1 tokens.

A lane is one row position of the global batch (see loader.py). Each lane owns a document
stream (position p = 0, 1, ...) and a packer whose state is three integers, so the loader
state stays small and a lane can move to another rank on an elastic resume:

  concat    (rows, p, offset): Megatron's concat-and-chunk. Rows are windows of S+1 tokens
            that overlap by one token, so every token is a label exactly once.
  best_fit  (rows, buffer start, rows emitted from the buffer): Ding et al. 2024 over a
            buffer of `buffer` documents: only documents longer than a row are split, the
            rest are placed whole by best-fit-decreasing (C++); short rows are padded.

`next_row` returns the row as segments (Doc, start, length) and never reads past what the
row needs, so the loader can tokenize lazily.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from glotta.data.native import best_fit_pack


class Doc:
    """One tokenized document of a lane (a plain slotted class: the loader makes one per
    document on its main thread, and a frozen dataclass costs ~3x as much to build)."""

    __slots__ = ("tokens", "lang", "index", "status")

    def __init__(self, tokens: np.ndarray, lang: int, index: int, status: int):
        self.tokens = tokens  # ends with EOD; empty when the document was skipped
        self.lang = lang  # index into loader.langs
        self.index = index  # the loader's document id (for `shard.tar/KEY`)
        self.status = status  # tokenize.OK / UTF8_REPLACED / EMPTY


Segment = tuple[Doc, int, int]  # (document, first token, number of tokens)
DocSource = Callable[[int], "Doc | None"]  # lane position -> document (None past the end)


@dataclass
class RowStats:
    docs: int = 0  # documents whose first token was placed
    split: int = 0  # ... of which were cut across rows
    empty: int = 0  # documents without text (nothing to place)


class ConcatLane:
    def __init__(self, row_len: int, state: tuple[int, int, int] = (0, 0, 0)):
        self.row_len = row_len
        self.rows, self.pos, self.off = state

    def state(self) -> tuple[int, int, int]:
        return (self.rows, self.pos, self.off)

    def first_needed(self) -> int:
        return self.pos

    def next_row(self, get: DocSource, stats: RowStats) -> list[Segment] | None:
        """Segments of the next row (maybe short: the loader pads), or None when the lane is dry.

        One walk over the documents gives both the row and where the next one starts (S tokens
        on: the last token of this row starts the next one)."""
        S1 = self.row_len
        segs: list[Segment] = []
        at: list[int] = []  # lane position of each segment's document
        empties: list[int] = []  # lane positions of empty documents walked over
        need, p, o = S1, self.pos, self.off
        while need > 0:
            d = get(p)
            if d is None:
                break
            n = len(d.tokens)
            if o >= n:
                if n == 0:
                    empties.append(p)
                p, o = p + 1, 0
                continue
            take = need if need < n - o else n - o
            segs.append((d, o, take))
            at.append(p)
            need -= take
            o += take
            if o == n:
                p, o = p + 1, 0
        if S1 - need < 2:  # a single token has no label: the stream is spent
            stats.empty += len(empties)
            self.pos, self.off = p, o  # past them: a later call counts nothing twice
            return None
        pos = 0
        for d, start, take in segs:
            if start == 0 and pos < S1 - 1:
                stats.docs += 1
                if start + take < len(d.tokens):
                    stats.split += 1
            pos += take
        if need == 0:  # a full row: step back one token from where the walk ended
            _, start, take = segs[-1]
            nxt = (at[-1], start + take - 1) if take > 1 else (at[-2] + 1, 0)
        elif need == 1:  # exactly S tokens, then the data ended
            nxt = (at[-1] + 1, 0)
        else:  # fewer than S: all of it, and the walk stopped where the data ends
            nxt = (p, o)
        stats.empty += sum(1 for e in empties if e < nxt[0])  # later ones are walked again next row
        self.rows, self.pos, self.off = self.rows + 1, nxt[0], nxt[1]
        return segs


class BestFitLane:
    def __init__(self, row_len: int, buffer: int, state: tuple[int, int, int] = (0, 0, 0)):
        self.row_len, self.buffer = row_len, buffer
        self.rows, self.start, self.emitted = state
        self._plan: tuple[int, list[list[Segment]]] | None = None
        self._docs: list[Doc] = []

    def state(self) -> tuple[int, int, int]:
        return (self.rows, self.start, self.emitted)

    def first_needed(self) -> int:
        return self.start

    def _plan_for(self, get: DocSource) -> list[list[Segment]] | None:
        if self._plan is not None and self._plan[0] == self.start:
            return self._plan[1]
        docs = []
        for p in range(self.start, self.start + self.buffer):
            d = get(p)
            if d is None:
                break
            docs.append(d)
        if not docs:
            return None
        doc, start, length, row, n_rows = best_fit_pack(np.array([len(d.tokens) for d in docs], np.int64), self.row_len)
        rows: list[list[Segment]] = [[] for _ in range(n_rows)]
        for i, s, n, r in zip(doc.tolist(), start.tolist(), length.tolist(), row.tolist()):
            rows[r].append((docs[i], s, n))
        self._plan, self._docs = (self.start, rows), docs
        return rows

    def next_row(self, get: DocSource, stats: RowStats) -> list[Segment] | None:
        while True:
            plan = self._plan_for(get)
            if plan is None:
                return None
            if self.emitted == 0:  # counted once per buffer, when its first row goes out (or it has none)
                stats.empty += sum(1 for d in self._docs if len(d.tokens) == 0)
            if self.emitted < len(plan):
                break
            self.start, self.emitted = self.start + self.buffer, 0
        segs = plan[self.emitted]
        for d, start, _ in segs:
            if start == 0:
                stats.docs += 1
                if len(d.tokens) > self.row_len:
                    stats.split += 1
        self.rows, self.emitted = self.rows + 1, self.emitted + 1
        return segs
