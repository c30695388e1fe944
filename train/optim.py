"""Megatron DDP + optimizer + LR schedule for the model chunks, and the loss-spike guard."""
from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from glotta.config import StrictModel
from glotta.errors import GlottaError
from glotta.train.parallel import ParallelDims


class OptimConfig(StrictModel):
    lr: float = 3e-3
    min_lr: float = 3e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    clip_grad: float = 1.0
    warmup_iters: int = 10
    # cosine: warmup then cosine to min_lr; wsd: warmup, constant, then decay over wsd_decay_iters.
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    wsd_decay_iters: int = 0
    # Distributed optimizer (ZeRO-1 over DP); needs reduce-scatter, so GPU/nccl only.
    distributed_optimizer: bool = True
    overlap_grad_reduce: bool = True
    # A step whose loss exceeds spike_factor x the running mean is a spike: skip it or stop.
    spike_factor: float = 0.0
    on_spike: Literal["skip", "stop"] = "stop"
    # Steps of running mean the spike guard collects before it judges (its state is checkpointed).
    spike_warmup_steps: int = 20
    # Reduce gradients across data-parallel ranks in bf16 (Megatron's --grad-reduce-in-bf16); the default
    # fp32 reduction is what Megatron does for bf16 training (--accumulate-allreduce-grads-in-fp32).
    grad_reduce_in_bf16: bool = False
    # With the distributed optimizer: all-gather updated parameters during the next forward (GPU).
    overlap_param_gather: bool = True

    @model_validator(mode="after")
    def _check(self):
        if self.schedule == "wsd" and self.wsd_decay_iters <= 0:
            raise ValueError("optim.wsd_decay_iters must be > 0 with optim.schedule=wsd")
        return self


# OptimConfig keys that megatron's OptimizerConfig takes under the same name and meaning.
SAME_IN_MEGATRON = ("lr", "min_lr", "weight_decay", "clip_grad")


def build_optimizer(chunks, cfg: OptimConfig, dims: ParallelDims, train_iters: int, bf16: bool):
    """Wrap chunks in megatron DDP, build the megatron optimizer and OptimizerParamScheduler.

    Loss is summed over tokens (calculate_per_token_loss); finalize_model_grads divides the
    all-reduced grads by the global token count."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    on_gpu = dims.backend == "nccl"
    dist_opt = cfg.distributed_optimizer and on_gpu and dims.dp > 1
    tcfg = chunks[0].config
    ddp_cfg = DistributedDataParallelConfig(
        grad_reduce_in_fp32=not (bf16 and cfg.grad_reduce_in_bf16),
        overlap_grad_reduce=cfg.overlap_grad_reduce and on_gpu,
        # Param all-gather of the distributed optimizer overlapped with the next forward (forward pre-hooks).
        overlap_param_gather=cfg.overlap_param_gather and dist_opt,
        use_distributed_optimizer=dist_opt,
        # Per-token loss: sum grads over DP, finalize_model_grads scales by 1/num_tokens.
        average_in_collective=False,
    )
    model = [
        DistributedDataParallel(tcfg, ddp_cfg, c, disable_bucketing=(i > 0)) for i, c in enumerate(chunks)
    ]
    opt = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            **{k: getattr(cfg, k) for k in SAME_IN_MEGATRON},
            adam_beta1=cfg.beta1,
            adam_beta2=cfg.beta2,
            adam_eps=cfg.eps,
            bf16=bf16,
            params_dtype=tcfg.params_dtype,
            use_distributed_optimizer=dist_opt,
            overlap_param_gather=ddp_cfg.overlap_param_gather,
        ),
        model,
    )
    tcfg.calculate_per_token_loss = True
    tcfg.finalize_model_grads_func = finalize_model_grads
    tcfg.grad_scale_func = opt.scale_loss
    if ddp_cfg.overlap_grad_reduce:
        tcfg.no_sync_func = [m.no_sync for m in model] if len(model) > 1 else model[0].no_sync
        tcfg.grad_sync_func = [m.start_grad_sync for m in model] if len(model) > 1 else model[0].start_grad_sync
    # overlap_param_gather without align_param_gather (megatron's default): each module's forward
    # pre-hook waits for its bucket and dispatches the next one; no param_sync_func in the schedule.
    decay_iters = {"cosine": train_iters, "wsd": train_iters, "constant": train_iters}[cfg.schedule]
    sched = OptimizerParamScheduler(
        opt,
        init_lr=0.0,
        max_lr=cfg.lr,
        min_lr=cfg.min_lr if cfg.schedule != "constant" else cfg.lr,
        lr_warmup_steps=cfg.warmup_iters,
        lr_decay_steps=decay_iters,
        lr_decay_style={"cosine": "cosine", "wsd": "WSD", "constant": "constant"}[cfg.schedule],
        start_wd=cfg.weight_decay,
        end_wd=cfg.weight_decay,
        wd_incr_steps=train_iters,
        wd_incr_style="constant",
        wsd_decay_steps=cfg.wsd_decay_iters or None,
        lr_wsd_decay_style="linear" if cfg.schedule == "wsd" else None,
    )
    return model, opt, sched


def step_with_grad_check(opt, clip_grad: float, device) -> tuple[float, bool]:
    """megatron's `optimizer.step()` in its parts (prepare grads, norm, clip, update), so that a
    non-finite gradient norm leaves the weights untouched. Returns (grad_norm, applied). The norm is
    megatron's own (over all model-parallel and distributed-optimizer shards): every rank agrees."""
    from megatron.core.optimizer import optimizer as mopt

    if opt.prepare_grads():  # inf/nan found by a loss scaler (fp16)
        return float("inf"), False
    grad_norm = float(opt.get_grad_norm())
    bad = grad_norm != grad_norm or grad_norm in (float("inf"), float("-inf"))
    # The norm is reduced over model-parallel (and distributed-optimizer) shards only; DP replicas
    # of a plain optimizer judge their own copy: agree, so that no replica steps alone.
    import torch
    import torch.distributed as dist

    flag = torch.tensor([1.0 if bad else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() > 0:
        return grad_norm if bad else float("nan"), False
    if clip_grad > 0:
        for o in getattr(opt, "chained_optimizers", [opt]):
            params = [] if getattr(o, "is_stub_optimizer", False) else o.get_parameters()
            if params:  # module lookup at call time: train/cpu.py swaps in its CPU version
                mopt.clip_grad_by_total_norm_fp32(params, max_norm=clip_grad, total_norm=grad_norm,
                                                  use_decoupled_grad=o.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8)
    return grad_norm, bool(opt.step_with_ready_grads())


class SpikeGuard:
    """Running mean of the training loss; `check` says whether to skip a step or raises to stop.
    Its state travels in checkpoints (`state_dict`), so a resumed run judges spikes the same way."""

    VERSION = 1

    def __init__(self, cfg: OptimConfig):
        self.cfg, self.mean, self.n, self.warmup = cfg, 0.0, 0, cfg.spike_warmup_steps

    def state_dict(self) -> dict:
        return {"version": self.VERSION, "mean": self.mean, "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != self.VERSION:
            raise GlottaError(f"spike guard state version {state.get('version')}, this glotta reads {self.VERSION}")
        self.mean, self.n = float(state["mean"]), int(state["n"])

    def check(self, loss: float, step: int) -> bool:
        """True if the update should be applied (the loss is finite: faults.py checked it)."""
        if self.cfg.spike_factor > 0 and self.n >= self.warmup and loss > self.cfg.spike_factor * self.mean:
            msg = f"step {step}: loss {loss:.3f} > {self.cfg.spike_factor} x running mean {self.mean:.3f}"
            if self.cfg.on_spike == "stop":
                raise GlottaError(msg + " (optim.on_spike=stop)")
            return False
        self.n += 1
        self.mean += (loss - self.mean) / min(self.n, 100)
        return True
