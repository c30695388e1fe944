"""The adaptation workflow end to end on a tiny model, through the CLI as docs/model.md writes it:
import-hf -> tokenizer extend -> tokenizer adapt-checkpoint -> glotta train (checkpoint.init_from)
-> export-hf -> transformers loads it and its tokenizer encodes the new pieces."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow


def run(*args: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", MLFLOW_TRACKING_URI="")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    p = subprocess.run([sys.executable, "-m", "glotta.launch.cli", *args, "--json"], env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    lines = p.stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line in ("{", "["))  # the --json summary comes last
    return json.loads("\n".join(lines[start:]))


def test_adaptation_recipe(train_data, tmp_path):
    from test_hf_import import make_hf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import sentencepiece as spm

    from glotta.tokenizer.extend import ExtendConfig, extend
    from glotta.tokenizer.sample import SampleConfig

    vocab = spm.SentencePieceProcessor(model_file=str(train_data.tokenizer)).get_piece_size()
    make_hf(tmp_path / "base_hf", train_data.tokenizer, vocab, 2, False)
    imported = run("model", "import-hf", str(tmp_path / "base_hf"), "--out", str(tmp_path / "base"), "--seq-length", "64")
    assert imported["vocab_size"] == vocab
    ext = extend(ExtendConfig(base=tmp_path / "base" / "tokenizer.model", shards=train_data.train, langs=["hi", "el"],
                              out_dir=tmp_path / "tok", name="ext", add=100, sample=SampleConfig(sample_bytes=60_000)))
    assert ext["added"] > 0
    adapted = run("tokenizer", "adapt-checkpoint", "--checkpoint", str(tmp_path / "base"), "--new-tokenizer",
                  ext["model"], "--out", str(tmp_path / "adapted"), "--text", str(train_data.valid), "--lang", "hi",
                  "--lang", "el", "--init", "mean-below", "--set", "max_lines=40")
    assert adapted["new_vocab"] == vocab + ext["added"]
    assert adapted["methods"]["mean-below"]["base_loss_rise_mean"] < adapted["methods"]["mean"]["base_loss_rise_mean"]
    summary = run("train", "-c", str(tmp_path / "base" / "train.yaml"), "--run-dir", str(tmp_path / "run"),
                  "--iters", "3", "--set", f"checkpoint.init_from={tmp_path / 'adapted'}",
                  "--set", f"data.tokenizer={ext['model']}", "--set", f"data.train=[{train_data.train}]",
                  "--set", "micro_batch_size=2", "--set", "global_batch_size=2", "--set", "optim.warmup_iters=1",
                  "--set", "eval_interval=0", "--set", "tracking.enabled=false")
    assert summary["step"] == 3 and summary["final_loss"] == summary["final_loss"]
    out = run("model", "export-hf", str(tmp_path / "run" / "checkpoints"), "--out", str(tmp_path / "hf"))
    assert out["vocab_size"] == vocab + ext["added"] and out["tokenizer"]["fast_tokenizer"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    from glotta.data import iter_samples, list_shards

    lines = [x for sh in list_shards(train_data.valid) for smp in iter_samples(sh) if smp.lang in ("hi", "el")
             for x in smp.text.split("\n") if x.strip()][:40]
    new_sp = spm.SentencePieceProcessor(model_file=ext["model"])
    got = tok(lines, add_special_tokens=False)["input_ids"]
    assert got == new_sp.encode(lines)
    assert max(max(ids) for ids in got) >= vocab  # the new hi/el pieces are used
    ids = got[0]
    assert model.get_input_embeddings().weight.shape[0] == vocab + ext["added"]
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([ids])).logits).all()
