"""`glotta prune score`: forward-only NLL of every document at every kept checkpoint (torchrun, any TP/PP/DP).

Work split: shard i goes to data-parallel group i % DP; the TP and PP ranks of a group read the
same shard and build identical micro-batches (no broadcast needed). A document is scored as
`[EOD] + ids` -> `ids + [EOD]` (EOD = the tokenizer's EOS id, the loader's document end) in
windows of `seq_len` tokens (restarting with no context, or with `context` tokens of the document's
past carried into each later window, scored once); windows are packed into rows
with a document mask and positions restarting at each window, so documents never see each other:
the forward passes are the trainer's (`forward_step` / `loss_func`, its attention inputs: segment
ids for flex/SDPA, the THD layout with cu_seqlens under Transformer Engine, `attention_layout`).
Per document: n_tokens (tokens predicted), n_bytes (UTF-8 text), token-mean NLL per checkpoint.

Resume: each (shard, checkpoint) result is saved as `.parts/<shard>/ckpt_<k>.npy`; when all K
are there the shard's `<shard>.parquet` is written and its parts removed. A restarted job skips
finished shards and parts, and skips loading a checkpoint that no shard still needs.
`score.json` in the output folder pins run, checkpoints, tokenizer and seq_len: a rerun with
other inputs is refused instead of mixing numbers.
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from pydantic import Field

from glotta.config import StrictModel
from glotta.data.exclude import read_exclude
from glotta.data.manifest import atomic_write_text
from glotta.data.shards import iter_samples, list_shards
from glotta.errors import DataError
from glotta.pruning.cat.checkpoints import CheckpointSet, resolve
from glotta.pruning.cat.table import ScoresMeta, nll_column, write_scores
from glotta.pruning.cat.tracking import MlflowConfig
from glotta.train.parallel import ParallelConfig

log = logging.getLogger(__name__)

STATE = "score.json"
PARTS = ".parts"


class ScoreConfig(StrictModel):
    checkpoints: list[Path] = Field(default_factory=list, description="checkpoint dirs, or a root = its kept steps")
    shards: Path | None = None
    out_dir: Path = Path("scores")
    exclude: list[Path] = Field(default_factory=list)
    tokenizer: Path | None = None  # default: the run's data.tokenizer
    seq_len: int | None = Field(None, gt=1)  # default: the model's seq_length
    # Long documents: tokens of a document's past carried into each window after the first
    # (scored once, never twice). 0 = windows restart with no context (ties the score to length).
    context: int = Field(0, ge=0)
    micro_batch_size: int = Field(16, gt=0)  # rows of seq_len per forward
    microbatches_per_call: int = Field(4, gt=0)  # micro-batches per pipeline schedule call (fills PP stages)
    parallel: ParallelConfig = ParallelConfig()
    mlflow: MlflowConfig = MlflowConfig()
    seed: int = 1234
    # Stop after this many checkpoint passes of this job (tests and preemption drills); 0 = no limit.
    stop_after_checkpoints: int = Field(0, ge=0)


@dataclass
class ShardDocs:
    name: str
    keys: list[str]
    langs: list[str]
    n_bytes: np.ndarray
    ids: list[list[int]]  # token ids without EOD

    @property
    def n_tokens(self) -> np.ndarray:
        return np.fromiter((len(x) + 1 for x in self.ids), np.int64, len(self.ids))


def read_shard(path: Path, sp, excluded: set[str], counters: Counter, strict: bool) -> ShardDocs:
    keys, langs, nbytes, texts = [], [], [], []
    for s in iter_samples(path, counters, strict=strict):
        if s.shard in excluded or s.id in excluded:
            counters["excluded"] += 1
            continue
        keys.append(s.key)
        langs.append(s.lang)
        texts.append(s.text)
        nbytes.append(len(s.text.encode("utf-8")))
    ids = sp.encode(texts, out_type=int) if texts else []
    counters["scored_docs"] += len(keys)
    return ShardDocs(path.name, keys, langs, np.asarray(nbytes, np.int64), ids)


# ---- packing: documents -> windows -> rows of seq_len -------------------------------------------
@dataclass
class Rows:
    tokens: np.ndarray  # [R, S]
    labels: np.ndarray
    position_ids: np.ndarray
    segments: np.ndarray  # [R, S] window index within the row; padding = its own segment
    loss_mask: np.ndarray
    doc_of: np.ndarray  # [R, S] document index per token (-1 on padding)


def windows(n: int, seq_len: int, context: int) -> list[tuple[int, int, int]]:
    """(start, end, first scored position) of each window over a document of n input tokens.
    context = 0: back-to-back windows that restart with no context. context = c: every window after
    the first starts c tokens early, and those c tokens are context only (not scored again), so
    every token is scored exactly once and, past the first window, with c tokens of its past."""
    if not 0 <= context < seq_len:
        raise ValueError(f"context ({context}) must be in [0, seq_len={seq_len})")
    out, pos = [], 0
    while pos < n:
        lo = max(0, pos - context)
        hi = min(n, lo + seq_len)
        out.append((lo, hi, pos))
        pos = hi
    return out


def pack(ids: list[list[int]], eod: int, pad: int, seq_len: int, context: int = 0) -> Rows:
    """Windows in document order, placed greedily: a window goes into the current row when it fits."""
    rows: list[list[tuple[int, np.ndarray, np.ndarray, int]]] = []
    free = 0
    for d, x in enumerate(ids):
        inp = np.asarray([eod] + list(x), np.int64)
        tgt = np.asarray(list(x) + [eod], np.int64)
        for lo, hi, scored in windows(len(inp), seq_len, context):
            w_in, w_tgt = inp[lo:hi], tgt[lo:hi]
            if len(w_in) > free:
                rows.append([])
                free = seq_len
            rows[-1].append((d, w_in, w_tgt, scored - lo))
            free -= len(w_in)
    r = len(rows)
    out = Rows(*(np.full((r, seq_len), v, np.int64) for v in (pad, pad, 0, 0)), np.zeros((r, seq_len), np.float32),
               np.full((r, seq_len), -1, np.int64))
    for i, row in enumerate(rows):
        at = 0
        for j, (d, w_in, w_tgt, skip) in enumerate(row):
            n = len(w_in)
            sl = slice(at, at + n)
            out.tokens[i, sl], out.labels[i, sl] = w_in, w_tgt
            out.position_ids[i, sl] = np.arange(n)
            out.segments[i, sl] = j
            out.loss_mask[i, at + skip : at + n] = 1.0  # context tokens are seen, not scored
            out.doc_of[i, sl] = d
            at += n
        out.segments[i, at:] = len(row)  # padding: one more segment, masked out of the loss
    return out


# ---- forward: the trainer's own forward_step / loss_func ------------------------------------------
def _loader_batch(tokens, labels, position_ids, segments, loss_mask) -> dict:
    """Rows -> the loader's batch contract (what `glotta.train.step.get_batch` reads). `lang_ids`
    is the token's slot in the micro-batch, so the trainer's per-language loss sums in
    `loss_func` come back as per-token losses (one "language" per slot)."""
    b, s = tokens.shape
    flat = (segments + np.arange(b)[:, None] * (s + 1)).reshape(-1)  # segment ids unique across rows
    starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
    return {"tokens": tokens, "labels": labels, "position_ids": position_ids, "loss_mask": loss_mask,
            "cu_seqlens": np.r_[starts, b * s].astype(np.int64),
            "lang_ids": np.arange(b * s, dtype=np.int64).reshape(b, s)}


def attention_layout(model_cfg, dims, model) -> bool:
    """Whether the model takes the trainer's THD layout (Transformer Engine), checked on the model.

    Scoring always masks documents, whatever `model.document_masking` the run trained with: a
    document's score is its loss alone. The trainer's own attention inputs do it on every backend
    (`glotta.train.step.attention_inputs`: segment ids for flex/SDPA, PackedSeqParams for TE, whose
    attention ignores a dense mask), and the trainer's startup probe refuses a model whose attention
    still lets one packed document see another."""
    from glotta.train.attention import check_document_masking
    from glotta.train.model import use_te

    thd = use_te(model_cfg, dims)
    check_document_masking(model, True, thd)
    return thd


def score_rows(model, rows: Rows, cfg: ScoreConfig, seq_len: int, device, thd: bool = False) -> np.ndarray | None:
    """Per-token losses [R, S] on the last pipeline stage (None elsewhere), through megatron's
    pipeline schedule with the trainer's `forward_step` and `loss_func` (forward_only).
    `thd` (from `attention_layout`): Transformer Engine's layout, each micro-batch one packed row
    [1, B*S] with cu_seqlens at every window and row start, exactly as the trainer feeds it."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from glotta.train.step import forward_step

    b = cfg.micro_batch_size
    n = len(rows.tokens)
    pad_rows = (-n) % b
    arrays = [rows.tokens, rows.labels, rows.position_ids, rows.segments, rows.loss_mask]
    if pad_rows:  # fixed [B, S] micro-batches (pipeline p2p shapes); extra rows are all padding
        arrays = [np.concatenate([a, np.zeros((pad_rows, seq_len), a.dtype)]) for a in arrays]
    mbs = [_loader_batch(*(a[i : i + b] for a in arrays)) for i in range(0, n + pad_rows, b)]
    fwd = get_forward_backward_func()
    step = partial(forward_step, (b, seq_len), device, b * seq_len, None, thd=thd, document_masking=True)
    fb_seq, fb_mbs = (b * seq_len, 1) if thd else (seq_len, b)  # pipeline p2p shapes: THD = one packed row
    out = []
    with torch.no_grad():
        for i in range(0, len(mbs), cfg.microbatches_per_call):
            chunk = mbs[i : i + cfg.microbatches_per_call]
            reports = fwd(forward_step_func=step, data_iterator=iter(chunk), model=model,
                          num_microbatches=len(chunk), seq_length=fb_seq, micro_batch_size=fb_mbs, forward_only=True)
            out += [r["lang"][: b * seq_len].detach().cpu().reshape(b, seq_len) for r in reports]
    if not out:
        return None
    return torch.cat(out).double().numpy()[:n]


def doc_nll_sums(rows: Rows, losses: np.ndarray, n_docs: int) -> np.ndarray:
    real = rows.doc_of >= 0
    return np.bincount(rows.doc_of[real], weights=losses[real] * rows.loss_mask[real], minlength=n_docs)


# ---- the job ------------------------------------------------------------------------------------
def _state(cs: CheckpointSet, seq_len: int, context: int = 0) -> dict:
    return {"version": 1, "run_id": cs.run_id, "checkpoint_steps": cs.steps, "tokenizer_sha256": cs.tokenizer_sha256,
            "seq_len": seq_len, "context": context, "checkpoints": [str(c.path) for c in cs.checkpoints],
            "mlflow_uri": cs.mlflow_uri}


def _check_out_dir(out: Path, state: dict) -> None:
    p = out / STATE
    if p.is_file():
        old = json.loads(p.read_text())
        keys = ("run_id", "checkpoint_steps", "tokenizer_sha256", "seq_len", "context")
        diff = [k for k in keys if old.get(k, 0 if k == "context" else None) != state[k]]
        if diff:
            raise DataError(f"{out} holds scores of other inputs ({', '.join(f'{k}: {old.get(k)}' for k in diff)}); "
                            "use another --out")


def part_path(out: Path, shard: str, k: int) -> Path:
    return out / PARTS / shard / f"ckpt_{k + 1}.npy"


def final_path(out: Path, shard: str) -> Path:
    return out / f"{shard}.parquet"


def run(cfg: ScoreConfig, strict: bool = False) -> dict:
    """Collective: every torchrun worker calls it. Returns the summary (on every rank)."""
    import sentencepiece as spm

    from glotta.train.checkpoint import load_checkpoint
    from glotta.train.model import ModelConfig, build_model
    from glotta.train.parallel import destroy_parallel, init_parallel

    if cfg.shards is None:
        from glotta.errors import ConfigError

        raise ConfigError("shards: the shard set to score is required")
    # Every check that can fail runs on every rank before the process group exists.
    cs = resolve(cfg.checkpoints, cfg.tokenizer)
    model_cfg = ModelConfig.model_validate(cs.model)
    seq_len = cfg.seq_len or model_cfg.seq_length
    shards = list_shards(cfg.shards)
    excluded = read_exclude(cfg.exclude)
    state = _state(cs, seq_len, cfg.context)
    _check_out_dir(cfg.out_dir, state)
    sp = spm.SentencePieceProcessor(model_file=str(cs.tokenizer))
    eod = sp.eos_id()
    if eod < 0:
        raise DataError(f"{cs.tokenizer}: no EOS piece; the loader and the scorer use it as end of document")
    pad = sp.pad_id() if sp.pad_id() >= 0 else eod
    if cfg.context >= seq_len:
        from glotta.errors import ConfigError

        raise ConfigError(f"context ({cfg.context}) must be below seq_len ({seq_len})")
    if seq_len > model_cfg.seq_length and model_cfg.position_embedding == "learned_absolute":
        from glotta.errors import ConfigError

        raise ConfigError(f"seq_len {seq_len} exceeds the model's learned positions ({model_cfg.seq_length})")

    dims = init_parallel(cfg.parallel, cfg.seed)
    try:
        if dims.rank == 0:
            cfg.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cfg.out_dir / STATE, json.dumps(state, indent=1) + "\n")
        dist.barrier()
        model = build_model(model_cfg.model_copy(update={"seq_length": max(seq_len, model_cfg.seq_length)}),
                            dims, cs.vocab_size)
        for m in model:
            m.eval()
        thd = attention_layout(model_cfg, dims, model)
        mine = shards[dims.dp_rank :: dims.dp]
        writer = dims.is_last_stage and dims.tp_rank == 0
        counters: Counter = Counter()
        per_ckpt, loaded = [], []
        counted: set[str] = set()
        cache: dict[str, tuple[ShardDocs, Rows]] = {}
        for k, ck in enumerate(cs.checkpoints):
            # Skip a checkpoint nobody needs (all ranks see the same files, so they agree).
            pending = [s for s in shards if not final_path(cfg.out_dir, s.name).is_file()
                        and not part_path(cfg.out_dir, s.name, k).is_file()]
            if not pending:
                continue
            if cfg.stop_after_checkpoints and len(loaded) >= cfg.stop_after_checkpoints:
                break
            load_checkpoint(ck.path, model, None, None)
            loaded.append(ck.step)
            tokens, t0 = 0, time.perf_counter()
            for path in [s for s in mine if s in pending]:
                if path.name not in cache:
                    c: Counter = Counter()
                    docs = read_shard(path, sp, excluded, c, strict)
                    if path.name not in counted:  # a shard is re-read for each checkpoint: count it once
                        counted.add(path.name)
                        counters.update(c)
                    cache = {path.name: (docs, pack(docs.ids, eod, pad, seq_len, cfg.context))}  # one shard in memory
                docs, rows = cache[path.name]
                losses = score_rows(model, rows, cfg, seq_len, dims.device, thd)
                tokens += int(rows.loss_mask.sum())
                if writer and losses is not None:
                    sums = doc_nll_sums(rows, losses, len(docs.keys))
                    p = part_path(cfg.out_dir, path.name, k)
                    p.parent.mkdir(parents=True, exist_ok=True)
                    tmp = p.with_name(f".{p.name}.tmp.npy")
                    np.save(tmp, sums)
                    tmp.replace(p)
            per_ckpt.append(_throughput(tokens, time.perf_counter() - t0, dims, ck.step))
            dist.barrier()
        written = 0
        if writer:
            for path in mine:
                written += _finish_shard(cfg.out_dir, path, sp, excluded, state, cs, strict, cache)
        dist.barrier()
        summary = {"out_dir": str(cfg.out_dir), "run_id": cs.run_id, "checkpoint_steps": cs.steps, "seq_len": seq_len,
                   "shards": len(shards), "checkpoints_scored": loaded, "tp": dims.tp, "pp": dims.pp, "dp": dims.dp, "throughput": per_ckpt,
                   "shards_written": _sum(written, dims), "counters": _sum_counters(counters, dims)}
        if dims.rank == 0 and cfg.mlflow.active and per_ckpt:
            summary["mlflow"] = _log(cfg, cs, summary)
        return summary
    finally:
        destroy_parallel()


def _throughput(tokens: int, seconds: float, dims, step: int) -> dict:
    """Tokens scored by the whole job per second and per device (model-parallel ranks share a batch)."""
    t = torch.tensor([tokens if dims.tp_rank == 0 and dims.pp_rank == 0 else 0, seconds], dtype=torch.float64)
    dist.all_reduce(t[:1])
    secs = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(secs, op=dist.ReduceOp.MAX)
    total, wall = float(t[0]), float(secs[0])
    rate = {"step": step, "tokens": int(total), "seconds": round(wall, 3),
            "tokens_per_s": total / wall if wall > 0 else 0.0,
            "tokens_per_s_per_device": total / wall / dims.world_size if wall > 0 else 0.0}
    if dims.rank == 0:
        print(f"glotta prune score: checkpoint step {step}: {rate['tokens']:,} tokens in {wall:.1f} s, "
              f"{rate['tokens_per_s_per_device']:,.0f} tokens/s per device ({dims.world_size} devices)", file=sys.stderr, flush=True)
    return rate


def _sum_counters(counters: Counter, dims) -> dict:
    """Reading counters of the whole job: one reader per data-parallel group (TP/PP ranks read the same)."""
    parts: list = [None] * dims.world_size
    dist.all_gather_object(parts, dict(counters) if dims.tp_rank == 0 and dims.pp_rank == 0 else {})
    total: Counter = Counter()
    for p in parts:
        total.update(p)
    return dict(total)


def _sum(x: int, dims) -> int:
    t = torch.tensor([x], dtype=torch.int64)
    dist.all_reduce(t)
    return int(t[0])


def _finish_shard(out: Path, path: Path, sp, excluded, state, cs: CheckpointSet, strict: bool, cache) -> int:
    """All K parts present -> write <shard>.parquet and drop the parts. Returns 1 if written now."""
    if final_path(out, path.name).is_file():
        return 0
    parts = [part_path(out, path.name, k) for k in range(len(cs.checkpoints))]
    if not all(p.is_file() for p in parts):
        return 0
    docs = cache[path.name][0] if path.name in cache else read_shard(path, sp, excluded, Counter(), strict)
    n_tokens = docs.n_tokens
    cols = {"shard": [docs.name] * len(docs.keys), "key": docs.keys, "lang": docs.langs, "n_tokens": n_tokens,
            "n_bytes": docs.n_bytes}
    for k, p in enumerate(parts):
        sums = np.load(p)
        if len(sums) != len(docs.keys):
            raise DataError(f"{p}: {len(sums)} documents, {path} now has {len(docs.keys)} (shard changed mid-job?)")
        cols[nll_column(k + 1)] = sums / n_tokens
    meta = ScoresMeta(state["run_id"], state["tokenizer_sha256"], state["checkpoint_steps"], state["seq_len"],
                      extra={"checkpoints": state["checkpoints"], "mlflow_uri": state["mlflow_uri"],
                             "context": state["context"]})
    write_scores(final_path(out, path.name), cols, meta)
    shutil.rmtree(out / PARTS / path.name, ignore_errors=True)
    return 1


def _log(cfg: ScoreConfig, cs: CheckpointSet, summary: dict) -> dict:
    from glotta.pruning.cat.tracking import log_run

    params = {"checkpoint_steps": cs.steps, "seq_len": summary["seq_len"], "tp": summary["tp"], "pp": summary["pp"],
              "dp": summary["dp"], "scores_run": cs.run_id}
    metrics = {}
    for r in summary["throughput"]:
        metrics[f"tokens_per_s_per_device.step{r['step']}"] = r["tokens_per_s_per_device"]
    rates = [r["tokens_per_s_per_device"] for r in summary["throughput"]]
    metrics["tokens_per_s_per_device"] = float(np.mean(rates))
    mcfg = cfg.mlflow
    if mcfg.run_id and not mcfg.tracking_uri and cs.mlflow_uri:  # into the stage-1 run's own store
        mcfg = mcfg.model_copy(update={"tracking_uri": cs.mlflow_uri})
    return log_run(mcfg, cfg.out_dir, "prune.score", params, metrics, [cfg.out_dir / STATE], run_name="prune-score")
