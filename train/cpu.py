"""Run megatron-core 0.16 on CPU (gloo): redirect its hard-coded CUDA allocations.

megatron-core assumes a GPU in a handful of places that have nothing to do with the maths:

  module                                   what it does on CUDA only
  pipeline_parallel/schedules.py           torch.zeros(..., device="cuda") token counters
  pipeline_parallel/p2p_communication.py   torch.cuda.current_device() for shapes and recv buffers
  distributed/param_and_grad_buffer.py     DDP grad (and param) buffers on torch.cuda.current_device()
  utils.py                                 GlobalMemoryBuffer (local attention, SP all-gather) and the
                                           local multi_tensor_l2_norm (grad clipping) -> device="cuda"
  optimizer/optimizer.py                   found_inf / scale tensors with device='cuda'
  optimizer/clip_grads.py                  grad-norm tensors with device='cuda'
  tensor_parallel/{mappings,utils,layers}.py  gather buffers on torch.cuda.current_device()
  transformer/dot_product_attention.py     softmax offset on torch.cuda.current_device()
  models/common/embeddings/rotary_pos_embedding.py  RoPE inv_freq moved to torch.cuda.current_device()
  dist_checkpointing/strategies/filesystem_async.py  torch.cuda.synchronize() before writing a checkpoint
  dist_checkpointing/strategies/state_dict_saver.py  save-failure / metadata-reuse flags with device='cuda'
  dist_checkpointing/strategies/async_utils.py  async-save completion flags on torch.cuda.current_device()

Instead of patching functions, each of those modules gets its own `torch` name pointing at a thin
proxy of the real torch module: factory functions (`zeros`, `empty`, `tensor`, ...) map a CUDA
`device=` to the CPU and `torch.cuda.current_device()` returns the CPU device, `torch.cuda.synchronize()` does nothing. Everything else is
the real torch, and code outside these modules is untouched. Tensor methods such as `.cuda()` are
not covered globally; the one the trainer cannot avoid (LanguageModule moving the tied embedding to
CUDA before its first-stage/last-stage all-reduce when PP > 1) runs inside `tensor_cuda_stays()`,
which makes `Tensor.cuda()` a no-op while the model is built. The other `.cuda()` users
(tensor_parallel.broadcast_data, fp16 grad scaler, optimizer offload) are not used by the trainer.

The redirection is pinned to megatron-core 0.16.x: `enable()` refuses other versions, and
tests/train/test_cpu_compat.py fails loudly if one of the listed modules stops looking up `torch`
by module global (the mechanism this relies on) or a new hard-coded CUDA allocation appears in them.
Grad clipping: `clip_grad_by_total_norm_fp32` asserts `grad.type() == 'torch.cuda.FloatTensor'`, so
megatron's optimizer module gets `clip_grad_by_total_norm_fp32_cpu` below (same scaling, fp32 check
on the dtype instead of the CUDA type string). The norm itself is computed by megatron's own
`get_grad_norm_fp32`, whose CUDA tensors the proxy redirects.

Activation recomputation (`model.recompute`) saves and restores the CUDA RNG state around each
recomputed block (tensor_parallel/random.py `_get_cuda_rng_state` / `_set_cuda_rng_state`); on CPU
there is no CUDA generator (dropout draws from the CPU generator, which megatron saves as well), so
those two become no-ops.

On a machine with CUDA, `enable()` is never called.
"""
from __future__ import annotations

import contextlib
import importlib
import types

import torch

SUPPORTED_MEGATRON = "0.16."

# The megatron-core modules whose module-global `torch` is swapped for the proxy.
PATCHED_MODULES = (
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.pipeline_parallel.p2p_communication",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.utils",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.tensor_parallel.mappings",
    "megatron.core.tensor_parallel.utils",
    "megatron.core.tensor_parallel.layers",
    "megatron.core.transformer.dot_product_attention",
    "megatron.core.models.common.embeddings.rotary_pos_embedding",
    "megatron.core.dist_checkpointing.strategies.filesystem_async",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver",
    "megatron.core.dist_checkpointing.strategies.async_utils",
)

_FACTORIES = ("zeros", "ones", "empty", "full", "tensor", "arange", "randn", "rand", "zeros_like", "empty_like")
_CPU = torch.device("cpu")


def _cpu_device(device):
    """A device argument with every CUDA flavour ("cuda", "cuda:0", 0, torch.device) mapped to CPU."""
    if device is None:
        return None
    if isinstance(device, int) or (isinstance(device, str) and device.startswith("cuda")):
        return _CPU
    if isinstance(device, torch.device) and device.type == "cuda":
        return _CPU
    return device


def _redirect(fn):
    def wrapper(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _cpu_device(kwargs["device"])
        kwargs.pop("pin_memory", None)  # pinning needs CUDA
        return fn(*args, **kwargs)

    wrapper.__name__ = fn.__name__
    wrapper.__wrapped__ = fn
    return wrapper


class _CudaOnCpu(types.ModuleType):
    """`torch.cuda` as seen by a patched module: current_device() is the CPU, the rest is real."""

    def __init__(self):
        super().__init__("torch.cuda")

    def current_device(self):
        return _CPU

    def synchronize(self, device=None):
        """CPU kernels are synchronous (p2p_communication syncs after batched send/recv)."""

    def __getattr__(self, name):
        return getattr(torch.cuda, name)


class TorchOnCpu(types.ModuleType):
    """The `torch` module with CUDA allocations redirected to the CPU (see the module docstring)."""

    def __init__(self):
        super().__init__("torch")
        self.cuda = _CudaOnCpu()
        for name in _FACTORIES:
            setattr(self, name, _redirect(getattr(torch, name)))

    def __getattr__(self, name):
        return getattr(torch, name)


_PROXY = TorchOnCpu()
_enabled = False


def check_version() -> str:
    import megatron.core

    version = megatron.core.__version__
    if not version.startswith(SUPPORTED_MEGATRON):
        raise RuntimeError(
            f"glotta.train.cpu redirects CUDA allocations of megatron-core {SUPPORTED_MEGATRON}x, "
            f"found {version}: re-check the modules listed in train/cpu.py and update SUPPORTED_MEGATRON"
        )
    return version


def enable() -> None:
    """Install the redirection (idempotent). Call once per process before building the model."""
    global _enabled
    if _enabled:
        return
    check_version()
    for name in PATCHED_MODULES:
        mod = importlib.import_module(name)
        if getattr(mod, "torch", None) is not torch:
            raise RuntimeError(f"glotta.train.cpu: {name} no longer imports torch as a module global")
        mod.torch = _PROXY
    optimizer = importlib.import_module("megatron.core.optimizer.optimizer")
    if not hasattr(optimizer, "clip_grad_by_total_norm_fp32"):
        raise RuntimeError("glotta.train.cpu: megatron.core.optimizer.optimizer.clip_grad_by_total_norm_fp32 is gone")
    optimizer.clip_grad_by_total_norm_fp32 = clip_grad_by_total_norm_fp32_cpu
    random = importlib.import_module("megatron.core.tensor_parallel.random")
    for name in ("_get_cuda_rng_state", "_set_cuda_rng_state"):
        if not hasattr(random, name):
            raise RuntimeError(f"glotta.train.cpu: megatron.core.tensor_parallel.random.{name} is gone")
    random._get_cuda_rng_state = _no_cuda_rng_state
    random._set_cuda_rng_state = _set_no_cuda_rng_state
    _enabled = True


def _no_cuda_rng_state(*args, **kwargs) -> torch.Tensor:
    """No CUDA generator on CPU: an empty state that `_set_no_cuda_rng_state` accepts."""
    return torch.empty(0, dtype=torch.uint8)


def _set_no_cuda_rng_state(*args, **kwargs) -> None:
    """Nothing to restore on CPU (the CPU generator is restored by megatron itself)."""


def clip_grad_by_total_norm_fp32_cpu(parameters, max_norm, total_norm, use_decoupled_grad=False):
    """megatron's clip_grad_by_total_norm_fp32 without the CUDA type assert: scale grads in place."""
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    grads = []
    for p in parameters:
        g = getattr(p, attr, None)
        if g is not None:
            if g.dtype not in (torch.float32, torch.bfloat16):
                raise TypeError(f"grad clipping expects fp32/bf16 grads, got {g.dtype}")
            grads.append(g.detach())
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0:
        torch._foreach_mul_(grads, clip_coeff)


def enabled() -> bool:
    return _enabled


@contextlib.contextmanager
def tensor_cuda_stays():
    """While building the model on CPU, `tensor.cuda()` returns the tensor itself."""
    if not _enabled:
        yield
        return
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original
