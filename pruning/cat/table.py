"""The scores table: one Parquet row per document, one NLL column per kept checkpoint.

Columns: `shard`, `key`, `lang`, `n_tokens` (tokens predicted), `n_bytes` (UTF-8 bytes of the
text), `nll_ckpt_1..K` (token-mean negative log-likelihood in nats at each checkpoint, in
training order). The Parquet schema metadata (`glotta.scores`, JSON) says which run, which
checkpoint steps and which tokenizer produced the numbers, so `select` can refuse to mix
tables from different runs or tokenizers.

`glotta prune score` writes one file per shard (`<shard>.parquet`, resumable per shard);
`read_scores` accepts a single file or a folder of them and checks that they agree.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from glotta.errors import DataError

META_KEY = b"glotta.scores"
VERSION = 1
ID_COLUMNS = ["shard", "key", "lang", "n_tokens", "n_bytes"]


def nll_column(k: int) -> str:
    """Checkpoint columns are numbered from 1 in training order."""
    return f"nll_ckpt_{k}"


@dataclass
class ScoresMeta:
    run_id: str
    tokenizer_sha256: str
    checkpoint_steps: list[int]
    seq_len: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # model size, scorer TP/PP, ... (informational)

    @property
    def k(self) -> int:
        return len(self.checkpoint_steps)

    def identity(self) -> tuple:
        """What must match for two tables to be combined."""
        return (self.run_id, self.tokenizer_sha256, tuple(self.checkpoint_steps), self.seq_len)

    def to_bytes(self) -> bytes:
        return json.dumps({"version": VERSION, **asdict(self)}, sort_keys=True).encode("utf-8")

    @classmethod
    def from_schema(cls, schema: pa.Schema, source: str) -> "ScoresMeta":
        raw = (schema.metadata or {}).get(META_KEY)
        if raw is None:
            raise DataError(f"{source}: not a glotta scores table (no '{META_KEY.decode()}' schema metadata)")
        data = json.loads(raw)
        if data.pop("version", None) != VERSION:
            raise DataError(f"{source}: unsupported scores table version (expected {VERSION})")
        try:
            return cls(**data)
        except TypeError as e:
            raise DataError(f"{source}: malformed scores metadata: {e}") from None


def schema(meta: ScoresMeta) -> pa.Schema:
    fields = [
        pa.field("shard", pa.string()),
        pa.field("key", pa.string()),
        pa.field("lang", pa.string()),
        pa.field("n_tokens", pa.int64()),
        pa.field("n_bytes", pa.int64()),
    ] + [pa.field(nll_column(k + 1), pa.float64()) for k in range(meta.k)]
    return pa.schema(fields, metadata={META_KEY: meta.to_bytes()})


def write_scores(path: str | Path, rows: pd.DataFrame | dict[str, Any], meta: ScoresMeta) -> Path:
    """Write atomically (temporary name, then rename): a present file is a finished file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(pd.DataFrame(rows), schema=schema(meta), preserve_index=False)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def score_files(path: str | Path) -> list[Path]:
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.glob("*.parquet") if not f.name.startswith("."))
        if files:
            return files
        raise DataError(f"{p}: no *.parquet scores files")
    raise DataError(f"scores not found: {p}")


def read_meta(path: str | Path) -> ScoresMeta:
    """Metadata of every file under `path`; raises if they come from different runs or tokenizers."""
    metas = [(f, ScoresMeta.from_schema(pq.read_schema(f), str(f))) for f in score_files(path)]
    first_file, first = metas[0]
    for f, m in metas[1:]:
        if m.identity() != first.identity():
            raise DataError(f"scores from different runs: {f} ({_describe(m)}) vs {first_file} ({_describe(first)})")
    return first


def _describe(m: ScoresMeta) -> str:
    return f"run {m.run_id}, tokenizer {m.tokenizer_sha256[:12]}, steps {m.checkpoint_steps}, seq_len {m.seq_len}"


def read_scores(paths: str | Path | list[str | Path]) -> tuple[pd.DataFrame, ScoresMeta]:
    """All rows of one or more scores files/folders, checked to come from one run and tokenizer."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise DataError("no scores given")
    metas = [(p, read_meta(p)) for p in paths]
    meta = metas[0][1]
    for p, m in metas[1:]:
        if m.identity() != meta.identity():
            raise DataError(f"scores from different runs: {p} ({_describe(m)}) vs {paths[0]} ({_describe(meta)})")
    frames = []
    for p in paths:
        for f in score_files(p):
            t = pq.read_table(f)
            missing = [c for c in ID_COLUMNS + [nll_column(k + 1) for k in range(meta.k)] if c not in t.column_names]
            if missing:
                raise DataError(f"{f}: missing columns {missing}")
            frames.append(t.to_pandas())
    df = pd.concat(frames, ignore_index=True)
    dupes = df.duplicated(["shard", "key"])
    if dupes.any():
        first = df[dupes].iloc[0]
        raise DataError(f"scores list {first.shard}/{first.key} more than once ({int(dupes.sum())} duplicate rows)")
    return df, meta


def nll_matrix(df: pd.DataFrame, k: int) -> np.ndarray:
    """[n_docs, K] token-mean NLL; NaN (a document with no scored token) is an error."""
    m = df[[nll_column(i + 1) for i in range(k)]].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(m).all(axis=1)
    if bad.any():
        row = df[bad].iloc[0]
        raise DataError(f"scores for {row.shard}/{row.key} are not finite ({int(bad.sum())} such documents)")
    return m
