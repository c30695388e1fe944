"""The validation stream of one held-out language (train/data.py valid_iterator(lang=...)): what
evaluate() gives a language the mixed batches missed. Its batches hold that language's documents
only, as language id 0 of a one-language loader (evaluate() maps id 0 back to the language)."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from glotta.train.config import load_train_config
from glotta.train.data import valid_iterator


def test_one_language_validation_stream(train_data):
    cfg = load_train_config(None, [*train_data.overrides(valid=True), "model.seq_length=64", "micro_batch_size=2",
                                   "global_batch_size=2"])
    dims = SimpleNamespace(loads_data=True, dp_rank=0, dp=1)
    mixed = list(valid_iterator(cfg, dims, 1))
    el = list(valid_iterator(cfg, dims, 3, lang="el"))
    assert len(mixed) == 1 and len(el) == 3
    for b in el:
        real = b["loss_mask"] > 0
        assert real.any() and torch.all(b["lang_ids"][real] == 0)  # one language: id 0
    # the text is that language's: Greek letters in the el stream, none in the de stream
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(train_data.tokenizer))

    def greek_share(batches) -> float:
        ids = [int(t) for b in batches for t in b["labels"][b["loss_mask"] > 0] if t != sp.eos_id()]
        letters = [c for c in sp.decode(ids) if c.isalpha()]
        return sum("\u0370" <= c <= "\u03ff" or "\u1f00" <= c <= "\u1fff" for c in letters) / max(len(letters), 1)

    assert greek_share(el) > 0.5  # gettext's Greek keeps some command syntax in Latin letters
    assert greek_share(valid_iterator(cfg, dims, 3, lang="de")) < 0.01
