"""glotta (megatron-core GPT, torch_dist names) <-> Hugging Face Llama: config and tensor layout.

Pure functions on tensors and dicts, shared by export (hf_export.py) and import (hf_import.py).

Layouts (checkpoint tensors are global and stacked over layers, see train/inference.py):
  linear_qkv  [G*(Q/G+2)*D, H]: per query group g, its Q/G query heads, then one key head, then one
              value head (megatron's grouped layout) -> q_proj [Q*D, H], k_proj [G*D, H], v_proj.
              Query head i attends with key/value head i // (Q/G) on both sides, so no permutation
              of heads is needed; both use the rotate-half RoPE convention (rotary_interleaved=False).
  linear_fc1  [2F, H] = [gate; up] (megatron stores the SwiGLU halves whole whatever the TP)
              -> gate_proj [F, H], up_proj [F, H];  act(gate) * up on both sides.
  norms       linear_qkv.layer_norm_weight -> input_layernorm, linear_fc1.layer_norm_weight ->
              post_attention_layernorm, final_layernorm -> model.norm (all RMSNorm, eps 1e-5).
  vocab       rows >= vocab_size are megatron's padding (to a multiple of 128 x TP): dropped.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from glotta.errors import ConfigError
from glotta.train.model import ModelConfig

PREFIX = "decoder.layers."
# checkpoint name (stacked over layers) -> HF name pattern (one per layer); qkv and fc1 are split.
NORM_IN = PREFIX + "self_attention.linear_qkv.layer_norm_weight"
QKV = PREFIX + "self_attention.linear_qkv.weight"
QKV_BIAS = PREFIX + "self_attention.linear_qkv.bias"
PROJ = PREFIX + "self_attention.linear_proj.weight"
PROJ_BIAS = PREFIX + "self_attention.linear_proj.bias"
NORM_MLP = PREFIX + "mlp.linear_fc1.layer_norm_weight"
FC1 = PREFIX + "mlp.linear_fc1.weight"
FC1_BIAS = PREFIX + "mlp.linear_fc1.bias"
FC2 = PREFIX + "mlp.linear_fc2.weight"
FC2_BIAS = PREFIX + "mlp.linear_fc2.bias"
EMBEDDING = "embedding.word_embeddings.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
OUTPUT = "output_layer.weight"

HF_LAYER = "model.layers.{i}."
HF_EMBED = "model.embed_tokens.weight"
HF_NORM = "model.norm.weight"
HF_HEAD = "lm_head.weight"
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
# megatron-core's TransformerConfig.layernorm_epsilon default; glotta does not change it.
RMS_EPS = 1e-5


@dataclass(frozen=True)
class Heads:
    q: int  # query heads
    g: int  # key/value heads (query groups)
    d: int  # head dim

    @classmethod
    def of(cls, cfg: ModelConfig) -> Heads:
        return cls(cfg.num_attention_heads, cfg.num_query_groups or cfg.num_attention_heads,
                   cfg.hidden_size // cfg.num_attention_heads)


def unsupported_for_llama(cfg: ModelConfig) -> list[str]:
    """Features of a glotta model that the Llama architecture cannot express (empty = exportable)."""
    out = []
    if cfg.normalization != "RMSNorm":
        out.append(f"model.normalization={cfg.normalization} (Llama has RMSNorm)")
    if cfg.activation != "swiglu":
        out.append(f"model.activation={cfg.activation} (Llama has SwiGLU)")
    if cfg.position_embedding != "rope":
        out.append(f"model.position_embedding={cfg.position_embedding} (Llama has RoPE)")
    return out


def split_qkv(w: torch.Tensor, h: Heads) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Megatron's grouped [G*(Q/G+2)*D, ...] -> q [Q*D, ...], k [G*D, ...], v [G*D, ...] (weight or bias)."""
    per = h.q // h.g
    x = w.reshape(h.g, per + 2, h.d, *w.shape[1:])
    q = x[:, :per].reshape(h.q * h.d, *w.shape[1:])
    k = x[:, per].reshape(h.g * h.d, *w.shape[1:])
    v = x[:, per + 1].reshape(h.g * h.d, *w.shape[1:])
    return q, k, v


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h: Heads) -> torch.Tensor:
    per = h.q // h.g
    rest = q.shape[1:]
    x = torch.cat([q.reshape(h.g, per, h.d, *rest), k.reshape(h.g, 1, h.d, *rest), v.reshape(h.g, 1, h.d, *rest)], 1)
    return x.reshape(h.g * (per + 2) * h.d, *rest)


def layer_to_hf(name: str, t: torch.Tensor, i: int, h: Heads) -> list[tuple[str, torch.Tensor]]:
    """One layer's slice of a stacked checkpoint tensor -> HF (name, tensor) pairs."""
    p = HF_LAYER.format(i=i)
    if name in (QKV, QKV_BIAS):
        kind = "weight" if name == QKV else "bias"
        q, k, v = split_qkv(t, h)
        return [(f"{p}self_attn.q_proj.{kind}", q), (f"{p}self_attn.k_proj.{kind}", k), (f"{p}self_attn.v_proj.{kind}", v)]
    if name in (FC1, FC1_BIAS):
        kind = "weight" if name == FC1 else "bias"
        gate, up = t.chunk(2, dim=0)
        return [(f"{p}mlp.gate_proj.{kind}", gate), (f"{p}mlp.up_proj.{kind}", up)]
    simple = {NORM_IN: "input_layernorm.weight", NORM_MLP: "post_attention_layernorm.weight",
              PROJ: "self_attn.o_proj.weight", PROJ_BIAS: "self_attn.o_proj.bias",
              FC2: "mlp.down_proj.weight", FC2_BIAS: "mlp.down_proj.bias"}
    return [(p + simple[name], t)]


def layer_names(cfg: ModelConfig) -> list[str]:
    names = [NORM_IN, QKV, PROJ, NORM_MLP, FC1, FC2]
    if cfg.add_bias_linear:
        names += [QKV_BIAS, PROJ_BIAS, FC1_BIAS, FC2_BIAS]
    return names


def hf_layer_sources(i: int) -> dict[str, list[str]]:
    """Checkpoint name -> the HF names of layer i it is built from (import direction)."""
    p = HF_LAYER.format(i=i)
    out = {NORM_IN: [p + "input_layernorm.weight"], NORM_MLP: [p + "post_attention_layernorm.weight"],
           PROJ: [p + "self_attn.o_proj.weight"], FC2: [p + "mlp.down_proj.weight"],
           QKV: [p + f"self_attn.{x}_proj.weight" for x in "qkv"],
           FC1: [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"],
           PROJ_BIAS: [p + "self_attn.o_proj.bias"], FC2_BIAS: [p + "mlp.down_proj.bias"],
           QKV_BIAS: [p + f"self_attn.{x}_proj.bias" for x in "qkv"],
           FC1_BIAS: [p + "mlp.gate_proj.bias", p + "mlp.up_proj.bias"]}
    return out


def layer_from_hf(name: str, parts: list[torch.Tensor], h: Heads) -> torch.Tensor:
    if name in (QKV, QKV_BIAS):
        return fuse_qkv(*parts, h)
    if name in (FC1, FC1_BIAS):
        return torch.cat(parts, 0)
    return parts[0]


def llama_config(cfg: ModelConfig, vocab_size: int, dtype: torch.dtype, special: dict[str, int | None]) -> dict:
    """The config.json fields of an HF LlamaForCausalLM equal to this glotta model."""
    bad = unsupported_for_llama(cfg)
    if bad:
        raise ConfigError("the Llama architecture cannot express " + "; ".join(bad) + ": not exported")
    h = Heads.of(cfg)
    return dict(
        architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=vocab_size,
        hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_size(), num_hidden_layers=cfg.num_layers,
        num_attention_heads=h.q, num_key_value_heads=h.g, head_dim=h.d, hidden_act="silu",
        max_position_embeddings=cfg.seq_length, rms_norm_eps=RMS_EPS, rope_theta=float(cfg.rotary_base),
        rope_scaling=None, tie_word_embeddings=cfg.tie_embeddings, attention_bias=cfg.add_bias_linear,
        mlp_bias=cfg.add_bias_linear, attention_dropout=0.0, initializer_range=cfg.init_method_std,
        torch_dtype=str(dtype).removeprefix("torch."), use_cache=True, **special,
    )


def _rope_theta(conf: dict) -> tuple[float | None, list[str]]:
    """rope base and the scaling problems of an HF config (v4 `rope_theta`/`rope_scaling` or v5 `rope_parameters`)."""
    params = conf.get("rope_parameters") or {}
    scaling = conf.get("rope_scaling") or {}
    theta = conf.get("rope_theta", params.get("rope_theta"))
    kind = (scaling.get("rope_type") or scaling.get("type")) if scaling else params.get("rope_type", "default")
    problems = [] if kind in (None, "default") else [f"rope scaling {kind!r} (glotta's RoPE has no scaling)"]
    return theta, problems


def model_config_from_hf(conf: dict, seq_length: int | None, divisible_by: int, where: str) -> ModelConfig:
    """An HF Llama/Mistral config.json -> glotta ModelConfig; one error listing what cannot be expressed."""
    arch = (conf.get("architectures") or [None])[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ConfigError(f"{where}: architecture {arch!r} (model_type {conf.get('model_type')!r}) is not supported; "
                          f"import-hf reads {', '.join(SUPPORTED_ARCHITECTURES)}")
    problems = []
    hidden, heads = conf["hidden_size"], conf["num_attention_heads"]
    kv = conf.get("num_key_value_heads") or heads
    head_dim = conf.get("head_dim") or hidden // heads
    if head_dim * heads != hidden:
        problems.append(f"head_dim {head_dim} x {heads} heads != hidden_size {hidden}")
    if conf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {conf.get('hidden_act')!r} (glotta's SwiGLU uses silu)")
    eps = conf.get("rms_norm_eps", RMS_EPS)
    if abs(eps - RMS_EPS) > 1e-12:
        problems.append(f"rms_norm_eps {eps} (glotta's RMSNorm uses {RMS_EPS})")
    theta, rope_problems = _rope_theta(conf)
    problems += rope_problems
    theta = theta if theta is not None else 10000.0
    if float(theta) != int(theta):
        problems.append(f"rope_theta {theta} is not an integer (model.rotary_base is)")
    attn_bias, mlp_bias = bool(conf.get("attention_bias", False)), bool(conf.get("mlp_bias", False))
    if attn_bias != mlp_bias:
        problems.append(f"attention_bias={attn_bias} but mlp_bias={mlp_bias} (glotta has one add_bias_linear)")
    max_pos = conf.get("max_position_embeddings", 2048)
    seq = seq_length or max_pos
    window = conf.get("sliding_window") if conf.get("use_sliding_window", True) else None
    if window is not None and window < seq:
        problems.append(f"sliding_window {window} < seq_length {seq} (glotta attends to the whole sequence; "
                        f"pass --seq-length {window} or less)")
    if problems:
        raise ConfigError(f"{where}: glotta cannot express " + "; ".join(problems))
    return ModelConfig(
        num_layers=conf["num_hidden_layers"], hidden_size=hidden, num_attention_heads=heads,
        num_query_groups=None if kv == heads else kv, ffn_hidden_size=conf["intermediate_size"], seq_length=seq,
        normalization="RMSNorm", activation="swiglu", position_embedding="rope", rotary_base=int(theta),
        tie_embeddings=bool(conf.get("tie_word_embeddings", False)), add_bias_linear=attn_bias,
        init_method_std=conf.get("initializer_range", 0.02), make_vocab_size_divisible_by=divisible_by,
    )
