"""HF -> glotta -> HF: tiny random transformers Llama models (no hub) with our own SentencePiece
model; logits equal within 1e-4; the CLI; and every bad input gives one clear error before work."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from glotta.errors import ConfigError, DataError

TOL = 1e-4


def make_hf(root, tokenizer, vocab: int, kv_heads: int, tied: bool, seed: int = 0, **extra):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    conf = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=128,
                       rms_norm_eps=1e-5, tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2, pad_token_id=3,
                       initializer_range=0.15, **extra)
    model = LlamaForCausalLM(conf).eval()
    with torch.no_grad():  # norms away from 1 so a swapped norm shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape))
    model.save_pretrained(root)
    shutil.copyfile(tokenizer, root / "tokenizer.model")
    return model


@pytest.fixture(scope="module")
def sp(train_data):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(train_data.tokenizer))


def tokens_of(sp, texts: dict[str, str]) -> torch.Tensor:
    ids = [sp.encode(t) for t in texts.values()]
    n = min(len(i) for i in ids)
    return torch.tensor([i[:n] for i in ids])


@pytest.mark.parametrize("kv_heads,tied", [(2, False), (4, True)], ids=["gqa_untied", "mha_tied"])
def test_hf_glotta_hf_roundtrip(kv_heads, tied, train_data, sp, multilingual_text, tmp_path):
    from transformers import AutoModelForCausalLM

    from glotta.train.hf_export import ExportConfig, export_hf
    from glotta.train.hf_import import ImportConfig, import_hf
    from glotta.train.inference import checkpoint_meta, full_logits, load_model
    from glotta.train.parallel import destroy_parallel

    vocab = sp.get_piece_size()
    src = make_hf(tmp_path / "src", train_data.tokenizer, vocab, kv_heads, tied)
    tokens = tokens_of(sp, multilingual_text)
    result = import_hf(ImportConfig(source=tmp_path / "src", out=tmp_path / "ck", tp=2))
    assert result.padded_rows == 1536 and result.tensors_unused == []  # 1500 -> multiple of 128 x TP=2
    meta = checkpoint_meta(tmp_path / "ck")
    assert meta.model.tie_embeddings == tied and (meta.model.num_query_groups or 4) == kv_heads
    assert meta.tokenizer is not None and meta.tokenizer.read_bytes() == train_data.tokenizer.read_bytes()
    with torch.no_grad():
        want = src(tokens).logits
    model, _ = load_model(tmp_path / "ck")
    try:
        got = full_logits(model, tokens)
    finally:
        destroy_parallel()
    assert (got[..., :vocab] - want).abs().max().item() <= TOL
    export_hf(ExportConfig(checkpoint=tmp_path / "ck", out=tmp_path / "back"))
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "back", dtype=torch.float32).eval()
    with torch.no_grad():
        assert (back(tokens).logits - want).abs().max().item() <= TOL


def test_cli_import_export_generate(train_data, sp, tmp_path):
    from glotta.launch.cli import app

    make_hf(tmp_path / "src", train_data.tokenizer, sp.get_piece_size(), 2, False)
    runner = CliRunner()
    r = runner.invoke(app, ["model", "import-hf", str(tmp_path / "src"), "--out", str(tmp_path / "ck"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["vocab_size"] == sp.get_piece_size()
    from glotta.train import load_train_config
    from glotta.train.inference import checkpoint_meta

    # <out>/train.yaml continues the import: its model is the checkpoint's, init_from and tokenizer point at it
    cont = load_train_config(tmp_path / "ck" / "train.yaml", [f"data.train=[{train_data.train}]"])
    assert cont.model == checkpoint_meta(tmp_path / "ck").model and cont.checkpoint.init_from == str((tmp_path / "ck").resolve())
    assert cont.data.tokenizer == str((tmp_path / "ck" / "tokenizer.model").resolve())
    r = runner.invoke(app, ["model", "export-hf", str(tmp_path / "ck"), "--out", str(tmp_path / "hf"), "--json",
                            "--dtype", "bfloat16"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["dtype"] == "bfloat16" and out["tokenizer"]["fast_tokenizer"]
    conf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert conf.get("dtype", conf.get("torch_dtype")) == "bfloat16"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Der schnelle braune Fuchs\n\nБыстрая коричневая лиса\n")
    r = runner.invoke(app, ["generate", str(tmp_path / "ck"), "--prompts-file", str(prompts), "--max-tokens", "5",
                            "--temperature", "0.8", "--top-p", "0.9", "--seed", "3", "--json"])
    assert r.exit_code == 0, r.output
    gens = json.loads(r.output)
    assert [g["prompt"] for g in gens] == ["Der schnelle braune Fuchs", "Быстрая коричневая лиса"]
    assert all(1 <= len(g["tokens"]) <= 5 or g["stopped"] == "eod" for g in gens)
    again = runner.invoke(app, ["generate", str(tmp_path / "ck"), "--prompts-file", str(prompts), "--max-tokens", "5",
                                "--temperature", "0.8", "--top-p", "0.9", "--seed", "3", "--json"])
    assert json.loads(again.output) == gens  # seeded sampling is reproducible
    r = runner.invoke(app, ["model", "export-hf", str(tmp_path / "ck"), "--out", str(tmp_path / "hf")])
    assert r.exit_code == 2 and "exists and is not empty" in r.output


# --- bad input: one clear error before any work ----------------------------------------------------


@pytest.fixture
def hf_dir(train_data, sp, tmp_path):
    make_hf(tmp_path / "src", train_data.tokenizer, sp.get_piece_size(), 2, False, seed=1)
    return tmp_path / "src"


def _import(src, out):
    from glotta.train.hf_import import ImportConfig, import_hf

    return import_hf(ImportConfig(source=src, out=out))


def test_unsupported_architecture(hf_dir, tmp_path):
    conf = json.loads((hf_dir / "config.json").read_text())
    conf.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2")
    (hf_dir / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ConfigError, match="architecture 'Qwen2ForCausalLM'.*not supported"):
        _import(hf_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_inexpressible_features_are_listed(hf_dir, tmp_path):
    conf = json.loads((hf_dir / "config.json").read_text())
    conf.update(rms_norm_eps=1e-6, rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0})
    (hf_dir / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ConfigError, match="rms_norm_eps 1e-06.*rope scaling 'yarn'"):
        _import(hf_dir, tmp_path / "out")


def test_missing_shard(hf_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="200KB")
    shutil.copyfile(hf_dir / "tokenizer.model", sharded / "tokenizer.model")
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    with pytest.raises(DataError, match=f"missing shard.*{shards[-1].name}"):
        _import(sharded, tmp_path / "out")


def test_tokenizer_not_sentencepiece(hf_dir, tmp_path):
    (hf_dir / "tokenizer.model").unlink()
    (hf_dir / "tokenizer.json").write_text("{}")
    with pytest.raises(DataError, match="no tokenizer.model.*found tokenizer.json.*not SentencePiece"):
        _import(hf_dir, tmp_path / "out")
    (hf_dir / "tokenizer.model").write_text("# tiktoken ranks, not a SentencePiece proto\n")
    with pytest.raises(DataError, match="is not a SentencePiece model"):
        _import(hf_dir, tmp_path / "out")


def test_vocab_sizes_disagree(hf_dir, tmp_path):
    conf = json.loads((hf_dir / "config.json").read_text())
    conf["vocab_size"] += 100
    (hf_dir / "config.json").write_text(json.dumps(conf))
    with pytest.raises(DataError, match="vocabulary sizes disagree: tokenizer 1500 pieces, config.json vocab_size 1600"):
        _import(hf_dir, tmp_path / "out")


def test_checkpoint_of_another_run(hf_dir, train_data, tmp_path):
    """Export with a tokenizer that is not the run's: size differs, or same size but other pieces."""
    import sentencepiece as spm

    from glotta.train.hf_export import ExportConfig, export_hf

    _import(hf_dir, tmp_path / "ck")
    other = tmp_path / "other"
    text = "The quick brown fox jumps over the lazy dog. Der schnelle braune Fuchs.\n" * 50
    (tmp_path / "t.txt").write_text(text)
    spm.SentencePieceTrainer.train(input=str(tmp_path / "t.txt"), model_prefix=str(other), vocab_size=60,
                                   minloglevel=2, hard_vocab_limit=False)
    with pytest.raises(DataError, match="pieces but the checkpoint .* was trained with vocab_size 1500: it belongs to another run"):
        export_hf(ExportConfig(checkpoint=tmp_path / "ck", out=tmp_path / "hf", tokenizer=f"{other}.model"))
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(train_data.tokenizer.read_bytes())
    proto.pieces[600].score -= 1.0  # same size, other scores: another run's tokenizer
    (tmp_path / "same_size.model").write_bytes(proto.SerializeToString())
    with pytest.raises(DataError, match="is not the tokenizer the checkpoint .* was trained with"):
        export_hf(ExportConfig(checkpoint=tmp_path / "ck", out=tmp_path / "hf", tokenizer=tmp_path / "same_size.model"))
    with pytest.raises(ConfigError, match="out: .*exists and is not empty"):
        _import(hf_dir, tmp_path / "ck")
    assert not (tmp_path / "hf").exists()


def test_glotta_features_llama_cannot_express(train_data, tmp_path):
    from test_hf_export import model_cfg, write_checkpoint

    from glotta.train.hf_export import ExportConfig, export_hf

    ck = write_checkpoint(tmp_path / "ck", model_cfg(normalization="LayerNorm", activation="gelu"), train_data.tokenizer, 1500)
    with pytest.raises(ConfigError, match="cannot express model.normalization=LayerNorm.*model.activation=gelu"):
        export_hf(ExportConfig(checkpoint=ck, out=tmp_path / "hf"))
    (ck / "__0_0.distcp").unlink()
    with pytest.raises(DataError, match="shard file\\(s\\) missing: __0_0.distcp"):
        export_hf(ExportConfig(checkpoint=ck, out=tmp_path / "hf"))
