"""Loader fixtures: a small real SentencePiece model trained on the demo shards' text."""
from __future__ import annotations

import pytest
import sentencepiece as spm

from glotta.data import iter_samples, list_shards


@pytest.fixture(scope="session")
def sp_model(demo_shards, tmp_path_factory):
    """Unigram, vocab 2000, trained on the demo text lines with the sentencepiece library directly."""
    out = tmp_path_factory.mktemp("spm")
    lines = [line for p in list_shards(demo_shards) for s in iter_samples(p) for line in s.text.split("\n") if line.strip()]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(out / "demo"),
        vocab_size=2000,
        character_coverage=0.9995,
        model_type="unigram",
        seed_sentencepiece_size=20000,  # a smaller seed set and one EM sub-iteration: ~4 s on 2 busy cores
        num_sub_iterations=1,
        pad_id=3,
        num_threads=2,
        minloglevel=2,
    )
    return out / "demo.model"
