"""Fixtures for tokenizer tests: held-out parallel text and a skewed real shard set."""
from __future__ import annotations

import pytest

from glotta.data import ShardWriter, iter_samples, list_shards
from glotta.data.manifest import Manifest
from glotta.tokenizer.parallel import gettext_parallel, parallel_texts

LANGS = ["en", "de", "fr", "es", "ru", "el", "ja", "zh", "hi", "ar"]
# Languages cut to a tenth of their documents: the "small" languages of the skewed set.
SMALL = {"el": 8, "hi": 8, "ar": 8}


@pytest.fixture(scope="session")
def parallel_jsonl(tmp_path_factory):
    path = tmp_path_factory.mktemp("parallel") / "gettext.jsonl"
    gettext_parallel(path, LANGS, max_ids=600)
    return path


@pytest.fixture(scope="session")
def skewed_shards(demo_shards, parallel_jsonl, tmp_path_factory):
    """demo_shards with el/hi/ar cut to 8 documents and every evaluation line removed (held out)."""
    held = parallel_texts(parallel_jsonl)
    out = tmp_path_factory.mktemp("skewed")
    kept: dict[str, int] = {}
    with ShardWriter(out, prefix="skewed", max_samples=400) as w:
        for shard in list_shards(demo_shards):
            for s in iter_samples(shard):
                if kept.get(s.lang, 0) >= SMALL.get(s.lang, 10**9):
                    continue
                lines = [x for x in s.text.split("\n") if x.strip() and x.strip() not in held]
                if not lines:
                    continue
                kept[s.lang] = kept.get(s.lang, 0) + 1
                s.text = "\n".join(lines)
                w.write(s)
    Manifest(shards=w.written, meta={"source": "demo_shards, skewed"}).save(out)
    return out
