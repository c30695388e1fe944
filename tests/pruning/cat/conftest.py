"""Fixtures for CAT selection tests: a SentencePiece model and a real scores table on demo_shards.

The scores come from a real (if simple) model trained over time: add-one unigram language models
fitted on growing prefixes of the corpus (5%, 20%, 60% of the documents in a stable-hash order)
play the role of three early checkpoints. Each document's token-mean NLL (over its tokens plus the
end-of-document token, as `glotta prune score` counts them) falls as the "checkpoint" sees more
data, and falls faster for documents like those already seen: real training dynamics without a GPT.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from glotta.data import iter_samples, list_shards
from glotta.data.manifest import sha256_file
from glotta.pruning.cat.table import ScoresMeta, nll_column, write_scores

STEPS = [50, 200, 600]  # "checkpoint steps" = documents seen x 1 (informational)
FRACTIONS = [0.05, 0.2, 0.6]


@pytest.fixture(scope="session")
def spm_model(demo_shards, tmp_path_factory):
    import sentencepiece as spm

    lines = [t for p in list_shards(demo_shards) for s in iter_samples(p) for t in s.text.split("\n") if t.strip()]
    prefix = tmp_path_factory.mktemp("spm") / "cat"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines[:: max(1, len(lines) // 3000)]),  # every k-th line: 5x faster to train
        model_prefix=str(prefix), vocab_size=2000, model_type="unigram", byte_fallback=True,
        character_coverage=0.98, user_defined_symbols=["<eod>"], num_threads=2, minloglevel=2,
    )
    return prefix.with_suffix(".model")


def unigram_scores(demo_shards, model_path):
    """{shard: DataFrame rows} with NLL at each prefix "checkpoint"."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    eod = sp.piece_to_id("<eod>")
    docs = [s for p in list_shards(demo_shards) for s in iter_samples(p)]
    ids = [sp.encode(s.text) + [eod] for s in docs]
    order = sorted(range(len(docs)), key=lambda i: hashlib.blake2b(docs[i].id.encode(), digest_size=8).digest())
    V = sp.get_piece_size()
    nll = np.zeros((len(docs), len(FRACTIONS)))
    for k, frac in enumerate(FRACTIONS):
        counts = np.ones(V)
        for i in order[: int(frac * len(docs))]:
            np.add.at(counts, ids[i], 1)
        logp = np.log(counts / counts.sum())
        nll[:, k] = [-logp[t].mean() for t in ids]
    rows: dict[str, dict[str, list]] = {}
    for i, s in enumerate(docs):
        r = rows.setdefault(s.shard, {c: [] for c in ["shard", "key", "lang", "n_tokens", "n_bytes"]
                                      + [nll_column(k + 1) for k in range(len(FRACTIONS))]})
        r["shard"].append(s.shard)
        r["key"].append(s.key)
        r["lang"].append(s.lang)
        r["n_tokens"].append(len(ids[i]))
        r["n_bytes"].append(len(s.text.encode("utf-8")))
        for k in range(len(FRACTIONS)):
            r[nll_column(k + 1)].append(float(nll[i, k]))
    return rows


@pytest.fixture(scope="session")
def scores_dir(demo_shards, spm_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("scores")
    meta = ScoresMeta(run_id="unigram-prefix", tokenizer_sha256=sha256_file(spm_model), checkpoint_steps=STEPS,
                      seq_len=512)
    for shard, rows in unigram_scores(demo_shards, spm_model).items():
        write_scores(out / f"{shard}.parquet", rows, meta)
    return out
