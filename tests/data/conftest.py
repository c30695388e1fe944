"""Loader fixtures: a small real SentencePiece model trained on the demo shards' text."""
from __future__ import annotations

import pytest
import sentencepiece as spm

from glotta.data import iter_samples, list_shards


@pytest.fixture(scope="session")
def sp_model(demo_shards, tmp_path_factory):
    """Unigram, vocab 2000, trained with the sentencepiece library directly (a few seconds)."""
    out = tmp_path_factory.mktemp("spm")
    texts = [s.text for p in list_shards(demo_shards) for s in iter_samples(p)]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_prefix=str(out / "demo"),
        vocab_size=2000,
        character_coverage=0.9995,
        model_type="unigram",
        pad_id=3,
        num_threads=2,
        minloglevel=2,
    )
    return out / "demo.model"
