"""The audit of `consent filter`, written as it goes: one Parquet row per document, in record
batches of a fixed number of rows, so a rank's memory never follows its document count.

Per document only its own fields are appended (shard, key, url, origin, lang, bytes, date) plus
the index of its Decision: most documents share one Decision object (one per origin verdict), so
the nine decision columns are built once per distinct Decision in the batch and expanded with
`take` in Arrow, not row by row in Python.
"""
from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from glotta.pruning.consent.base import Decision
from glotta.pruning.consent.urls import BadURL, registrable_domain, split_url

AUDIT_SCHEMA = pa.schema([
    ("shard", pa.string()), ("key", pa.string()), ("url", pa.string()), ("origin", pa.string()),
    ("reg_domain", pa.string()), ("lang", pa.string()), ("bytes", pa.int64()), ("crawl_date", pa.string()),
    ("decision", pa.string()), ("reason", pa.string()), ("agent", pa.string()), ("rule", pa.string()),
    ("snapshot_date", pa.string()), ("snapshot_sha256", pa.string()), ("flags", pa.string()),
    ("policy", pa.string()), ("policy_version", pa.string()), ("as_of", pa.string()), ("group", pa.string()),
])
DOC_COLUMNS = ("shard", "key", "url", "origin", "reg_domain", "lang", "bytes", "crawl_date")
BATCH_ROWS = 32_768  # rows buffered before a record batch is written (~10 MB of Python objects)
MAX_ORIGINS = 1 << 16  # url heads remembered with their origin and registrable domain
_END = re.compile(r"[/?#]")


class AuditWriter:
    """Appends audit rows and writes a record batch every `batch_rows`; `close()` writes the rest."""

    def __init__(self, path: Path, policy: str, policy_version: str, as_of: str, batch_rows: int = BATCH_ROWS):
        self.writer = pq.ParquetWriter(path, AUDIT_SCHEMA, compression="zstd")
        self.consts = (policy, policy_version, as_of)
        self.batch_rows = batch_rows
        self.cols: tuple[list, ...] = tuple([] for _ in DOC_COLUMNS)
        self.decision_idx: list[int] = []
        self.decisions: list[Decision] = []  # distinct Decisions of this batch (held so their ids stay valid)
        self._ids: dict[int, int] = {}
        self._heads: dict[str, tuple[str, str]] = {}  # "https://Host" -> (origin, registrable domain)
        self.rows = 0
        self.batches = 0

    def origin(self, url) -> tuple[str, str]:
        """(origin, registrable domain) of a document URL; ('', '') when it has none."""
        if url.__class__ is not str:
            return "", ""
        i = 8 if url.startswith("https://") else 7 if url.startswith("http://") else 0
        if not i:  # rare: odd schemes and letter cases go the long way, uncached
            return self._lookup(url)
        m = _END.search(url, i)
        head = url[: m.start()] if m else url  # scheme://netloc: the path never changes the origin
        hit = self._heads.get(head)
        if hit is None:
            hit = self._lookup(url)
            if len(self._heads) >= MAX_ORIGINS:
                self._heads.clear()
            self._heads[head] = hit
        return hit

    @staticmethod
    def _lookup(url: str) -> tuple[str, str]:
        try:
            origin = split_url(url)[0]
        except BadURL:
            return "", ""
        return origin, registrable_domain(origin)

    def add(self, shard: str, key: str, url, lang: str, nbytes: int, crawl, d: Decision) -> None:
        origin, reg = self.origin(url)
        c = self.cols
        c[0].append(shard)
        c[1].append(key)
        c[2].append(url if url.__class__ is str else None)
        c[3].append(origin)
        c[4].append(reg)
        c[5].append(lang)
        c[6].append(nbytes)
        c[7].append(crawl if crawl.__class__ is str else None)
        i = self._ids.get(id(d))
        if i is None:
            i = self._ids[id(d)] = len(self.decisions)
            self.decisions.append(d)
        self.decision_idx.append(i)
        if len(self.decision_idx) >= self.batch_rows:
            self.flush()

    def buffered(self) -> int:
        """Python objects this writer holds for rows not yet written (bounded by batch_rows)."""
        return sum(len(c) for c in self.cols) + len(self.decision_idx) + len(self.decisions) + len(self._heads)

    def flush(self) -> None:
        n = len(self.decision_idx)
        if not n:
            return
        idx = pa.array(self.decision_idx, pa.int32())
        ds = self.decisions
        per_decision = {
            "decision": ["keep" if d.keep else "drop" for d in ds], "reason": [d.reason for d in ds],
            "agent": [d.agent for d in ds], "rule": [d.rule for d in ds], "snapshot_date": [d.snapshot for d in ds],
            "snapshot_sha256": [d.sha256 for d in ds], "flags": [",".join(d.flags) for d in ds],
            "group": [d.group for d in ds],
        }
        arrays = {name: pa.array(col, AUDIT_SCHEMA.field(name).type) for name, col in zip(DOC_COLUMNS, self.cols)}
        arrays.update({name: pa.array(vals, pa.string()).take(idx) for name, vals in per_decision.items()})
        for name, value in zip(("policy", "policy_version", "as_of"), self.consts):
            arrays[name] = pa.repeat(pa.scalar(value, pa.string()), n)
        self.writer.write_batch(pa.record_batch([arrays[f.name] for f in AUDIT_SCHEMA], schema=AUDIT_SCHEMA))
        for c in self.cols:
            c.clear()
        self.decision_idx.clear()
        self.decisions.clear()
        self._ids.clear()
        self.rows += n
        self.batches += 1

    def close(self) -> None:
        self.flush()
        self.writer.close()
