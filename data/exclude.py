"""Exclude lists: documents that consent filtering or CAT pruning removed, applied while reading.

A text file holds one entry per line: `shard.tar/KEY` drops one document, `shard.tar` drops a
whole shard; blank lines and lines starting with '#' are ignored. A Parquet file holds either an
`id` column with the same strings or `shard` and `key` columns.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from glotta.errors import DataError


def read_exclude(paths: Iterable[str | Path]) -> set[str]:
    out: set[str] = set()
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise DataError(f"exclude list not found: {path}")
        if path.suffix == ".parquet":
            out |= _read_parquet(path)
        else:
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: exclude list is not UTF-8 text: {e}") from None
            for line in text.splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    out.add(line)
    return out


def _read_parquet(path: Path) -> set[str]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        raise DataError(f"{path}: cannot read as Parquet: {e}") from None
    cols = set(table.column_names)
    if "id" in cols:
        return {str(v) for v in table.column("id").to_pylist() if v}
    if {"shard", "key"} <= cols:
        shards, keys = table.column("shard").to_pylist(), table.column("key").to_pylist()
        return {f"{s}/{k}" for s, k in zip(shards, keys) if s and k}
    raise DataError(f"{path}: exclude Parquet needs an `id` column or `shard` and `key` columns (has {sorted(cols)})")


def is_excluded(exclude: set[str], shard: str, key: str) -> bool:
    return bool(exclude) and (shard in exclude or f"{shard}/{key}" in exclude)
