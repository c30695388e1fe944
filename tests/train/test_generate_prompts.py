"""Prompts for the demo summary's continuations: one per language, taken from the held-out shards."""
from __future__ import annotations

import pytest

from glotta.data.shards import iter_samples, shard_entries
from glotta.errors import ConfigError
from glotta.train.generate import prompts_from_shards


def test_one_prompt_per_language_from_its_first_document(demo_shards):
    prompts = dict(prompts_from_shards(demo_shards, chars=40))
    first: dict[str, str] = {}
    for shard, _ in shard_entries(demo_shards):
        for s in iter_samples(shard):
            first.setdefault(s.lang, next(x.strip() for x in s.text.splitlines() if x.strip()))
    assert set(prompts) == set(first) - {"und"}
    for lang, p in prompts.items():
        line = first[lang]
        assert p and len(p) <= 40 and line.startswith(p)
        assert len(p) <= max(1, len(line) * 3 // 5)  # the model has something left to continue
        n = max(1, min(40, len(line) * 3 // 5))
        if " " in line[n // 2 : n]:  # cut at a word boundary where there is one
            assert line[len(p)] == " "


def test_a_set_without_text_is_a_clear_error(tmp_path):
    from glotta.data.shards import Sample, ShardWriter

    with ShardWriter(tmp_path, prefix="x") as w:
        w.write(Sample("a", "   \n", {"lang": "en"}))
    with pytest.raises(ConfigError, match="no document"):
        prompts_from_shards(tmp_path)
