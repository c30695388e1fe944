"""The trainer's side of the loader contract: TokenLoader per rank, validation data, bytes per token.

Only tensor-parallel rank 0 of each pipeline stage builds a loader (get_batch broadcasts over TP);
every stage reads because every stage needs the document mask. All loaders of one DP rank are
built identically, so their states agree; stage 0 writes the state into checkpoints.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from glotta.config import StrictModel
from glotta.errors import ConfigError


class DataConfig(StrictModel):
    # Shard directories (or shard files) for training and for held-out validation.
    train: list[str] = []
    valid: list[str] = []
    # SentencePiece .model file.
    tokenizer: str | None = None
    # Exclude lists (`shard.tar/KEY` per line) applied while reading (consent filtering, CAT).
    exclude: list[str] = []
    # Mixing config passed to TokenLoader (see glotta.data.mixing.MixConfig); None = its default.
    mix: dict[str, Any] | None = None
    # Tokenizer processes per loader (0 = tokenize in the training process).
    num_workers: int = 0
    # Further TokenLoader keyword arguments (e.g. packing), passed through unchanged.
    loader: dict[str, Any] = {}


@dataclass
class TrainData:
    loader: Any  # this rank's TokenLoader, None where the rank does not read
    langs: list[str]
    vocab_size: int
    valid_langs: list[str] = field(default_factory=list)
    byte_lengths: torch.Tensor | None = None  # UTF-8 bytes per token id (for bits per byte)
    told_own_batch: bool = False  # evaluate() said once that languages got a validation batch of their own
    _iter: Any = None

    def iterators(self, vpp: int | None):
        """The data iterator(s) for get_forward_backward_func (one per model chunk with interleaving)."""
        if self._iter is None:
            self._iter = iter(self.loader) if self.loader is not None else None
        if not vpp:
            return self._iter
        if self._iter is None:
            return [None] * vpp
        return list(itertools.tee(self._iter, vpp))


def _make_loader(cfg, dims, sources: list[str], seed: int, dp_rank: int, dp_size: int, mix: dict | None = None):
    from glotta.data.loader import TokenLoader

    extra = dict(cfg.data.loader)
    if cfg.data.exclude:
        extra["exclude"] = list(cfg.data.exclude)
    # global_batch_size fixes the global sample order independently of dp_size (elastic resume).
    return TokenLoader(
        sources,
        cfg.data.tokenizer,
        seq_len=cfg.model.seq_length,
        micro_batch_size=cfg.micro_batch_size,
        mix=mix if mix is not None else cfg.data.mix,
        seed=seed,
        dp_rank=dp_rank,
        dp_size=dp_size,
        num_workers=cfg.data.num_workers,
        global_batch_size=cfg.global_batch_size,
        **extra,
    )


def build_data(cfg, dims) -> TrainData:
    """Loaders for this rank (TP rank 0 of each stage) and the facts every rank needs."""
    if not cfg.data.train:
        raise ConfigError("data.train: no training shard directories given")
    if not cfg.data.tokenizer:
        raise ConfigError("data.tokenizer: no SentencePiece model given")
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=cfg.data.tokenizer)
    loader = _make_loader(cfg, dims, cfg.data.train, cfg.seed, dims.dp_rank, dims.dp) if dims.loads_data else None
    langs = list(loader.langs) if loader is not None else []
    # Every rank needs the language list (for report sizes): share it from global rank 0.
    langs = _broadcast_object(langs)
    valid_langs = []
    if cfg.data.valid:
        valid_langs = _broadcast_object(list(_make_loader(cfg, dims, cfg.data.valid, cfg.seed, 0, 1).langs) if dims.rank == 0 else None)
    return TrainData(loader, langs, sp.get_piece_size(), valid_langs, byte_lengths(sp))


def _broadcast_object(obj):
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def valid_iterator(cfg, dims, batches: int, lang: str | None = None):
    """A fresh, deterministic validation stream for one evaluation (same batches every time): the
    configured mix of held-out languages, or with `lang` that language's documents only."""
    if not dims.loads_data:
        return None
    mix = {"langs": [lang]} if lang is not None else None
    loader = _make_loader(cfg, dims, cfg.data.valid, cfg.seed, dims.dp_rank, dims.dp, mix)
    return _cycle(loader, batches)


def _cycle(loader, n: int):
    """n batches from the loader, starting it again if the held-out set is smaller than n."""
    count = 0
    while count < n:
        empty = True
        for batch in loader:
            empty = False
            yield batch
            count += 1
            if count == n:
                return
        if empty:
            raise ConfigError("data.valid: the validation loader yielded no batch")


def byte_lengths(sp) -> torch.Tensor:
    """UTF-8 bytes each token id stands for: byte-fallback pieces 1, control/unknown 0, '▁' a space.
    Sum over predicted tokens -> bytes of text, so bits per byte compares across tokenizers."""
    out = torch.zeros(sp.get_piece_size(), dtype=torch.float64)
    for i in range(sp.get_piece_size()):
        if sp.is_byte(i):
            out[i] = 1
        elif not (sp.is_control(i) or sp.is_unknown(i)):
            out[i] = len(sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
    return out


def bits_per_byte(loss_sum_nats: float, num_bytes: float) -> float:
    return loss_sum_nats / (math.log(2) * num_bytes) if num_bytes > 0 else float("nan")
