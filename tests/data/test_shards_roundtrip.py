"""Round trip: our writer -> our C++ reader and the webdataset library give the same samples."""
from __future__ import annotations

import webdataset as wds

from glotta.data import Manifest, Sample, ShardWriter, iter_samples, list_shards


def _write(tmp_path, texts, **kw):
    samples = [
        Sample(key=f"doc{i:05d}", text=t, meta={"lang": lang, "url": f"https://example.org/{i}"})
        for i, (lang, t) in enumerate(texts)
    ]
    with ShardWriter(tmp_path, **kw) as w:
        for s in samples:
            w.write(s)
    Manifest(shards=w.written).save(tmp_path)
    return samples


def test_roundtrip_ours_and_webdataset(tmp_path, multilingual_text):
    texts = [(lang, t * (1 + i % 3)) for i, (lang, t) in enumerate(list(multilingual_text.items()) * 5)]
    written = _write(tmp_path, texts, max_samples=7)
    shards = list_shards(tmp_path, verify=True)
    assert len(shards) == 6
    ours = [s for p in shards for s in iter_samples(p)]
    assert [(s.key, s.text, s.meta) for s in ours] == [(s.key, s.text, s.meta) for s in written]
    theirs = list(wds.WebDataset([str(p) for p in shards], shardshuffle=False).decode())
    assert [(x["__key__"], x["txt"], x["json"]) for x in theirs] == [(s.key, s.text, s.meta) for s in written]
