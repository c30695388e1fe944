"""The training loop: build everything, resume, step, evaluate, checkpoint, log. Read top to bottom."""
from __future__ import annotations

import json
import logging
import signal
import time
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

from glotta.train import checkpoint as ckpt
from glotta.train.config import TrainConfig
from glotta.train.data import bits_per_byte, build_data, valid_iterator
from glotta.train.flops import flops_per_token, peak_flops
from glotta.train.model import bf16, build_model, count_parameters, padded_vocab_size
from glotta.train.optim import SpikeGuard, build_optimizer
from glotta.train.parallel import destroy_parallel, init_parallel
from glotta.train.step import forward_step
from glotta.train.tracking import Tracker, finish, tags_for

log = logging.getLogger("glotta.train")


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training. Collective: every torchrun worker calls it. Returns the summary."""
    dims = init_parallel(cfg.parallel, cfg.seed)
    try:
        return _train(cfg, dims)
    finally:
        destroy_parallel()


def _train(cfg: TrainConfig, dims) -> dict:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    run_dir, ckpt_dir = Path(cfg.run_dir), cfg.checkpoint_dir()
    data = build_data(cfg, dims)
    chunks = build_model(cfg.model, dims, data.vocab_size)
    model, opt, sched = build_optimizer(chunks, cfg.optim, dims, cfg.train_iters, bf16(cfg.model, dims))
    state = _resume(cfg, dims, ckpt_dir, model, opt, sched, data)
    nmb, seq, mbs = cfg.num_microbatches(dims.dp), cfg.model.seq_length, cfg.micro_batch_size
    fwd_bwd, train_iter = get_forward_backward_func(), data.iterators(dims.vpp)
    step_fn = partial(forward_step, (mbs, seq), dims.device, len(data.langs), None)
    flops_tok = flops_per_token(cfg.model, padded_vocab_size(data.vocab_size, cfg.model.make_vocab_size_divisible_by, dims.tp))
    peak, guard, stop = peak_flops(), SpikeGuard(cfg.optim), _StopSignal(dims.device)
    tracker = _start_tracker(cfg, dims, run_dir, chunks, data) if dims.is_logging_rank else None
    step, t_last, last = state["step"], time.perf_counter(), {}
    if cfg.data.valid and cfg.eval_at_start and step == 0:  # the untrained model's loss, for comparison
        _emit(dims, tracker, run_dir, 0, evaluate(cfg, dims, model, data))
    while step < cfg.train_iters:
        for m in model:
            m.zero_grad_buffer()
        opt.zero_grad()
        reports = fwd_bwd(forward_step_func=step_fn, data_iterator=train_iter, model=model, num_microbatches=nmb,
                          seq_length=seq, micro_batch_size=mbs, forward_only=False)
        loss_sum, ntok, _ = _reduce(reports, dims, len(data.langs))
        loss = loss_sum / max(ntok, 1)
        grad_norm, applied = float("nan"), guard.check(loss, step + 1)
        if applied:
            _, grad_norm, _ = opt.step()
            sched.step(increment=1)
        else:
            state["skipped"] += 1
        step += 1
        state.update(step=step, consumed_samples=state["consumed_samples"] + cfg.global_batch_size,
                     tokens=state["tokens"] + int(ntok))
        last = {"loss": loss, "lr": opt.param_groups[0]["lr"], "grad_norm": float(grad_norm or 0.0), "tokens": ntok}
        if step % cfg.log_interval == 0 or step == cfg.train_iters:
            dt = (time.perf_counter() - t_last) / (step - state["logged_step"])
            t_last, state["logged_step"] = time.perf_counter(), step
            flops = flops_tok * cfg.global_batch_size * seq / dt / dims.world_size
            last.update({"tokens_per_s": ntok / dt, "step_time_s": dt, "tflops_per_gpu": flops / 1e12})
            if peak:
                last["mfu"] = flops / peak
            if data.loader is not None and hasattr(data.loader, "stats"):
                last["loader_padding_pct"] = float(data.loader.stats().get("padding_pct", 0.0))
            _emit(dims, tracker, run_dir, step, last)
        if cfg.data.valid and cfg.eval_interval and (step % cfg.eval_interval == 0 or step == cfg.train_iters):
            _emit(dims, tracker, run_dir, step, evaluate(cfg, dims, model, data))
        stopping = stop.agreed() or (cfg.exit_after_iters and step - state["start_step"] >= cfg.exit_after_iters)
        if ckpt.should_save(cfg.checkpoint, step, cfg.train_iters) or stopping:
            _save(cfg, dims, ckpt_dir, step, model, opt, sched, data, state)
        if stopping:
            break
    summary = {"step": step, "final_loss": last.get("loss"), "tokens": state["tokens"], "skipped_steps": state["skipped"],
               "params_this_rank": count_parameters(chunks), "interrupted": step < cfg.train_iters}
    if tracker is not None:
        print(f"glotta train: MLflow run in {tracker.uri}; view with: {tracker.ui_command()}", flush=True)
        finish(tracker, "KILLED" if summary["interrupted"] else "FINISHED")
    return summary


def evaluate(cfg: TrainConfig, dims, model, data) -> dict:
    """Forward-only over eval_iters global batches of held-out shards: val/loss and val/bpb per language."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    nmb, nl = cfg.num_microbatches(dims.dp), len(data.valid_langs)
    iters = valid_iterator(cfg, dims, cfg.eval_iters * nmb)
    if dims.vpp:  # every model chunk reads the same batches in the same order
        import itertools

        iters = list(itertools.tee(iters, dims.vpp)) if iters is not None else [None] * dims.vpp
    for m in model:
        m.eval()
    step_fn = partial(forward_step, (cfg.micro_batch_size, cfg.model.seq_length), dims.device, nl, data.byte_lengths)
    reports = []
    with torch.no_grad():
        for _ in range(cfg.eval_iters):
            reports += get_forward_backward_func()(
                forward_step_func=step_fn, data_iterator=iters, model=model, num_microbatches=nmb,
                seq_length=cfg.model.seq_length, micro_batch_size=cfg.micro_batch_size, forward_only=True)
    for m in model:
        m.train()
    loss_sum, ntok, lang = _reduce(reports, dims, nl, width=3)
    out = {"val/loss": loss_sum / max(ntok, 1)}
    for i, name in enumerate(data.valid_langs):
        if lang[nl + i] > 0:
            out[f"val/loss/{name}"] = lang[i] / lang[nl + i]
            out[f"val/bpb/{name}"] = bits_per_byte(lang[i], lang[2 * nl + i])
    return out


def _reduce(reports, dims, num_langs: int, width: int = 3):
    """Sum the loss reports of this rank's micro-batches and share the totals with every rank
    (they exist on the last stage; its TP rank 0 contributes so nothing is counted twice)."""
    vec = torch.zeros(2 + width * num_langs, dtype=torch.float64)
    if dims.is_last_stage and dims.tp_rank == 0:
        for r in reports:
            vec[:2] += r["lm loss"].double().cpu()
            vec[2:] += r["lang"].double().cpu()
    vec = vec.to(dims.device)
    dist.all_reduce(vec)
    vec = vec.cpu()
    return vec[0].item(), vec[1].item(), vec[2:].tolist()


def _resume(cfg, dims, ckpt_dir, model, opt, sched, data) -> dict:
    state = {"step": 0, "consumed_samples": 0, "tokens": 0, "skipped": 0}
    source = ckpt_dir if cfg.checkpoint.resume and ckpt.latest_step(ckpt_dir) is not None else None
    weights_only = False
    if source is None and cfg.checkpoint.init_from:
        source, weights_only = cfg.checkpoint.init_from, cfg.checkpoint.init_weights_only
    if source is not None:
        meta = ckpt.load_checkpoint(source, model, None if weights_only else opt, dims)
        if not weights_only:
            sched.load_state_dict(meta["scheduler"])
            state.update({k: meta["train_state"][k] for k in ("step", "consumed_samples", "tokens", "skipped")})
            _restore_loader(data, meta["loader_state"], dims, source)
        if dims.rank == 0:
            print(f"glotta train: resumed from {ckpt.resolve(source)} at step {state['step']}"
                  f"{' (weights only)' if weights_only else ''}", flush=True)
    state.update(start_step=state["step"], logged_step=state["step"])
    return state


def _restore_loader(data, states, dims, source) -> None:
    if data.loader is None or not states:
        return
    if len(states) == dims.dp:
        data.loader.load_state_dict(states[dims.dp_rank])
    else:  # data-parallel size changed: the loader hands the saved lanes to their new owners
        data.loader.load_state_dict(states)


def _save(cfg, dims, ckpt_dir, step, model, opt, sched, data, state) -> None:
    loader_state = data.loader.state_dict() if data.loader is not None else None
    meta = {"scheduler": sched.state_dict(), "config": cfg.model_dump(mode="json"), "vocab_size": data.vocab_size,
            "langs": data.langs, "train_state": {k: state[k] for k in ("step", "consumed_samples", "tokens", "skipped")}}
    path = ckpt.save_checkpoint(ckpt_dir, step, model, opt, meta, loader_state, dims, cfg.checkpoint, cfg.train_iters)
    if dims.rank == 0:
        print(f"glotta train: saved {path}", flush=True)


def _start_tracker(cfg, dims, run_dir, chunks, data) -> Tracker | None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=1))
    if not cfg.tracking.enabled:
        return None
    tracker = Tracker(cfg.tracking, run_dir, cfg.model_dump(mode="json"),
                      tags_for(cfg.stage, {"glotta.tp": dims.tp, "glotta.pp": dims.pp, "glotta.dp": dims.dp}))
    tracker.artifact(run_dir / "config.json")
    card = Path(cfg.data.tokenizer or "").with_suffix(".card.json")
    if card.is_file():
        tracker.artifact(card)
    return tracker


def _emit(dims, tracker, run_dir: Path, step: int, metrics: dict) -> None:
    """metrics.jsonl in the run dir (always) and MLflow (when enabled), from the logging rank only."""
    if not dims.is_logging_rank:
        return
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": step, **metrics}) + "\n")
    if tracker is not None:
        tracker.log(step, metrics)
    if "loss" in metrics:
        print(f"step {step:>6}  loss {metrics['loss']:.4f}  lr {metrics['lr']:.2e}  "
              f"grad_norm {metrics['grad_norm']:.3f}  tok/s {metrics.get('tokens_per_s', 0):,.0f}", flush=True)


class _StopSignal:
    """SIGTERM/SIGUSR1 (Slurm preemption, torchrun shutdown) -> finish the step, save, exit."""

    def __init__(self, device):
        self.flag, self.device = False, device
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._set)

    def _set(self, signum, frame):
        self.flag = True

    def agreed(self) -> bool:
        t = torch.tensor([1.0 if self.flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())
