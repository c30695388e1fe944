"""Parameter count and per-GPU memory estimate for a layout (what `glotta launch train --dry-run` prints).

Per GPU, for the pipeline stage that holds the most (the first one: embedding + its layers, and it
keeps the most micro-batches in flight under 1F1B):

  weights      params_on_gpu x (2 bytes bf16 | 4 fp32)
  gradients    params_on_gpu x (4 bytes: megatron's fp32 main_grad buffer | 2 with grad_reduce_in_bf16)
  optimizer    params_on_gpu x (12 bytes bf16: fp32 master + Adam m, v | 8 fp32: m, v) / DP with the
               distributed optimizer (ZeRO-1), else not divided
  activations  per layer and micro-batch s*b*h*(10 + 24/t) bytes, or 34*s*b*h/t with sequence
               parallelism (Korthikanti et al. 2022, bf16; the 5*a*s^2*b attention-score term is absent
               with flash/flex/TE attention); SwiGLU's wider MLP adds 3*s*b*(f - 4h)/t; full
               recomputation keeps 2*s*b*h per layer plus one layer's full set; x layers of the stage
               x micro-batches in flight (min(PP, micro-batches), i.e. the whole model's layers on stage 0)
  logits       s*b*V/t x 6 bytes (bf16 logits + fp32 cross-entropy workspace), last stage
  overhead     3 GiB (CUDA context, NCCL and cuBLAS workspaces, allocator fragmentation)

An estimate, within ~10-15% of what `torch.cuda.max_memory_allocated` reports for Megatron GPT
layouts; it says whether a layout is in the right range before a job queues for hours.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

GIB = 1024**3
OVERHEAD_BYTES = 3 * GIB


def layer_parameters(m) -> int:
    """One transformer layer: QKV, output projection, MLP, two norms (biases when add_bias_linear)."""
    h, f = m.hidden_size, m.ffn_size()
    d = h // m.num_attention_heads
    g = m.num_query_groups or m.num_attention_heads
    qkv, proj = h * (h + 2 * g * d), h * h
    mlp = (3 if m.activation == "swiglu" else 2) * h * f
    norms = 2 * h * (2 if m.normalization == "LayerNorm" else 1)
    biases = (h + 2 * g * d) + h + (2 * f if m.activation == "swiglu" else f) + h if m.add_bias_linear else 0
    return qkv + proj + mlp + norms + biases


def parameter_count(m, padded_vocab: int) -> int:
    """Whole model: layers, final norm, input embedding, output layer (untied), learned positions."""
    embed = padded_vocab * m.hidden_size
    output = 0 if m.tie_embeddings else embed
    positions = m.seq_length * m.hidden_size if m.position_embedding == "learned_absolute" else 0
    return m.num_layers * layer_parameters(m) + m.hidden_size + embed + output + positions


@dataclass(frozen=True)
class MemoryEstimate:
    params_total: int
    params_per_gpu: int
    weights_gib: float
    gradients_gib: float
    optimizer_gib: float
    activations_gib: float
    logits_gib: float
    overhead_gib: float
    total_gib: float

    def as_dict(self) -> dict:
        return asdict(self)


def estimate(cfg, tp: int, pp: int, dp: int, padded_vocab: int, on_gpu: bool = True) -> MemoryEstimate:
    """Memory per GPU of `cfg` (a TrainConfig) laid out as TP x PP x DP."""
    m, o = cfg.model, cfg.optim
    total = parameter_count(m, padded_vocab)
    layers = -(-m.num_layers // pp)
    embed = padded_vocab * m.hidden_size
    first = layers * layer_parameters(m) + embed + (0 if pp > 1 or m.tie_embeddings else embed)
    per_gpu = -(-first // tp)
    half = m.precision == "bf16" or (m.precision == "auto" and on_gpu)
    dist_opt = o.distributed_optimizer and on_gpu and dp > 1
    weights = per_gpu * (2 if half else 4)
    grads = per_gpu * (2 if half and o.grad_reduce_in_bf16 else 4)
    optimizer = per_gpu * (12 if half else 8) / (dp if dist_opt else 1)
    s, b, h, f = m.seq_length, cfg.micro_batch_size, m.hidden_size, m.ffn_size()
    sp = cfg.parallel.sequence_parallel
    per_layer = s * b * h * (34 / tp if sp else 10 + 24 / tp) + 3 * s * b * max(f - 4 * h, 0) / tp
    if m.recompute == "full":
        stored = layers * 2 * s * b * h / (tp if sp else 1) + per_layer
    else:
        stored = layers * per_layer
    in_flight = min(pp, cfg.num_microbatches(dp)) if pp > 1 else 1
    activations = stored * in_flight
    logits = s * b * padded_vocab * 6 / tp if pp == 1 else 0  # stage 0 is not the last stage when pp > 1
    parts = [weights, grads, optimizer, activations, logits, OVERHEAD_BYTES]
    return MemoryEstimate(total, per_gpu, *(x / GIB for x in parts), sum(parts) / GIB)
