"""Model provider: megatron-core GPTModel built from layer specs.

Transformer Engine spec when TE is installed and CUDA is present (documents masked through its THD
path), otherwise megatron's local spec with `DocumentAttention` (train/attention.py: flex_attention
on CUDA, SDPA on CPU, one mask rule). Llama-style options: RMSNorm, SwiGLU, RoPE, grouped-query
attention, tied or untied embeddings. The `TransformerConfig` is built here, once, with megatron's
fused kernels switched on where they exist (CUDA; TE or apex for the ones that need them).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import model_validator

from glotta.config import StrictModel
from glotta.train.parallel import ParallelDims


class ModelConfig(StrictModel):
    num_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    # Grouped-query attention: K/V heads (None = as many as query heads).
    num_query_groups: int | None = None
    # None = 4*hidden for GELU, Llama's 8/3*hidden (rounded up to 64) for SwiGLU.
    ffn_hidden_size: int | None = None
    seq_length: int = 64
    normalization: Literal["RMSNorm", "LayerNorm"] = "RMSNorm"
    activation: Literal["swiglu", "gelu"] = "swiglu"
    position_embedding: Literal["rope", "learned_absolute"] = "rope"
    rotary_base: int = 10000
    tie_embeddings: bool = True
    add_bias_linear: bool = False
    init_method_std: float = 0.02
    dropout: float = 0.0
    make_vocab_size_divisible_by: int = 128
    # auto = Transformer Engine (THD) when installed with CUDA, else flex_attention on CUDA / SDPA on
    # CPU; flex and sdpa force the local spec with that kernel (same document rule, train/attention.py).
    attention_backend: Literal["auto", "flex", "sdpa", "te"] = "auto"
    # Packed documents never attend to each other; false = causal over the whole packed row (on purpose).
    document_masking: bool = True
    recompute: Literal["none", "selective", "full"] = "none"
    # auto = bf16 on GPU, fp32 on CPU.
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    @model_validator(mode="after")
    def _check(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("model.hidden_size must be divisible by model.num_attention_heads")
        groups = self.num_query_groups or self.num_attention_heads
        if self.num_attention_heads % groups:
            raise ValueError("model.num_attention_heads must be divisible by model.num_query_groups")
        return self

    def ffn_size(self) -> int:
        if self.ffn_hidden_size:
            return self.ffn_hidden_size
        if self.activation == "swiglu":
            return 64 * ((8 * self.hidden_size // 3 + 63) // 64)
        return 4 * self.hidden_size


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int) -> int:
    """Megatron's rule: pad to a multiple of make_vocab_size_divisible_by x TP."""
    multiple = divisible_by * tp
    return ((vocab_size + multiple - 1) // multiple) * multiple


def use_te(cfg: ModelConfig, dims: ParallelDims) -> bool:
    if cfg.attention_backend in ("sdpa", "flex") or dims.backend != "nccl":
        if cfg.attention_backend == "te":
            from glotta.errors import ConfigError

            raise ConfigError("model.attention_backend=te needs CUDA and Transformer Engine")
        return False
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        if cfg.attention_backend == "te":
            from glotta.errors import ConfigError

            raise ConfigError("model.attention_backend=te but transformer_engine is not installed") from None
        return False
    return True


def uses_thd(cfg: ModelConfig, dims: ParallelDims) -> bool:
    """Transformer Engine with document masking: micro-batches go in as one packed row + cu_seqlens."""
    return cfg.document_masking and use_te(cfg, dims)


def _importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def fusions(on_gpu: bool, te: bool) -> dict:
    """megatron's fused kernels: the ones that need only CUDA, and those that need TE or apex when present."""
    wgrad = on_gpu and (te or _importable("fused_weight_gradient_mlp_cuda"))
    return {
        "gradient_accumulation_fusion": wgrad,  # weight-grad GEMM accumulates into the fp32 main_grad
        "apply_rope_fusion": on_gpu and te,  # megatron takes the fused RoPE from TE
        "cross_entropy_loss_fusion": on_gpu,  # megatron's native fused vocab-parallel cross entropy
        "bias_dropout_fusion": on_gpu,
        "masked_softmax_fusion": False,  # not used: flex / SDPA / TE do their own softmax
        "persist_layer_norm": on_gpu and _importable("fused_layer_norm_cuda"),  # apex only
    }


def bf16(cfg: ModelConfig, dims: ParallelDims) -> bool:
    return cfg.precision == "bf16" or (cfg.precision == "auto" and dims.backend == "nccl")


# ModelConfig keys that megatron's TransformerConfig takes under the same name and meaning.
SAME_IN_MEGATRON = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "normalization",
                    "add_bias_linear", "init_method_std")


def transformer_config(cfg: ModelConfig, dims: ParallelDims):
    from megatron.core.transformer.transformer_config import TransformerConfig

    on_gpu = dims.backend == "nccl"
    half = bf16(cfg, dims)
    recompute = {"none": {}, "selective": {"recompute_granularity": "selective"},
                 "full": {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}}
    return TransformerConfig(
        **{k: getattr(cfg, k) for k in SAME_IN_MEGATRON},
        ffn_hidden_size=cfg.ffn_size(),
        gated_linear_unit=cfg.activation == "swiglu",
        activation_func=F.silu if cfg.activation == "swiglu" else F.gelu,
        hidden_dropout=cfg.dropout,
        attention_dropout=cfg.dropout,
        tensor_model_parallel_size=dims.tp,
        pipeline_model_parallel_size=dims.pp,
        virtual_pipeline_model_parallel_size=dims.vpp,
        sequence_parallel=dims.sequence_parallel,
        pipeline_dtype=torch.bfloat16 if half else torch.float32,
        params_dtype=torch.bfloat16 if half else torch.float32,
        bf16=half,
        # CPU: build full master weights and split them, so every TP layout starts identical.
        use_cpu_initialization=not on_gpu,
        # Fused kernels exist only on CUDA.
        bias_activation_fusion=on_gpu and cfg.activation == "swiglu" and not cfg.add_bias_linear,
        **fusions(on_gpu, on_gpu and use_te(cfg, dims)),
        **recompute[cfg.recompute],
    )


def layer_spec(cfg: ModelConfig, dims: ParallelDims):
    from megatron.core.models.gpt import gpt_layer_specs as specs

    if use_te(cfg, dims):
        return specs.get_gpt_layer_with_transformer_engine_spec()
    from glotta.train.attention import attention_class, kernel_for

    if dims.sequence_parallel:
        from glotta.errors import ConfigError

        # megatron's local spec norms are torch norms, which refuse sequence parallelism
        # ("sequence parallel not supported by torch LayerNorm"); TE (or apex) norms are needed.
        raise ConfigError("parallel.sequence_parallel needs Transformer Engine (model.attention_backend=auto/te on CUDA "
                          "with TE installed); set parallel.sequence_parallel=false")
    if cfg.attention_backend == "flex" and dims.device.type != "cuda":
        from glotta.errors import ConfigError

        raise ConfigError("model.attention_backend=flex needs CUDA (torch has no flex_attention backward on CPU); use auto or sdpa")
    kernel = cfg.attention_backend if cfg.attention_backend in ("flex", "sdpa") else kernel_for(dims.device, "auto")
    spec = specs.get_gpt_layer_local_spec(normalization=cfg.normalization)
    spec.submodules.self_attention.submodules.core_attention = attention_class(kernel)
    return spec


def build_model(cfg: ModelConfig, dims: ParallelDims, vocab_size: int) -> list:
    """The model chunks of this rank (one per virtual pipeline stage), unwrapped, on dims.device."""
    tcfg = transformer_config(cfg, dims)
    spec = layer_spec(cfg, dims)
    vocab = padded_vocab_size(vocab_size, cfg.make_vocab_size_divisible_by, dims.tp)
    from glotta.train.cpu import tensor_cuda_stays

    chunks = []
    with tensor_cuda_stays():
        chunks = [_gpt(tcfg, spec, vocab, cfg, vp if dims.vpp else None).to(dims.device) for vp in range(dims.vpp or 1)]
    return chunks


def _gpt(tcfg, spec, vocab: int, cfg: ModelConfig, vp_stage: int | None):
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel

    return GPTModel(
        config=tcfg,
        transformer_layer_spec=spec,
        vocab_size=vocab,
        max_sequence_length=cfg.seq_length,
        pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
        post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
        parallel_output=True,
        share_embeddings_and_output_weights=cfg.tie_embeddings,
        position_embedding_type=cfg.position_embedding,
        rotary_base=cfg.rotary_base,
        vp_stage=vp_stage,
    )


def count_parameters(chunks) -> int:
    """Parameters of this rank's chunks (shared embeddings counted once)."""
    seen, total = set(), 0
    for c in chunks:
        for p in c.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total
