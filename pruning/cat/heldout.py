"""Per-document held-out loss of several trained models (one process, one model build).

The pruning benchmark needs, for every (method, seed) model, the token-mean NLL of every
validation and test document: per-language averages are not enough for a bootstrap over
documents. The forward passes are `glotta prune score`'s (`pack` + `score_rows`, i.e. the
trainer's forward_step / loss_func under megatron's schedule); only the checkpoint bookkeeping
differs: these checkpoints come from different runs with one model config, so each is loaded in
turn into one model instead of being checked as "checkpoints across time" of one run.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from glotta.data.shards import list_shards
from glotta.errors import ConfigError
from glotta.pruning.cat.score import ScoreConfig, attention_layout, doc_nll_sums, pack, read_shard, score_rows


@dataclass
class HeldOutDocs:
    ids: list[str]  # shard/key
    langs: np.ndarray
    n_tokens: np.ndarray  # tokens predicted per document (EOD included)
    nll: np.ndarray  # [models, docs] token-mean NLL


def evaluate(checkpoints: list[Path], shards: Path, tokenizer: Path, micro_batch_size: int = 16,
             context: int = 0) -> HeldOutDocs:
    import sentencepiece as spm

    from glotta.train import checkpoint as ckpt
    from glotta.train.model import ModelConfig, build_model
    from glotta.train.parallel import destroy_parallel, init_parallel

    metas = [ckpt.read_meta(c) for c in checkpoints]
    models = {str(m.get("config", {}).get("model")) for m in metas}
    if len(models) != 1:
        raise ConfigError("held-out evaluation: the checkpoints have different model configs")
    model_cfg = ModelConfig.model_validate(metas[0]["config"]["model"])
    vocab = int(metas[0]["vocab_size"])
    seq_len = model_cfg.seq_length
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    eod = sp.eos_id()
    pad = sp.pad_id() if sp.pad_id() >= 0 else eod
    counters: Counter = Counter()
    docs = [read_shard(p, sp, set(), counters, strict=True) for p in list_shards(shards)]
    rows = [pack(d.ids, eod, pad, seq_len, context) for d in docs]
    cfg = ScoreConfig(micro_batch_size=micro_batch_size)
    dims = init_parallel(cfg.parallel, cfg.seed)
    try:
        model = build_model(model_cfg, dims, vocab)
        for m in model:
            m.eval()
        thd = attention_layout(model_cfg, dims, model)
        out = []
        for c in checkpoints:
            ckpt.load_checkpoint(c, model, None, None)
            sums = [doc_nll_sums(r, score_rows(model, r, cfg, seq_len, dims.device, thd), len(d.keys))
                    for d, r in zip(docs, rows)]
            out.append(np.concatenate(sums))
    finally:
        destroy_parallel()
        torch.set_grad_enabled(True)
    n_tokens = np.concatenate([d.n_tokens for d in docs])
    return HeldOutDocs([f"{d.name}/{k}" for d in docs for k in d.keys],
                       np.concatenate([np.asarray(d.langs) for d in docs]), n_tokens, np.stack(out) / n_tokens)
