"""glotta <-> Hugging Face Llama: logits equal within 1e-4 (fp32) on real multilingual text.

Checkpoints are written by the trainer's own save_checkpoint from models whose every weight (norms
included) is redrawn at a large scale, so a wrong mapping (a swapped head, gate/up, norm) moves the
logits by far more than the tolerance; one test shows that it does. TP=2 checkpoints are written by
two torchrun (gloo) processes that load the TP=1 checkpoint at TP=2 and save it again.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from glotta.train.config import TrainConfig
from glotta.train.data import DataConfig
from glotta.train.model import ModelConfig

VARIANTS = {
    "gqa_untied": dict(num_query_groups=2, tie_embeddings=False),
    "mha_tied": dict(num_query_groups=None, tie_embeddings=True),
    "gqa_tied_bias": dict(num_query_groups=1, tie_embeddings=True, add_bias_linear=True, rotary_base=500000),
}
TOL = 1e-4


def model_cfg(**kw) -> ModelConfig:
    base = dict(num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=96, seq_length=128,
                make_vocab_size_divisible_by=64)
    return ModelConfig(**{**base, **kw})


def randomize(model, seed: int) -> None:
    """Every weight redrawn: matrices N(0, 0.15), norm weights 1 + N(0, 0.3), biases N(0, 0.1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name or name.endswith("layer_norm_weight"):
                p.copy_(1 + 0.3 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.15 * noise)


def write_checkpoint(root, cfg: ModelConfig, tokenizer, vocab: int, seed: int = 0):
    from glotta.train.checkpoint import save_checkpoint
    from glotta.train.model import build_model
    from glotta.train.parallel import ParallelConfig, destroy_parallel, init_parallel

    dims = init_parallel(ParallelConfig(backend="gloo"), seed=seed)
    try:
        model = build_model(cfg, dims, vocab)[0]
        randomize(model, seed)
        tc = TrainConfig(model=cfg, data=DataConfig(tokenizer=str(tokenizer)), run_dir=str(root))
        meta = {"config": tc.model_dump(mode="json"), "vocab_size": vocab, "langs": ["en"]}
        return save_checkpoint(root, 3, [model], None, meta, None, dims)
    finally:
        destroy_parallel()


def glotta_logits(ckpt, tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    from glotta.train.inference import full_logits, load_model
    from glotta.train.parallel import destroy_parallel

    model, _ = load_model(ckpt)
    try:
        return full_logits(model, tokens)[..., :vocab]
    finally:
        destroy_parallel()


def hf_logits(hf_dir, tokens: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(tokens).logits.float()


def encode_all(sp, texts: dict[str, str]) -> torch.Tensor:
    """One row per language, cut to the shortest (real text, no padding)."""
    ids = [sp.encode(t) for t in texts.values()]
    n = min(len(i) for i in ids)
    return torch.tensor([i[:n] for i in ids])


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", MLFLOW_TRACKING_URI="")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(k, None)
    return e


TP2_WORKER = """
import json, sys, torch
from glotta.train.checkpoint import save_checkpoint
from glotta.train.inference import load_model, full_logits
from glotta.train.generate import GenerateConfig, generate_with
from glotta.tokenizer.evaluate import load_model as load_sp
from glotta.train.parallel import ParallelConfig, destroy_parallel, init_parallel


def main():
    jobs, tokens, prompts = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
    dims = init_parallel(ParallelConfig(tensor_parallel=2, backend="gloo"), seed=0)
    result = {}
    for src, dst in jobs:
        model, meta = load_model(src, dims=dims)
        sp = load_sp(meta["config"]["data"]["tokenizer"])
        logits = full_logits(model, torch.tensor(tokens))[..., :meta["vocab_size"]]
        gens = generate_with(model, sp, meta["vocab_size"], 128, prompts, GenerateConfig(max_tokens=12), sp.eos_id())
        out_meta = {k: v for k, v in meta.items() if k not in ("version", "step", "world")}
        save_checkpoint(dst, meta["step"], [model], None, out_meta, None, dims)
        if dims.rank == 0:
            torch.save(logits, dst + "/logits.pt")
        result[dst] = [g.tokens for g in gens]
    if dims.rank == 0:
        print("RESULT " + json.dumps(result))
    destroy_parallel()


if __name__ == "__main__":  # dist_checkpointing's save starts a process that imports this file
    main()
"""


@pytest.fixture(scope="module")
def ckpts(train_data, tmp_path_factory):
    """TP=1 checkpoints of every variant (written in this process)."""
    import sentencepiece as spm

    root = tmp_path_factory.mktemp("hf_ckpts")
    vocab = spm.SentencePieceProcessor(model_file=str(train_data.tokenizer)).get_piece_size()
    return {name: write_checkpoint(root / name, model_cfg(**kw), train_data.tokenizer, vocab, seed=i)
            for i, (name, kw) in enumerate(VARIANTS.items())}


@pytest.fixture(scope="module")
def sp(train_data):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(train_data.tokenizer))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_export_matches_glotta_logits(variant, ckpts, sp, multilingual_text, tmp_path):
    from glotta.train.hf_export import ExportConfig, export_hf

    tokens = encode_all(sp, multilingual_text)
    vocab = sp.get_piece_size()
    result = export_hf(ExportConfig(checkpoint=ckpts[variant], out=tmp_path / "hf", max_shard_bytes=100_000))
    assert result.vocab_size == vocab and result.padding_rows_dropped == 1536 - vocab
    assert "model.safetensors.index.json" in result.files and len(result.files) > 2
    conf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert conf["architectures"] == ["LlamaForCausalLM"] and conf["vocab_size"] == vocab
    assert conf["tie_word_embeddings"] == VARIANTS[variant]["tie_embeddings"]
    ref, got = glotta_logits(ckpts[variant], tokens, vocab), hf_logits(tmp_path / "hf", tokens)
    assert ref.abs().max() > 1.0  # large logits: the comparison is sensitive
    diff = (ref - got).abs().max().item()
    assert diff <= TOL, (variant, diff)


def test_a_wrong_mapping_is_caught(ckpts, sp, multilingual_text, tmp_path):
    """Swapping two query heads of one layer in the exported weights moves the logits far past TOL."""
    from transformers import AutoModelForCausalLM

    from glotta.train.hf_export import ExportConfig, export_hf

    tokens = encode_all(sp, multilingual_text)
    export_hf(ExportConfig(checkpoint=ckpts["gqa_untied"], out=tmp_path / "hf"))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        good = model(tokens).logits
        q = model.model.layers[0].self_attn.q_proj.weight
        q.copy_(torch.cat([q[16:32], q[:16], q[32:]]))
        bad = model(tokens).logits
    assert (good - bad).abs().max().item() > 100 * TOL


@pytest.mark.distributed
@pytest.mark.slow
def test_tp2_checkpoints_export_equal_and_generate_like_hf(ckpts, sp, multilingual_text, tmp_path):
    """A checkpoint written at TP=2 exports to the same weights as the TP=1 one, its gathered TP=2
    logits equal HF's, and greedy generation under torchrun equals transformers' generate()."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from glotta.train.hf_export import ExportConfig, export_hf

    tokens = encode_all(sp, multilingual_text)
    prompts = [multilingual_text["de"][:30], multilingual_text["ru"][:30]]
    script = tmp_path / "tp2.py"
    script.write_text(TP2_WORKER)
    variants = ("gqa_untied", "mha_tied")
    jobs = [(str(ckpts[v]), str(tmp_path / f"tp2_{v}")) for v in variants]
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        str(script), json.dumps(jobs), json.dumps(tokens.tolist()), json.dumps(prompts)],
                       env=env(), capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    generated = json.loads(p.stdout.split("RESULT ", 1)[1].splitlines()[0])
    outs = {}
    for variant in variants:
        dst = tmp_path / f"tp2_{variant}"
        gen_tp2 = generated[str(dst)]
        meta = json.loads((dst / "iter_0000003" / "meta.json").read_text())
        assert meta["world"]["tp"] == 2
        export_hf(ExportConfig(checkpoint=dst, out=tmp_path / f"hf2_{variant}"))
        export_hf(ExportConfig(checkpoint=ckpts[variant], out=tmp_path / f"hf1_{variant}"))
        w1, w2 = load_file(tmp_path / f"hf1_{variant}" / "model.safetensors"), load_file(tmp_path / f"hf2_{variant}" / "model.safetensors")
        assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
        hf = hf_logits(tmp_path / f"hf2_{variant}", tokens)
        tp2_logits = torch.load(dst / "logits.pt")
        assert (hf - tp2_logits).abs().max().item() <= TOL
        model = AutoModelForCausalLM.from_pretrained(tmp_path / f"hf2_{variant}", dtype=torch.float32).eval()
        for prompt, got in zip(prompts, gen_tp2):
            ids = torch.tensor([sp.encode(prompt)])
            want = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=sp.eos_id(),
                                  pad_token_id=sp.pad_id())[0, ids.shape[1]:].tolist()
            if sp.eos_id() in want:
                want = want[: want.index(sp.eos_id())]
            assert got == want, (variant, prompt)
        outs[variant] = gen_tp2
    assert outs["gqa_untied"] != outs["mha_tied"]  # the continuations depend on the weights
