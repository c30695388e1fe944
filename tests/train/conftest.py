"""Trainer fixtures: demo shards split into train / held-out valid, and a small SentencePiece model."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import sentencepiece as spm

from glotta.data import iter_samples, list_shards
from glotta.data.shards import ShardWriter

@dataclass(frozen=True)
class TrainData:
    train: Path
    valid: Path
    tokenizer: Path

    def overrides(self, valid: bool = False) -> list[str]:
        out = [f"data.train=[{self.train}]", f"data.tokenizer={self.tokenizer}"]
        return out + ([f"data.valid=[{self.valid}]"] if valid else [])


@pytest.fixture(scope="session")
def train_data(demo_shards, tmp_path_factory) -> TrainData:
    """Every 8th document of each language is held out for validation; SentencePiece (vocab 1500, byte fallback)
    is trained on the training documents' lines."""
    root = tmp_path_factory.mktemp("train_data")
    seen: dict[str, int] = {}
    lines = []
    with ShardWriter(root / "train", prefix="train", max_samples=200) as tw, ShardWriter(
        root / "valid", prefix="valid", max_samples=200
    ) as vw:
        for p in list_shards(demo_shards):
            for s in iter_samples(p):
                n = seen[s.lang] = seen.get(s.lang, 0) + 1
                if n % 8 == 0:
                    vw.write(s)
                else:
                    tw.write(s)
                    lines += [x for x in s.text.split("\n") if x.strip()]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(root / "sp"), vocab_size=1500, character_coverage=0.98,
        byte_fallback=True, model_type="unigram", seed_sentencepiece_size=20000, num_sub_iterations=1, pad_id=3,
        num_threads=2, minloglevel=2,
    )
    return TrainData(root / "train", root / "valid", root / "sp.model")
