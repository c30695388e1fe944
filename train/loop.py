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
from glotta.train.attention import check_document_masking
from glotta.train.model import bf16, build_model, count_parameters, padded_vocab_size, uses_thd
from glotta.errors import GlottaError
from glotta.train.faults import (FaultGuard, ParentWatch, RunLock, drop_batches, finite, injections, poison_gradient,
                                 steps_to_skip)
from glotta.train.optim import SpikeGuard, build_optimizer, step_with_grad_check
from glotta.train.parallel import destroy_parallel, init_parallel
from glotta.train.step import forward_step
from glotta.train.tracking import Tracker, finish, tags_for

log = logging.getLogger("glotta.train")


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training. Collective: every torchrun worker calls it. Returns the summary."""
    if ParentWatch.wanted(cfg.faults):
        ParentWatch(cfg.faults.parent_death_grace_s).start()
    dims = init_parallel(cfg.parallel, cfg.seed)
    lock = _lock_run_dir(cfg, dims)
    try:
        return _train(cfg, dims)
    finally:
        if lock is not None:
            lock.release()
        destroy_parallel()


def _train(cfg: TrainConfig, dims) -> dict:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    run_dir, ckpt_dir = Path(cfg.run_dir), cfg.checkpoint_dir()
    data = build_data(cfg, dims)
    chunks = build_model(cfg.model, dims, data.vocab_size)
    thd = uses_thd(cfg.model, dims)
    leak = check_document_masking(chunks, cfg.model.document_masking, thd)  # refuses cross-document attention
    if not cfg.model.document_masking and dims.rank == 0:
        print(f"glotta train: model.document_masking=false: packed documents attend to each other (probe change {leak})", flush=True)
    model, opt, sched = build_optimizer(chunks, cfg.optim, dims, cfg.train_iters, bf16(cfg.model, dims))
    guard, faults = SpikeGuard(cfg.optim), FaultGuard(cfg.faults, run_dir, dims.rank == 0)
    state = _resume(cfg, dims, ckpt_dir, model, opt, sched, data, guard)
    nmb, seq, mbs = cfg.num_microbatches(dims.dp), cfg.model.seq_length, cfg.micro_batch_size
    fwd_bwd, train_iter = get_forward_backward_func(), data.iterators(dims.vpp)
    step_fn = partial(forward_step, (mbs, seq), dims.device, len(data.langs), None, **_layout(cfg, dims))
    fb_seq, fb_mbs = (mbs * seq, 1) if thd else (seq, mbs)  # THD: one packed row per micro-batch
    flops_tok = flops_per_token(cfg.model, padded_vocab_size(data.vocab_size, cfg.model.make_vocab_size_divisible_by, dims.tp))
    peak, stop, skip, inject = peak_flops(), _StopSignal(dims.device), steps_to_skip(cfg.faults, run_dir), injections()
    tracker = _start_tracker(cfg, dims, run_dir, chunks, data) if dims.is_logging_rank else None
    saver = ckpt.Checkpointer(ckpt_dir, cfg.checkpoint, cfg.train_iters, dims, on_saved=_pointer(cfg, tracker))
    step, t_last, paused, last = state["step"], time.perf_counter(), 0.0, {}
    if cfg.data.valid and cfg.eval_at_start and step == 0:  # the untrained model's loss, for comparison
        _emit(dims, tracker, run_dir, 0, evaluate(cfg, dims, model, data))
    while step < cfg.train_iters:
        samples = (state["consumed_samples"], state["consumed_samples"] + cfg.global_batch_size)
        ntok, loss, grad_norm = 0, float("nan"), float("nan")
        if step + 1 in skip:  # a poisoned batch: read and dropped, no forward pass
            drop_batches(train_iter, nmb)
            state["skipped_data"] += 1
            if dims.rank == 0:
                print(f"glotta train: step {step + 1}: batch of samples {samples[0]}..{samples[1] - 1} dropped "
                      "(faults.skip_steps / faults.jsonl)", flush=True)
        else:
            for m in model:
                m.zero_grad_buffer()
            opt.zero_grad()
            reports = fwd_bwd(forward_step_func=step_fn, data_iterator=train_iter, model=model, num_microbatches=nmb,
                              seq_length=fb_seq, micro_batch_size=fb_mbs, forward_only=False)
            if step + 1 in inject["grad"] and dims.rank == 0:
                poison_gradient(model)
            nan = step + 1 in inject["loss"] and dims.rank == 0
            loss_sum, ntok, _ = _reduce(reports, dims, len(data.langs), poison=nan)  # one host sync per step
            loss = loss_sum / max(ntok, 1) * (10.0 if step + 1 in inject["spike"] else 1.0)
            if not finite(loss):
                faults.nonfinite("loss", loss, step + 1, samples)
                state["skipped_nonfinite"] += 1
            elif not guard.check(loss, step + 1):
                state["skipped"] += 1
                faults.skipped()
            else:
                grad_norm, applied = step_with_grad_check(opt, cfg.optim.clip_grad, dims.device)
                if applied:
                    sched.step(increment=1)
                    faults.applied()
                else:
                    faults.nonfinite("grad_norm", grad_norm, step + 1, samples)
                    state["skipped_nonfinite"] += 1
        step += 1
        state.update(step=step, consumed_samples=samples[1], tokens=state["tokens"] + int(ntok))
        saver.poll()  # publishes a finished background save
        last = {"loss": loss, "lr": opt.param_groups[0]["lr"], "grad_norm": grad_norm, "tokens": ntok}
        if cfg.optim.spike_factor > 0:
            last["loss_mean"] = guard.mean
        if step % cfg.log_interval == 0 or step == cfg.train_iters:
            # Evaluation and checkpoint time are logged on their own, not inside the step time.
            dt = (time.perf_counter() - t_last - paused) / (step - state["logged_step"])
            t_last, paused, state["logged_step"] = time.perf_counter(), 0.0, step
            flops = flops_tok * cfg.global_batch_size * seq / dt / dims.world_size
            last.update({"tokens_per_s": ntok / dt, "step_time_s": dt, "tflops_per_gpu": flops / 1e12})
            if peak:
                last["mfu"] = flops / peak
            if data.loader is not None and hasattr(data.loader, "stats"):
                last["loader_padding_pct"] = float(data.loader.stats().get("padding_pct", 0.0))
            _emit(dims, tracker, run_dir, step, last)
        t0 = time.perf_counter()
        if cfg.data.valid and cfg.eval_interval and (step % cfg.eval_interval == 0 or step == cfg.train_iters):
            _emit(dims, tracker, run_dir, step, {**evaluate(cfg, dims, model, data), "eval_time_s": time.perf_counter() - t0})
        stopping = stop.agreed() or (cfg.exit_after_iters and step - state["start_step"] >= cfg.exit_after_iters)
        if ckpt.should_save(cfg.checkpoint, step, cfg.train_iters) or (stopping and cfg.checkpoint.enabled):
            t1 = time.perf_counter()
            _save(cfg, dims, saver, step, model, opt, sched, data, state, guard)
            _emit(dims, tracker, run_dir, step, {"checkpoint_time_s": time.perf_counter() - t1})
        paused += time.perf_counter() - t0
        if stopping:
            break
    saver.close()  # a SIGTERM stop or the end of training waits for the in-flight save
    summary = {"step": step, "final_loss": last.get("loss"), "tokens": state["tokens"], "skipped_steps": state["skipped"],
               "skipped_nonfinite": state["skipped_nonfinite"], "skipped_data": state["skipped_data"],
               "params_this_rank": count_parameters(chunks), "interrupted": step < cfg.train_iters}
    if tracker is not None:
        print(f"glotta train: MLflow run in {tracker.uri}; view with: {tracker.ui_command()}", flush=True)
        finish(tracker, "KILLED" if summary["interrupted"] else "FINISHED")
    return summary


def evaluate(cfg: TrainConfig, dims, model, data) -> dict:
    """Forward-only over eval_iters global batches of held-out shards: val/loss and val/bpb per language.

    val/loss is the configured mix's. A held-out language the mixed batches did not reach (few
    batches, many languages) gets one global batch of its own documents, so every language has a
    per-language loss; val/langs_own_batch counts those, val/langs_missing any still without one."""
    nl = len(data.valid_langs)
    for m in model:
        m.eval()
    with torch.no_grad():
        loss_sum, ntok, lang = _reduce(_forward_only(cfg, dims, model, data, cfg.eval_iters), dims, nl, width=3)
        unreached = [i for i in range(nl) if lang[nl + i] == 0]  # all-reduced: every rank agrees
        for i in unreached:  # a one-language loader: its language id 0 is valid_langs[i]
            _, _, own = _reduce(_forward_only(cfg, dims, model, data, 1, data.valid_langs[i]), dims, 1, width=3)
            lang[i], lang[nl + i], lang[2 * nl + i] = own
    for m in model:
        m.train()
    out = {"val/loss": loss_sum / max(ntok, 1), "val/langs_own_batch": len(unreached)}
    missing = [name for i, name in enumerate(data.valid_langs) if lang[nl + i] == 0]
    for i, name in enumerate(data.valid_langs):
        if lang[nl + i] > 0:
            out[f"val/loss/{name}"] = lang[i] / lang[nl + i]
            out[f"val/bpb/{name}"] = bits_per_byte(lang[i], lang[2 * nl + i])
    if missing:  # no scored token even in a batch of its own (e.g. documents shorter than one token)
        out["val/langs_missing"] = len(missing)
    if dims.rank == 0 and (missing or (unreached and not data.told_own_batch)):
        data.told_own_batch = True  # said once per run; the metric is logged at every evaluation
        names = ", ".join(data.valid_langs[i] for i in unreached)
        print(f"glotta train: validation: {len(unreached)} held-out language(s) not in the {cfg.eval_iters} mixed "
              f"batch(es) got one batch of their own ({names}; raise eval_iters to mix them)"
              + (f"; no scored token at all for {', '.join(missing)}" if missing else ""), flush=True)
    return out


def _forward_only(cfg: TrainConfig, dims, model, data, batches: int, lang: str | None = None) -> list:
    """The loss reports of `batches` global validation batches (of one language's documents with `lang`)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    nmb = cfg.num_microbatches(dims.dp)
    iters = valid_iterator(cfg, dims, batches * nmb, lang)
    if dims.vpp:  # every model chunk reads the same batches in the same order
        import itertools

        iters = list(itertools.tee(iters, dims.vpp)) if iters is not None else [None] * dims.vpp
    mbs, seq = cfg.micro_batch_size, cfg.model.seq_length
    nl = 1 if lang is not None else len(data.valid_langs)
    step_fn = partial(forward_step, (mbs, seq), dims.device, nl, data.byte_lengths, **_layout(cfg, dims))
    fb_seq, fb_mbs = (mbs * seq, 1) if uses_thd(cfg.model, dims) else (seq, mbs)
    reports = []
    for _ in range(batches):
        reports += get_forward_backward_func()(
            forward_step_func=step_fn, data_iterator=iters, model=model, num_microbatches=nmb,
            seq_length=fb_seq, micro_batch_size=fb_mbs, forward_only=True)
    return reports


def _layout(cfg, dims) -> dict:
    return {"thd": uses_thd(cfg.model, dims), "document_masking": cfg.model.document_masking}


def _reduce(reports, dims, num_langs: int, width: int = 3, poison: bool = False):
    """Sum the loss reports of this rank's micro-batches and share the totals with every rank
    (they exist on the last stage; its TP rank 0 contributes so nothing is counted twice)."""
    # Summed on the device: one transfer per step, not one per micro-batch.
    vec = torch.zeros(2 + width * num_langs, dtype=torch.float64, device=dims.device)
    if dims.is_last_stage and dims.tp_rank == 0:
        for r in reports:
            vec[:2] += r["lm loss"].double()
            vec[2:] += r["lang"].double()
    if poison:  # fault injection (faults.INJECT_ENV)
        vec[0] = float("nan")
    dist.all_reduce(vec)
    vec = vec.cpu()
    return vec[0].item(), vec[1].item(), vec[2:].tolist()


TRAIN_STATE = ("step", "consumed_samples", "tokens", "skipped", "skipped_nonfinite", "skipped_data")


def _lock_run_dir(cfg, dims):
    """Rank 0 locks the run directory; every rank learns whether it could (and fails alike)."""
    lock, error = (RunLock(Path(cfg.run_dir)) if dims.rank == 0 else None), None
    if lock is not None:
        try:
            lock.acquire()
        except GlottaError as e:
            error = e
    ok = torch.tensor([0.0 if error else 1.0], device=dims.device)
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    if error is not None:
        destroy_parallel()
        raise error
    if ok.item() == 0:
        destroy_parallel()
        raise GlottaError(f"{cfg.run_dir} is in use by another training job (rank 0 could not lock it)")
    return lock


def _resume(cfg, dims, ckpt_dir, model, opt, sched, data, guard) -> dict:
    state = dict.fromkeys(TRAIN_STATE, 0)
    source = ckpt_dir if cfg.checkpoint.resume and ckpt.latest_step(ckpt_dir) is not None else None
    weights_only = False
    if source is None and cfg.checkpoint.init_from:
        source, weights_only = cfg.checkpoint.init_from, cfg.checkpoint.init_weights_only
    if source is not None:
        meta = ckpt.load_checkpoint(source, model, None if weights_only else opt, dims)
        if not weights_only:
            sched.load_state_dict(meta["scheduler"])
            state.update({k: meta["train_state"].get(k, 0) for k in TRAIN_STATE})
            if meta.get("spike_guard"):
                guard.load_state_dict(meta["spike_guard"])
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


def _save(cfg, dims, saver, step, model, opt, sched, data, state, guard) -> None:
    loader_state = data.loader.state_dict() if data.loader is not None else None
    meta = {"scheduler": sched.state_dict(), "config": cfg.model_dump(mode="json"), "vocab_size": data.vocab_size,
            "langs": data.langs, "train_state": {k: state[k] for k in TRAIN_STATE}, "spike_guard": guard.state_dict()}
    gather = cfg.optim.overlap_param_gather and any(getattr(m.ddp_config, "overlap_param_gather", False) for m in model)
    if gather:  # the distributed optimizer's updated shards are gathered lazily: bring them in first
        for m in model:
            m.disable_forward_pre_hook(param_sync=True)
    path = saver.save(step, model, opt, meta, loader_state)
    if gather:
        for m in model:
            m.enable_forward_pre_hook()
    if dims.rank == 0:
        print(f"glotta train: {'saving' if saver.in_flight else 'saved'} {path}"
              f"{' in the background' if saver.in_flight else ''}", flush=True)


def _pointer(cfg, tracker):
    """on_saved callback: an MLflow artifact `checkpoints/iter_N.json` naming the finished checkpoint."""
    if tracker is None or not cfg.checkpoint.mlflow_pointer:
        return None
    import socket

    def log_pointer(path: Path, step: int) -> None:
        pointer = Path(cfg.run_dir) / "checkpoint_pointers" / f"{path.name}.json"
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.write_text(json.dumps({"step": step, "path": str(path.resolve()), "host": socket.gethostname(),
                                       "format": "megatron torch_dist"}) + "\n")
        tracker.artifact(pointer)

    return log_pointer


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
