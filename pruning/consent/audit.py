"""The audit of `consent filter`, written as it goes: one Parquet row per document, in record
batches of a fixed number of rows, so a rank's memory never follows its document count.

Per document only its own fields are appended (shard, key, url, origin, lang, bytes, date) plus
the index of its Decision: most documents share one Decision object (one per origin verdict), so
the nine decision columns are built once per distinct Decision in the batch and expanded with
`take` in Arrow, not row by row in Python. The origin and registrable-domain columns are
computed per batch too: one Arrow regex pass cuts each URL's `scheme://netloc`, which is
dictionary-encoded, so Python looks up each distinct head of the batch once (URLs without an
http(s) head, rare, go the long way one by one).
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
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
DOC_COLUMNS = ("shard", "key", "url", "lang", "bytes", "crawl_date")  # as added per row; origin and reg_domain come from url
BATCH_ROWS = 32_768  # rows buffered before a record batch is written (~10 MB of Python objects)
MAX_ORIGINS = 1 << 16  # url heads remembered with their origin and registrable domain
_HEAD = r"^(?P<h>https?://[^/?#]*)"  # what ConsentFilter keys its plans on (decide.py)


class AuditWriter:
    """Appends audit rows and writes a record batch every `batch_rows`; `close()` writes the rest."""

    def __init__(self, path: Path, policy: str, policy_version: str, as_of: str, batch_rows: int = BATCH_ROWS):
        self.writer = pq.ParquetWriter(path, AUDIT_SCHEMA, compression="zstd")
        self.consts = (policy, policy_version, as_of)
        self.batch_rows = batch_rows
        self._pending: list[tuple] = []  # one tuple per row: DOC_COLUMNS + the index of its Decision
        self.decisions: list[Decision] = []  # distinct Decisions of this batch (held so their ids stay valid)
        self._ids: dict[int, int] = {}
        self._heads: dict[str, tuple[str, str]] = {}  # "https://Host" -> (origin, registrable domain)
        self.rows = 0
        self.batches = 0

    def origin(self, head: str) -> tuple[str, str]:
        """(origin, registrable domain) of a URL head `https://Host:443`, remembered (bounded)."""
        hit = self._heads.get(head)
        if hit is None:
            hit = self._lookup(head)
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
        i = self._ids.get(id(d))
        if i is None:
            i = self._ids[id(d)] = len(self.decisions)
            self.decisions.append(d)
        rows = self._pending  # one append per row; columns are made by one transpose per batch
        rows.append((shard, key, url if url.__class__ is str else None, lang, nbytes,
                     crawl if crawl.__class__ is str else None, i))
        if len(rows) >= self.batch_rows:
            self.flush()

    def buffered(self) -> int:
        """Python objects this writer holds for rows not yet written (bounded by batch_rows)."""
        return len(self._pending) * (len(DOC_COLUMNS) + 1) + len(self.decisions) + len(self._heads)

    def flush(self) -> None:
        n = len(self._pending)
        if not n:
            return
        *cols, decision_idx = zip(*self._pending)
        idx = pa.array(decision_idx, pa.int32())
        ds = self.decisions
        per_decision = {
            "decision": ["keep" if d.keep else "drop" for d in ds], "reason": [d.reason for d in ds],
            "agent": [d.agent for d in ds], "rule": [d.rule for d in ds], "snapshot_date": [d.snapshot for d in ds],
            "snapshot_sha256": [d.sha256 for d in ds], "flags": [",".join(d.flags) for d in ds],
            "group": [d.group for d in ds],
        }
        arrays = {name: pa.array(col, AUDIT_SCHEMA.field(name).type) for name, col in zip(DOC_COLUMNS, cols)}
        arrays["origin"], arrays["reg_domain"] = self._origin_columns(arrays["url"])
        arrays.update({name: pa.array(vals, pa.string()).take(idx) for name, vals in per_decision.items()})
        for name, value in zip(("policy", "policy_version", "as_of"), self.consts):
            arrays[name] = pa.repeat(pa.scalar(value, pa.string()), n)
        self.writer.write_batch(pa.record_batch([arrays[f.name] for f in AUDIT_SCHEMA], schema=AUDIT_SCHEMA))
        self._pending.clear()
        self.decisions.clear()
        self._ids.clear()
        self.rows += n
        self.batches += 1

    def _origin_columns(self, urls: pa.Array) -> tuple[pa.Array, pa.Array]:
        heads = pc.extract_regex(urls, _HEAD)
        enc = heads.field("h").dictionary_encode()  # a row without an http(s) head has "" here
        pairs = [self.origin(h) if h else ("", "") for h in enc.dictionary.to_pylist()]
        origin = pa.array([o for o, _ in pairs], pa.string()).take(enc.indices)
        reg = pa.array([r for _, r in pairs], pa.string()).take(enc.indices)
        odd = pc.invert(heads.is_valid())
        if pc.any(odd).as_py():  # other schemes, letter cases, no url: one by one
            fixed = [self._lookup(u) if u is not None else ("", "") for u in urls.filter(odd).to_pylist()]
            origin = pc.replace_with_mask(origin, odd, pa.array([o for o, _ in fixed], pa.string()))
            reg = pc.replace_with_mask(reg, odd, pa.array([r for _, r in fixed], pa.string()))
        return origin, reg

    def close(self) -> None:
        self.flush()
        self.writer.close()
