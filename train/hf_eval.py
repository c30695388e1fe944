"""Held-out loss and bits per byte per language, through glotta's model and through the exported
Hugging Face model on the same tokens: the evaluation hook that shows an export is the same model.

Text is scored as the trainer scores it: each document's tokens followed by the end-of-document id,
concatenated per language and cut into windows of seq_length+1 (inputs, next-token labels);
bits per byte use the trainer's UTF-8 bytes per token (glotta.train.data.byte_lengths).

glotta's softmax runs over the padded vocabulary (megatron's padding rows, a multiple of 128 x TP),
the exported model's over the real vocabulary only. `loss` is compared on the real vocabulary (the
model the export defines); `glotta_loss_padded` is the trainer's own figure with the padding rows,
so the report also shows what dropping them changes.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from pydantic import Field

from glotta.config import StrictModel


class EvalHFConfig(StrictModel):
    checkpoint: Path | None = None
    hf: Path | None = None  # its export-hf directory
    shards: Path | None = None  # held-out shard set
    max_docs: int = Field(50, gt=0)  # per language
    max_windows: int = Field(8, gt=0)  # windows of seq_length+1 tokens per language


def run(cfg: EvalHFConfig) -> list[LangEval]:
    """compare_heldout on the first max_docs documents per language of a shard set."""
    from glotta.data import iter_samples, list_shards
    from glotta.errors import ConfigError

    for key in ("checkpoint", "hf", "shards"):
        if getattr(cfg, key) is None:
            raise ConfigError(f"{key}: required")
    texts: dict[str, list[str]] = {}
    for p in list_shards(cfg.shards):
        for s in iter_samples(p):
            if len(texts.setdefault(s.lang, [])) < cfg.max_docs:
                texts[s.lang].append(s.text)
    return compare_heldout(cfg.checkpoint, cfg.hf, texts, max_windows=cfg.max_windows)


@dataclass
class LangEval:
    lang: str
    tokens: int
    bytes: int
    glotta_loss: float  # nats/token, softmax over the real vocabulary
    hf_loss: float
    glotta_bpb: float
    hf_bpb: float
    glotta_loss_padded: float  # the trainer's softmax over the padded vocabulary
    max_abs_diff: float  # |glotta_loss - hf_loss|

    def as_dict(self) -> dict:
        return asdict(self)


def windows(docs: list[list[int]], eod: int, seq: int, max_windows: int) -> torch.Tensor:
    ids = [t for d in docs for t in d + [eod]]
    n = min((len(ids) - 1) // seq, max_windows)
    if n < 1:
        return torch.empty(0, seq + 1, dtype=torch.long)
    return torch.tensor(ids[: n * seq + 1]).unfold(0, seq + 1, seq)[:n]


def _ce(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(), labels.reshape(-1),
                                                   reduction="sum"))


@torch.no_grad()
def compare_heldout(checkpoint: str | Path, hf_dir: str | Path, texts: dict[str, list[str]],
                    max_windows: int = 8, batch: int = 4) -> list[LangEval]:
    """Per-language loss/bpb of the checkpoint (glotta) and of its export `hf_dir` (transformers)."""
    from transformers import AutoModelForCausalLM

    from glotta.tokenizer.evaluate import load_model as load_sp
    from glotta.train.data import byte_lengths
    from glotta.train.inference import check_tokenizer, checkpoint_meta, full_logits, load_model
    from glotta.train.parallel import destroy_parallel

    meta = checkpoint_meta(checkpoint)
    sp = load_sp(check_tokenizer(meta, None))
    nbytes, vocab, seq = byte_lengths(sp), meta.vocab_size, meta.model.seq_length
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    model, _ = load_model(meta.path)
    out = []
    try:
        for lang in sorted(texts):
            win = windows([sp.encode(t) for t in texts[lang]], sp.eos_id(), seq, max_windows)
            if not len(win):
                continue
            sums = {"g": 0.0, "h": 0.0, "p": 0.0}
            for b in range(0, len(win), batch):
                x, y = win[b:b + batch, :-1], win[b:b + batch, 1:]
                g = full_logits(model, x)
                sums["p"] += _ce(g, y)
                sums["g"] += _ce(g[..., :vocab], y)
                sums["h"] += _ce(hf(x).logits.float(), y)
            labels = win[:, 1:]
            ntok, nb = labels.numel(), float(nbytes[labels].sum())
            out.append(LangEval(lang, ntok, int(nb), sums["g"] / ntok, sums["h"] / ntok, sums["g"] / math.log(2) / nb,
                                sums["h"] / math.log(2) / nb, sums["p"] / ntok, abs(sums["g"] - sums["h"]) / ntok))
    finally:
        destroy_parallel()
    return out
