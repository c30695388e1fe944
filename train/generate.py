"""Text generation from a glotta checkpoint: greedy, temperature and top-p (nucleus) sampling,
stop at end-of-document, a batch of prompts. In one CPU process, or under torchrun with tensor
parallelism (every rank runs the same loop; logits are gathered over TP and every rank draws the
same token from the same seeded generator, so no broadcast is needed).

    from glotta.train.generate import GenerateConfig, generate
    outs = generate("runs/x/checkpoints", ["Der Fuchs"], GenerateConfig(max_tokens=20))

There is no KV cache: each new token re-runs the prompt and the tokens so far (cost grows with the
square of the length), which suits the short continuations of small models this is for (demo
summaries, smoke tests); serve large models from the exported HF directory (vLLM, transformers).
Tokens are never produced from the vocabulary padding rows.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from pydantic import Field

from glotta.config import StrictModel
from glotta.errors import ConfigError


class GenerateConfig(StrictModel):
    max_tokens: int = Field(32, gt=0)  # new tokens per prompt at most
    temperature: float = Field(0.0, ge=0.0)  # 0 = greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = 0
    stop_at_eod: bool = True
    tokenizer: Path | None = None  # default: the run's data.tokenizer


@dataclass
class Generation:
    prompt: str
    text: str  # the continuation only
    tokens: list[int]  # the continuation's ids
    prompt_tokens: int
    stopped: str  # "eod" or "max_tokens"

    def as_dict(self) -> dict:
        return asdict(self)


def next_token(logits: torch.Tensor, cfg: GenerateConfig, gen: torch.Generator) -> int:
    """One token from a [V] logit vector (real vocabulary only)."""
    if cfg.temperature == 0.0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.double() / cfg.temperature, dim=-1)
    if cfg.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the most likely token)
        keep = torch.cumsum(sorted_p, 0) - sorted_p < cfg.top_p
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))


def generate_with(model, sp, vocab_size: int, seq_length: int, prompts: list[str], cfg: GenerateConfig,
                  eod_id: int) -> list[Generation]:
    """Generate with a loaded megatron model (glotta.train.inference.load_model) and its tokenizer."""
    from glotta.train.inference import full_logits

    gen = torch.Generator().manual_seed(cfg.seed)
    out = []
    for prompt in prompts:
        ids = sp.encode(prompt)
        if not ids:
            ids = [eod_id]  # an empty prompt starts a new document
        new, stopped = [], "max_tokens"
        for _ in range(cfg.max_tokens):
            ctx = (ids + new)[-seq_length:]  # past the trained length, a sliding window
            logits = full_logits(model, torch.tensor([ctx]))[0, -1, :vocab_size]
            tok = next_token(logits, cfg, gen)
            if cfg.stop_at_eod and tok == eod_id:
                stopped = "eod"
                break
            new.append(tok)
        out.append(Generation(prompt, sp.decode(new), new, len(ids), stopped))
    return out


def generate(checkpoint: str | Path, prompts: list[str], cfg: GenerateConfig | None = None) -> list[Generation]:
    """Load a checkpoint (TP = WORLD_SIZE under torchrun, else 1) and continue every prompt."""
    import os

    from glotta.tokenizer.evaluate import load_model as load_sp
    from glotta.train.checkpoint import CheckpointError
    from glotta.train.inference import check_tokenizer, checkpoint_meta, load_model
    from glotta.train.parallel import destroy_parallel

    cfg = cfg or GenerateConfig()
    if not prompts:
        raise ConfigError("prompts: give at least one (--prompt or --prompts-file)")
    try:
        meta = checkpoint_meta(checkpoint)
    except CheckpointError as e:
        from glotta.errors import DataError

        raise DataError(str(e)) from None
    sp = load_sp(check_tokenizer(meta, cfg.tokenizer))
    eod = sp.eos_id()
    tp = int(os.environ.get("WORLD_SIZE", "1"))
    model, _ = load_model(meta.path, tensor_parallel=tp)
    try:
        return generate_with(model, sp, meta.vocab_size, meta.model.seq_length, prompts, cfg, eod)
    finally:
        destroy_parallel()


def prompts_from_shards(path: str | Path, chars: int = 48) -> list[tuple[str, str]]:
    """(language, prompt) per language of a shard set: the start of its first non-blank line (at most
    `chars` characters and 60% of the line, cut at a word boundary), which the demo summary continues."""
    from collections import Counter

    from glotta.data.shards import iter_samples, shard_entries

    seen: dict[str, str] = {}
    counters: Counter = Counter()
    for shard, info in shard_entries(path):
        for s in iter_samples(shard, counters, expected=info):
            if s.lang in seen or s.lang == "und":
                continue
            line = next((x.strip() for x in s.text.splitlines() if x.strip()), "")
            if not line:
                continue
            # at most 60% of the line: a whole short line is usually followed by end-of-document,
            # which says nothing about the model
            n = max(1, min(chars, len(line) * 3 // 5))
            cut = line[:n]
            if " " in cut[n // 2 :]:  # cut at a word boundary; scripts without spaces keep the hard cut
                cut = cut[: cut.rindex(" ")]
            seen[s.lang] = cut
    if not seen:
        raise ConfigError(f"prompts_shards: {path} has no document with a language and a non-blank line")
    return sorted(seen.items())


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line (blank lines skipped); a JSONL line {"prompt": ...} also works."""
    import json

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"prompts_file: {p} does not exist")
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            out.append(str(json.loads(line)["prompt"]))
        else:
            out.append(line)
    return out
