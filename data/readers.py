"""Input formats for `glotta data import`: JSONL (optionally gzipped), Parquet and plain text.

Readers yield `RawRecord`s in file order with a stable per-file index (the resume cursor)
and a `where` string naming the file and line/row for error messages. Decoding (UTF-8,
JSON) happens later, only for the records this rank takes (see importer.py).
"""
from __future__ import annotations

import glob
import gzip
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from glotta.errors import DataError

Format = Literal["jsonl", "parquet", "text"]
TextSplit = Literal["file", "lines", "paragraphs"]
SUFFIXES: dict[str, Format] = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".jsonl.gz": "jsonl", ".ndjson.gz": "jsonl",
    ".parquet": "parquet", ".pq": "parquet",
    ".txt": "text", ".txt.gz": "text",
}  # fmt: skip


@dataclass
class RawRecord:
    index: int  # 0-based record index in its file: the resume cursor
    where: str  # "file:line 12", "file:row 7", "file:paragraph 3" or "file"
    payload: Any  # bytes (a JSONL line or a text document) or dict (a Parquet row)


def detect_format(path: Path) -> Format | None:
    name = path.name.lower()
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return SUFFIXES[suffix]
    return None


def expand_inputs(inputs: list[str], fmt: Format | None = None) -> tuple[list[tuple[Path, Format]], list[Path]]:
    """Files, directories (walked recursively) and globs -> [(file, format)] plus ignored files.

    A file named explicitly must have a known suffix (or `fmt` must be given); files inside
    a directory or matched by a glob with an unknown suffix are returned as ignored.
    """
    found: list[tuple[Path, Format]] = []
    ignored: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path, explicit: bool) -> None:
        rp = p.resolve()
        if rp in seen:
            return
        seen.add(rp)
        f = fmt or detect_format(p)
        if f is None:
            if explicit:
                raise DataError(f"{p}: unknown input format; expected one of {', '.join(SUFFIXES)} (or pass --format)")
            ignored.append(p)
        else:
            found.append((p, f))

    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for child in sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith(".")):
                add(child, explicit=False)
        elif p.is_file():
            add(p, explicit=True)
        elif glob.has_magic(item):
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file())
            if not matches:
                raise DataError(f"input pattern {item!r} matches no files")
            for m in matches:
                add(m, explicit=False)
        else:
            raise DataError(f"input not found: {item}")
    if not found:
        raise DataError(f"no importable files in {', '.join(inputs)} (ignored: {len(ignored)} with unknown suffixes)")
    return found, ignored


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def read_jsonl(path: Path, start: int = 0) -> Iterator[RawRecord]:
    i = -1
    with _open_binary(path) as f:
        try:
            for i, line in enumerate(f):
                if i >= start:
                    yield RawRecord(i, f"{path}:line {i + 1}", line)
        except (OSError, EOFError) as e:  # truncated or corrupt gzip
            raise DataError(f"{path}: corrupt or truncated after line {i + 1}: {e}") from None


def read_parquet(path: Path, start: int = 0, batch_rows: int = 4096) -> Iterator[RawRecord]:
    """Streams record batches; on resume, whole row groups before `start` are not read at all."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError on non-Parquet files
        raise DataError(f"{path}: not a readable Parquet file: {e}") from None
    first_group, row = 0, 0
    while first_group < pf.num_row_groups and row + pf.metadata.row_group(first_group).num_rows <= start:
        row += pf.metadata.row_group(first_group).num_rows
        first_group += 1
    groups = list(range(first_group, pf.num_row_groups))
    if not groups:
        return
    for batch in pf.iter_batches(batch_size=batch_rows, row_groups=groups):
        for rec in batch.to_pylist():
            if row >= start:
                yield RawRecord(row, f"{path}:row {row}", rec)
            row += 1


_PARAGRAPH = re.compile(rb"\r?\n[ \t]*\r?\n")


def read_text(path: Path, split: TextSplit = "file", start: int = 0) -> Iterator[RawRecord]:
    """`file`: the whole file is one document; `lines`/`paragraphs`: one per non-blank line / paragraph."""
    with _open_binary(path) as f:
        try:
            data = f.read()
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: cannot read: {e}") from None
    if split == "file":
        if start == 0:
            yield RawRecord(0, str(path), data)
        return
    pieces = data.splitlines() if split == "lines" else _PARAGRAPH.split(data)
    label = "line" if split == "lines" else "paragraph"
    i = 0
    for n, piece in enumerate(pieces):
        if not piece.strip():
            continue  # separators, not documents
        if i >= start:
            yield RawRecord(i, f"{path}:{label} {n + 1}", piece)
        i += 1


def iter_records(path: Path, fmt: Format, text_split: TextSplit = "file", start: int = 0) -> Iterator[RawRecord]:
    if fmt == "jsonl":
        return read_jsonl(path, start)
    if fmt == "parquet":
        return read_parquet(path, start)
    return read_text(path, text_split, start)
