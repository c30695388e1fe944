"""`consent filter` reads metadata and text sizes through the C++ reader's index pass (shard_meta.py):
the same documents, metadata and counters as iter_samples on a shard with half samples, bad JSON
and non-ASCII text; --strict raises where iter_samples raises."""
from __future__ import annotations

import io
import json
import tarfile
from collections import Counter

import pytest

from glotta.data.shards import iter_samples
from glotta.errors import DataError
from glotta.pruning.consent.shard_meta import iter_meta


def _shard(path):
    members = [
        ("a.txt", "plain text".encode()), ("a.json", json.dumps({"url": "https://a.example/x", "lang": "en"}).encode()),
        ("b.txt", "Ünïcödé 文本".encode()), ("b.json", json.dumps({"url": "https://b.example/", "crawl_date": "2024-01-01"}).encode()),
        ("c.txt", b"no metadata"),  # missing_json: kept with {}
        ("d.json", b'{"url": "https://d.example/"}'),  # missing_text: skipped
        ("e.txt", b"bad json"), ("e.json", b"{not json"),  # bad_json: skipped
        ("f.txt", b"array"), ("f.json", b"[1, 2]"),  # bad_json: not an object
        ("g.txt", b"last"), ("g.json", b'{"url": "http://g.example/?q=1"}'),
    ]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_iter_meta_matches_iter_samples(tmp_path):
    shard = _shard(tmp_path / "s.tar")
    ours, theirs = Counter(), Counter()
    got = list(iter_meta(shard, ours))
    want = [(s.key, len(s.text.encode("utf-8")), s.meta) for s in iter_samples(shard, counters=theirs)]
    assert got == want and [k for k, _, _ in got] == ["a", "b", "c", "g"]
    assert ours == theirs and ours["missing_json"] == 1 and ours["missing_text"] == 1 and ours["bad_json"] == 2
    for strict_reader in (lambda: list(iter_meta(shard, Counter(), strict=True)),
                          lambda: list(iter_samples(shard, counters=Counter(), strict=True))):
        with pytest.raises(DataError):
            strict_reader()
