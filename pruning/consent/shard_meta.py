"""Documents' metadata from text shards without their text: what `consent filter` reads when it
does not rewrite the shards.

A consent decision needs a document's key, its `KEY.json` (url, crawl_date, lang and the document
signals) and the size of its text, never the text itself. The C++ tar reader's index pass
(`TarReader.scan`, csrc/tar.cpp) returns per sample its key, member sizes and the bytes of the
json member in one call per batch, without copying the text, so per document only the JSON is
decoded in Python (iter_samples, data/shards.py, also copies and decodes every text).

The error policy is iter_samples': a sample without `.txt` is skipped (`missing_text`), one
without `.json` is kept with empty metadata (`missing_json`), an unreadable `.json` is skipped
(`bad_json`), damage the reader reports is counted under its own names, and strict=True raises
instead of counting. One difference, stated: the text is not decoded, so invalid UTF-8 in it is
not counted here (`utf8_replaced`; the `data` stage and the loader count it), and the audit's
`bytes` is the size of the `.txt` member (the UTF-8 byte count of any valid text).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from glotta.data.shards import _json_decode, close_counted, counting_skip, open_counted, raise_if_damaged

BATCH = 1024  # samples per reader call


def iter_meta(path: str | Path, counters: Counter, strict: bool = False) -> Iterator[tuple[str, int, dict]]:
    """(key, text bytes, metadata) of every sample of one shard, in order."""
    path = Path(path)
    name = path.name
    skip = counting_skip(counters, strict)
    reader = open_counted(path, skip)
    if reader is None:
        return
    decode = _json_decode
    try:
        while True:
            batch = reader.scan(BATCH, "json")
            raise_if_damaged(reader, path, strict)
            if not batch:
                break
            for key, _, sizes, raw in batch:
                nbytes = sizes.get("txt")
                if nbytes is None:
                    skip("missing_text", f"{name}/{key}: sample has no .txt member (has: {sorted(sizes)})")
                    continue
                if raw is None:  # a half sample: kept (the text is intact) with no metadata, counted
                    skip("missing_json", f"{name}/{key}: sample has no .json member (language unknown)")
                    meta = {}
                else:
                    try:
                        meta = decode(raw.decode("utf-8"))
                    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
                        skip("bad_json", f"{name}/{key}: .json is not valid JSON: {e}")
                        continue
                    if meta.__class__ is not dict:
                        skip("bad_json", f"{name}/{key}: .json must hold an object")
                        continue
                counters["samples"] += 1
                yield key, nbytes, meta
    finally:
        close_counted(counters, reader)
