"""`glotta tokenizer adapt-checkpoint`: resize a trainer checkpoint to an extended vocabulary.

The checkpoint (megatron dist_checkpointing, torch_dist, any TP/PP layout) is loaded through the
trainer's own code into a one-process model (dist_checkpointing reshards it), the word embedding
and, when untied, the output layer are resized to the new vocabulary padded to
`make_vocab_size_divisible_by x TP` of the run that will continue, the new rows initialised
(glotta.tokenizer.embed_init), and the result saved with the trainer's save_checkpoint, model
weights only: continue with `checkpoint.init_from=<out>` and `data.tokenizer=<new model>`.

Checks, all reported in `adapt.json` next to the checkpoint:
- the checkpoint's vocab_size equals the old tokenizer's size, and the new tokenizer starts with
  exactly the old pieces (an `extend` result), else an error naming both;
- logits invariance: on text the old tokenizer encodes (old ids only) the adapted model's logits
  for old ids equal the old model's (max |diff| <= tolerance, else an error);
- bits per byte on target text right after initialisation, for every init method and target
  language, next to the old model with the old tokenizer on the same text;
- the check that can fail: old-id logits are unchanged by construction, but the new rows still take
  softmax mass, so the loss on base-language text under the old tokenizer (the languages of `text`
  that are not targets; held-out half of its windows) is reported per method and language before
  and after adaptation. `mean-below` calibrates the new output rows on the other half so that this
  rise stays within `keep_tolerance`.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import sentencepiece as spm
import torch
from pydantic import Field

from glotta.config import StrictModel
from glotta.data.manifest import atomic_write_text
from glotta.errors import ConfigError, DataError
from glotta.tokenizer.embed_init import METHODS, InitMethod, new_rows, resized
from glotta.tokenizer.evaluate import load_model, shard_texts
from glotta.tokenizer.parallel import read_parallel

EMBEDDING = "embedding.word_embeddings.weight"
OUTPUT = "output_layer.weight"


class AdaptConfig(StrictModel):
    checkpoint: Path | None = None  # a checkpoint directory, or a root with `latest`
    new_tokenizer: Path | None = None  # the extended .model
    old_tokenizer: Path | None = None  # default: data.tokenizer recorded in the checkpoint
    out: Path | None = None  # root of the adapted checkpoint
    init: InitMethod = "mean"
    tp: int | None = Field(None, ge=1)  # TP of the run that continues (padding); default: the checkpoint's
    text: Path | None = None  # target text: parallel JSONL or a shard set (align, bits per byte, check)
    langs: list[str] | None = None  # target languages within `text` (default: all)
    # base languages within `text` (what the old model knew): loss under the old tokenizer before and
    # after adaptation. Default: the languages of `text` that are not target languages.
    base_langs: list[str] | None = None
    # mean-below: largest rise of the base-language loss (nats/token) the new rows may cause
    keep_tolerance: float = Field(1e-3, gt=0)
    max_lines: int = Field(200, gt=0)  # per language
    compare: bool = True  # bits per byte for every init method, not only `init`
    tolerance: float = 1e-5
    seed: int = 0


def texts_by_lang(path: Path, langs: list[str] | None, max_lines: int) -> dict[str, list[str]]:
    if path.is_dir():
        return shard_texts(path, langs, max_lines)
    return {lang: list(v.values())[:max_lines] for lang, v in read_parallel(path, langs).items()}


def read_texts(path: Path, langs: list[str] | None, max_lines: int) -> list[str]:
    by_lang = texts_by_lang(path, langs, max_lines)
    lines = [line for lang in sorted(by_lang) for line in by_lang[lang]]
    if not lines:
        raise DataError(f"{path}: no text" + (f" for {langs}" if langs else ""))
    return lines


def checkpoint_vocab_rows(ckpt: Path) -> int:
    """Padded vocabulary rows of the saved embedding, from the torch_dist metadata (global shape)."""
    from torch.distributed.checkpoint import FileSystemReader

    md = FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata
    if EMBEDDING not in md:
        raise DataError(f"{ckpt}: no {EMBEDDING} in the checkpoint (not a glotta/megatron GPT checkpoint?)")
    return int(md[EMBEDDING].size[0])


def check_tokenizers(old: spm.SentencePieceProcessor, new: spm.SentencePieceProcessor, vocab: int,
                     old_path: Path, new_path: Path) -> None:
    if old.get_piece_size() != vocab:
        raise DataError(f"the checkpoint was trained with vocab_size {vocab}, but the old tokenizer {old_path} has "
                        f"{old.get_piece_size()} pieces: pass the tokenizer the checkpoint was trained with")
    if new.get_piece_size() <= vocab:
        raise DataError(f"{new_path} has {new.get_piece_size()} pieces, no more than the checkpoint's {vocab}")
    for i in range(vocab):
        if new.id_to_piece(i) != old.id_to_piece(i):
            raise DataError(f"{new_path} is not an extension of {old_path}: id {i} is {new.id_to_piece(i)!r}, "
                            f"was {old.id_to_piece(i)!r} (use `glotta tokenizer extend`, which only appends)")


def windows(ids: list[int], seq: int, limit: int = 1024) -> torch.Tensor:
    """[N, seq+1] windows over the concatenated ids (inputs and next-token labels). Size the text with
    max_lines so every window fits under `limit`: then old and new tokenizers score the same text."""
    n = min((len(ids) - 1) // seq, limit)
    if n < 1:
        raise DataError(f"too little text for one window of {seq} tokens (raise max_lines)")
    return torch.tensor(ids[: n * seq + 1]).unfold(0, seq + 1, seq)[:n]


@torch.no_grad()
def logits(model, win: torch.Tensor, batch: int = 8) -> torch.Tensor:
    out = []
    for b in range(0, len(win), batch):
        tokens = win[b : b + batch, :-1]
        pos = torch.arange(tokens.shape[1]).expand_as(tokens)
        out.append(model(tokens, pos, None).float())
    return torch.cat(out)


def bits_per_byte(model, win: torch.Tensor, vocab: int, nbytes: torch.Tensor) -> float:
    lg = logits(model, win)[..., :vocab]  # padding rows are not tokens
    labels = win[:, 1:]
    nats = torch.nn.functional.cross_entropy(lg.reshape(-1, vocab), labels.reshape(-1), reduction="sum")
    return float(nats) / math.log(2) / float(nbytes[labels].sum())


def mean_loss(model, win: torch.Tensor, vocab: int) -> float:
    """nats/token over the real vocabulary (the softmax a user of the exported model sees)."""
    lg = logits(model, win)[..., :vocab]
    return float(torch.nn.functional.cross_entropy(lg.reshape(-1, vocab).double(), win[:, 1:].reshape(-1)))


@torch.no_grad()
def final_hidden(model, win: torch.Tensor, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states entering the output layer [N, H], logsumexp of the real-vocabulary logits [N])."""
    seen = []
    handle = model.output_layer.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    try:
        lg = logits(model, win)[..., :vocab]
    finally:
        handle.remove()
    hidden = torch.cat([h.transpose(0, 1) for h in seen]).reshape(-1, seen[0].shape[-1]).double()
    return hidden, torch.logsumexp(lg.double(), -1).reshape(-1)


def below_rows(rows: torch.Tensor, out_old: torch.Tensor, hidden: torch.Tensor, lse_old: torch.Tensor,
               tolerance: float) -> tuple[torch.Tensor, float, float]:
    """New output rows moved by -beta * u so that they take almost no probability on base-language text.

    u = sum_j pbar_j w_j - mean_j w_j, pbar the model's mean next-token distribution on this text:
    the direction in which likely base-language tokens stand out. A position's logits put more
    than the average weight on likely tokens exactly when its hidden state points along u (for the
    position's own distribution this holds always: E_p[logit] >= mean logit), so moving new rows
    against u lowers their logits where the base-language model puts its mass. The rise of the loss is log(1 + sum_r exp(z_r -
    lse_old)) per position, in closed form from the hidden states; beta is the smallest value on a
    doubling grid (refined by bisection) that keeps the mean rise within `tolerance`, else the grid
    value with the smallest rise refined by minimising the (convex) rise over any shift d.
    Returns (rows, size of the shift, calibration rise)."""
    W = out_old.double()
    pbar = torch.zeros(W.shape[0], dtype=torch.float64)
    for b in range(0, len(hidden), 512):
        pbar += torch.exp(hidden[b:b + 512] @ W.T - lse_old[b:b + 512, None]).sum(0)
    u = (pbar / len(hidden)) @ W - W.mean(0)
    z0, hu = hidden @ rows.double().T, hidden @ u  # [N, R], [N]

    def rise(beta: float) -> float:
        z = z0 - beta * hu[:, None] - lse_old[:, None]
        return float(torch.logsumexp(torch.cat([torch.zeros(len(hidden), 1, dtype=torch.float64), z], 1), 1).mean())

    grid = [0.0] + [2.0**e for e in range(-6, 21)]
    rises = [rise(b) for b in grid]
    ok = [i for i, r in enumerate(rises) if r <= tolerance]
    if ok and ok[0] == 0:
        return rows, 0.0, rises[0]
    if ok:
        lo, hi = grid[ok[0] - 1], grid[ok[0]]
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if rise(mid) <= tolerance else (mid, hi)
        return (rows.double() - hi * u).to(rows.dtype), hi, rise(hi)
    # No multiple of u is enough: the rise is convex in the shift d, so minimise it over all of
    # R^H (L-BFGS from the best multiple of u, a tiny ridge keeps d finite)
    beta = grid[min(range(len(grid)), key=rises.__getitem__)]
    d = (beta * u).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([d], max_iter=200, line_search_fn="strong_wolfe")
    ridge = 1e-8 / max(float(u.norm()) ** 2, 1e-12)

    def closure():
        opt.zero_grad()
        z = z0 - (hidden @ d)[:, None] - lse_old[:, None]
        loss = torch.logsumexp(torch.cat([torch.zeros(len(hidden), 1, dtype=torch.float64), z], 1), 1).mean()
        loss = loss + ridge * d.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    d = d.detach()
    z = z0 - (hidden @ d)[:, None] - lse_old[:, None]
    got = float(torch.logsumexp(torch.cat([torch.zeros(len(hidden), 1, dtype=torch.float64), z], 1), 1).mean())
    return (rows.double() - d).to(rows.dtype), float(d.norm()), got


def adapt(cfg: AdaptConfig) -> dict:
    from glotta.train import checkpoint as ckpt
    from glotta.train.data import byte_lengths
    from glotta.train.model import ModelConfig, build_model, padded_vocab_size
    from glotta.train.parallel import ParallelConfig, destroy_parallel, init_parallel

    for key in ("checkpoint", "new_tokenizer", "out", "text"):
        if getattr(cfg, key) is None:
            raise ConfigError(f"{key}: required (--{key.replace('_', '-')})")
    t0 = time.perf_counter()
    try:
        src = ckpt.resolve(cfg.checkpoint)
        meta = ckpt.read_meta(src)
    except ckpt.CheckpointError as e:
        raise DataError(str(e)) from None
    model_cfg = ModelConfig(**meta["config"]["model"])
    old_path = cfg.old_tokenizer or Path(meta["config"].get("data", {}).get("tokenizer") or "")
    if not str(old_path) or not Path(old_path).is_file():
        raise ConfigError(f"old_tokenizer: the checkpoint names {str(old_path)!r}, which does not exist; pass --old-tokenizer")
    old_sp, new_sp = load_model(old_path), load_model(cfg.new_tokenizer)
    n_old, n_new = meta["vocab_size"], new_sp.get_piece_size()
    check_tokenizers(old_sp, new_sp, n_old, Path(old_path), cfg.new_tokenizer)
    rows_old = checkpoint_vocab_rows(src)
    tp = cfg.tp or meta["world"]["tp"]
    rows_new = padded_vocab_size(n_new, model_cfg.make_vocab_size_divisible_by, tp)
    every = texts_by_lang(cfg.text, None, cfg.max_lines)
    target = {k: v for k, v in every.items() if (cfg.langs is None or k in cfg.langs) and v}
    texts = [line for lang in sorted(target) for line in target[lang]]
    if not texts:
        raise DataError(f"{cfg.text}: no text" + (f" for {cfg.langs}" if cfg.langs else ""))
    base_names = cfg.base_langs if cfg.base_langs is not None else [k for k in every if k not in target]
    missing = [k for k in base_names if not every.get(k)]
    if missing:
        raise DataError(f"base_langs: {cfg.text} has no text for {', '.join(missing)}")
    base = {k: every[k] for k in sorted(base_names)}

    dims = init_parallel(ParallelConfig(), seed=cfg.seed)
    try:
        # vocab sizes given already padded: build_model's own padding (TP=1 here) leaves them as they are
        old_model = build_model(model_cfg, dims, rows_old)[0].eval()
        ckpt.load_checkpoint(src, [old_model])
        new_model = build_model(model_cfg, dims, rows_new)[0].eval()
        base_sd = old_model.state_dict()
        tied = OUTPUT not in base_sd
        seq = model_cfg.seq_length
        old_win = windows(sum(old_sp.encode(texts), []), seq)
        new_win = windows(sum(new_sp.encode(texts), []), seq)
        old_logits = logits(old_model, old_win)[..., :n_old]
        nbytes_old, nbytes_new = byte_lengths(old_sp), byte_lengths(new_sp)
        report: dict = {
            "checkpoint": str(src),
            "old_vocab": n_old, "new_vocab": n_new, "old_rows": rows_old, "new_rows": rows_new, "tp": tp,
            "tied_embeddings": tied,
            "bpb_old_model_old_tokenizer": bits_per_byte(old_model, old_win, n_old, nbytes_old),
            "tokens_old_tokenizer": int(old_win[:, 1:].numel()), "tokens_new_tokenizer": int(new_win[:, 1:].numel()),
            "methods": {},
        }
        # per language: base text under the old tokenizer (calibration half for mean-below, the other
        # half reported), target text under the new one
        base_win = {k: windows(sum(old_sp.encode(v), []), seq) for k, v in base.items()}
        calib = {k: w[0::2] if len(w) > 1 else w for k, w in base_win.items()}
        held = {k: w[1::2] if len(w) > 1 else w for k, w in base_win.items()}
        target_win = {k: windows(sum(new_sp.encode(v), []), seq) for k, v in target.items()}
        base_before = {k: mean_loss(old_model, w, n_old) for k, w in held.items()}
        report["base_langs"], report["target_langs"] = sorted(base), sorted(target)
        report["base_loss_old_model"] = base_before
        report["target_bpb_old_model"] = {k: bits_per_byte(old_model, windows(sum(old_sp.encode(v), []), seq), n_old,
                                                           nbytes_old) for k, v in target.items()}
        if calib:
            hidden, lse_old = map(torch.cat, zip(*(final_hidden(old_model, w, n_old) for w in calib.values())))
        chosen_sd = None
        for method in (METHODS if cfg.compare else (cfg.init,)):
            sd = dict(base_sd)
            shift = None
            for key in (EMBEDDING,) + (() if tied else (OUTPUT,)):
                rows = new_rows(method, base_sd[key], old_sp, new_sp, texts, cfg.seed)
                if method == "mean-below" and calib and (key == OUTPUT or tied):
                    rows, shift, calib_rise = below_rows(rows, base_sd[key][:n_old], hidden, lse_old, cfg.keep_tolerance)
                sd[key] = resized(base_sd[key], rows, n_old, rows_new)
            new_model.load_state_dict(sd)
            diff = float((logits(new_model, old_win)[..., :n_old] - old_logits).abs().max())
            after = {k: mean_loss(new_model, w, n_new) for k, w in held.items()}
            r = {"bpb": bits_per_byte(new_model, new_win, n_new, nbytes_new), "old_logits_max_abs_diff": diff,
                 "target_bpb": {k: bits_per_byte(new_model, w, n_new, nbytes_new) for k, w in target_win.items()},
                 "base_loss": after, "base_loss_rise": {k: after[k] - base_before[k] for k in after}}
            if after:
                r["base_loss_rise_mean"] = sum(r["base_loss_rise"].values()) / len(after)
            if shift is not None:
                r.update(below_shift=shift, below_calibration_rise=calib_rise,
                         below_reached=calib_rise <= cfg.keep_tolerance)
            report["methods"][method] = r
            if diff > cfg.tolerance:
                raise DataError(f"logits for old ids changed by {diff:.3g} (> tolerance {cfg.tolerance}) with init "
                                f"{method}: the adapted model would not reproduce the old one")
            if method == cfg.init:
                chosen_sd = sd
        new_model.load_state_dict(chosen_sd)
        config = json.loads(json.dumps(meta["config"]))
        config.setdefault("data", {})["tokenizer"] = str(cfg.new_tokenizer)
        out_meta = {k: v for k, v in meta.items() if k not in ("version", "step", "world")}
        out_meta.update(config=config, vocab_size=n_new, adapted_from={
            "checkpoint": str(src), "old_tokenizer": str(old_path), "new_tokenizer": str(cfg.new_tokenizer),
            "init": cfg.init, "tp": tp})
        saved = ckpt.save_checkpoint(cfg.out, meta["step"], [new_model], None, out_meta, None, dims)
    finally:
        destroy_parallel()
    report.update(init=cfg.init, out=str(saved), seconds=round(time.perf_counter() - t0, 2))
    atomic_write_text(Path(cfg.out) / "adapt.json", json.dumps(report, indent=1) + "\n")
    return report
