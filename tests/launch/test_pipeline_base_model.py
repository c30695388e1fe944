"""`tokenizer: {base_model: DIR}`: the pipeline continues an existing Hugging Face model.

A tiny random transformers Llama (untied, GQA, weights drawn at std 0.15 so they differ from any
glotta init) with its own SentencePiece tokenizer trained on en/de text is the base; the pipeline
imports it, extends its tokenizer for Greek, adapts the checkpoint (mean-below) and trains stage 1
from the adapted weights. The trained checkpoint must still hold the base's rows for the old ids
(a tiny learning rate keeps them within 1e-3 of the base; a model trained from a fresh init would
be ~0.15 away) and the vocabulary must have grown. Then: an unchanged rerun skips everything, a
change inside the base directory reruns from `base` on, and bad bases fail before any work.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from test_pipeline import glotta, status  # the pipeline tests' CLI runner (tests/launch is on sys.path)

pytestmark = pytest.mark.slow

TRAIN = {
    "train_iters": 3, "micro_batch_size": 2, "global_batch_size": 2, "log_interval": 1, "eval_interval": 3,
    "eval_iters": 1, "eval_at_start": True, "model": {"seq_length": 64, "make_vocab_size_divisible_by": 64},
    "optim": {"lr": 1.0e-6, "min_lr": 1.0e-7, "warmup_iters": 1}, "checkpoint": {"interval": 100},
}  # fmt: skip


def make_base(root: Path, shards: Path, seed: int = 0) -> Path:
    """A Llama with a SentencePiece tokenizer that knows English and German only."""
    import sentencepiece as spm
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from glotta.data import iter_samples, list_shards

    lines = [x for p in list_shards(shards) for s in iter_samples(p) if s.lang in ("en", "de")
             for x in s.text.split("\n") if x.strip()]
    root.mkdir(parents=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(root / "sp"), vocab_size=700, character_coverage=1.0,
        byte_fallback=True, model_type="unigram", pad_id=3, num_threads=1, minloglevel=2,
    )  # fmt: skip
    vocab = spm.SentencePieceProcessor(model_file=str(root / "sp.model")).get_piece_size()
    torch.manual_seed(seed)
    conf = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=False,
                       bos_token_id=1, eos_token_id=2, pad_token_id=3, initializer_range=0.15)
    LlamaForCausalLM(conf).save_pretrained(root)
    (root / "sp.model").rename(root / "tokenizer.model")
    (root / "sp.vocab").unlink()
    return root


def recipe(base: Path, model_dir: Path, **over) -> Path:
    (base / "train.yaml").write_text(yaml.safe_dump(TRAIN))
    cfg = {
        "run_dir": str(base / "run"),
        "nproc": 1,
        "data": {"demo_corpus": {"langs": ["en", "de", "el"], "max_docs_per_lang": 40}},
        "consent": {"enabled": False},
        "tokenizer": {"base_model": str(model_dir), "target_langs": ["el"], "add": 60,
                      "set": ["sample.sample_bytes=60000", "report_lines=100"], "adapt_set": ["max_lines=60", "compare=false"]},
        "holdout": {"fraction": 0.2, "max_docs_per_lang": 8},
        "stage1": {"config": "train.yaml", "export_hf": True},
    }  # fmt: skip
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v}
    path = base / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def adapted_run(demo_shards, tmp_path_factory):
    base = tmp_path_factory.mktemp("base_model")
    model_dir = make_base(base / "hf", demo_shards)
    r = glotta("pipeline", "run", recipe(base, model_dir), "--json")
    return base, model_dir, json.loads(r.stdout)


def test_stage1_continues_the_adapted_base(adapted_run):
    import torch
    from safetensors.torch import load_file

    from glotta.train.inference import checkpoint_meta, read_tensors

    base, model_dir, summary = adapted_run
    run = base / "run"
    assert status(summary) == {s: "ran" for s in ("import", "holdout", "base", "tokenizer", "adapt", "stage1")}
    hf = load_file(model_dir / "model.safetensors")
    old = hf["model.embed_tokens.weight"].shape[0]
    meta = checkpoint_meta(run / "stage1/checkpoints")
    assert meta.vocab_size > old  # the vocabulary grew by the Greek pieces
    assert meta.model.hidden_size == 32 and meta.model.num_query_groups == 2  # the base's architecture
    extend = json.loads((run / "reports/tokenizer-extend.json").read_text())
    assert meta.vocab_size == old + extend["added"] == json.loads((run / "adapt/adapt.json").read_text())["new_vocab"]
    names = ["embedding.word_embeddings.weight", "output_layer.weight"]
    trained, adapted = read_tensors(meta, names), read_tensors(checkpoint_meta(run / "adapt"), names)
    for name, hf_name in (("embedding.word_embeddings.weight", "model.embed_tokens.weight"),
                          ("output_layer.weight", "lm_head.weight")):
        # old ids: the base model's rows (3 steps at lr 1e-6 move them by ~3e-6; base weights are ~0.15)
        assert float((trained[name][:old] - hf[hf_name]).abs().max()) < 1e-3
        # new ids: adapt-checkpoint's rows, not the trainer's own init
        assert torch.allclose(trained[name][old:meta.vocab_size], adapted[name][old:meta.vocab_size], atol=1e-3)
    log = "".join(p.read_text() for p in (run / "logs").glob("stage1-*.log"))
    assert "(weights only)" in log and str(run / "adapt") in log
    # every held-out language has a loss, although one mixed batch of 2 rows cannot reach all three
    val = {r["lang"]: r for r in summary["validation"]}
    assert set(val) == {"en", "de", "el", "all"}
    assert all(r["adapted base val loss"] is not None and r["stage1 val loss"] is not None for r in val.values())
    # the tokenizer extension table: Greek needs fewer tokens after extension
    el = next(r for r in summary["extension"] if r["lang"] == "el")
    before, after = (int(x.replace(",", "")) for x in el["tokens"].split(" -> "))
    assert after < before and summary["extension"][-1]["lang"].startswith("base languages")
    # the adaptation table: the init used, its base-language (en, de) loss rise next to the base model
    # (mean-below against the other inits: tests/tokenizer/test_adapt.py; compare=false keeps this test short)
    rows = {r["init"]: r for r in summary["adaptation"]}
    assert set(rows) == {"mean-below (used)", "base model, base tokenizer"}
    assert rows["mean-below (used)"]["base loss rise"] is not None and rows["mean-below (used)"]["target bpb"] > 0


def test_the_continued_model_exports_to_transformers(adapted_run):
    """The recipe's last step (`stage1.export_hf`): transformers loads stage1/hf and encodes Greek with the new pieces."""
    import sentencepiece as spm
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, model_dir, _ = adapted_run
    run = base / "run"
    exported = json.loads((run / "reports/stage1-export-hf.json").read_text())
    assert exported["out"] == str(run / "stage1/hf")
    old = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model")).get_piece_size()
    new_sp = spm.SentencePieceProcessor(model_file=str(run / "tokenizer/glotta.model"))
    assert exported["vocab_size"] == new_sp.get_piece_size() > old
    tok = AutoTokenizer.from_pretrained(run / "stage1/hf")
    model = AutoModelForCausalLM.from_pretrained(run / "stage1/hf", dtype=torch.float32)
    line = "Η γρήγορη καφέ αλεπού πηδά πάνω από τον τεμπέλη σκύλο."
    ids = tok(line, add_special_tokens=False)["input_ids"]
    assert ids == new_sp.encode(line) and max(ids) >= old  # the new Greek pieces are used
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([ids])).logits).all()


def dry_run(recipe_path: Path) -> dict[str, str]:
    """What `glotta pipeline run RECIPE --dry-run` reports, in this process."""
    from glotta.launch.commands.pipeline import load_pipeline
    from glotta.launch.pipeline import Runner

    cfg, stages = load_pipeline(recipe_path, None)
    return {r.stage: r.status for r in Runner(cfg.run_dir, dry_run=True).run(stages)}


def test_unchanged_rerun_skips_and_a_new_base_reruns_from_base(adapted_run):
    base, model_dir, _ = adapted_run
    assert set(dry_run(base / "recipe.yaml").values()) == {"skipped"}
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["rope_theta"] = 20000.0  # new content in the base directory
    (model_dir / "config.json").write_text(json.dumps(cfg))
    st = dry_run(base / "recipe.yaml")
    assert st["import"] == st["holdout"] == "skipped"
    assert st["base"] == "dry-run: would run"
    assert all(st[s].startswith("dry-run") for s in ("tokenizer", "adapt", "stage1"))


def test_bad_base_models_fail_before_any_work(demo_shards, tmp_path, capsys):
    from glotta.errors import ConfigError
    from glotta.launch.commands.pipeline import load_pipeline

    good = make_base(tmp_path / "hf", demo_shards)

    def check(model_dir: Path, match: str, **over) -> None:
        with pytest.raises(ConfigError, match=match):
            load_pipeline(recipe(tmp_path, model_dir, **over), None)
        assert not (tmp_path / "run").exists()

    check(tmp_path / "nowhere", "tokenizer.base_model: .*nowhere")
    gpt2 = tmp_path / "gpt2"
    shutil.copytree(good, gpt2)
    conf = json.loads((gpt2 / "config.json").read_text())
    (gpt2 / "config.json").write_text(json.dumps({**conf, "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    check(gpt2, "architecture 'GPT2LMHeadModel'")
    bpe = tmp_path / "bpe"
    shutil.copytree(good, bpe)
    (bpe / "tokenizer.model").unlink()
    (bpe / "tokenizer.json").write_text("{}")
    check(bpe, "not SentencePiece")
    check(good, r"stage1.set\[0\] model.hidden_size=64 disagrees", stage1={"set": ["model.hidden_size=64"]})
    check(good, "target_langs", tokenizer={"target_langs": []})
    check(good, "target_langs: xx not in data.demo_corpus.langs, which has de, el, en", tokenizer={"target_langs": ["el", "xx"]})
    check(good, "vocab_size", tokenizer={"vocab_size": 4000})
    check(good, r"import_set\[0\] 'precision=fp64'", tokenizer={"import_set": ["precision=fp64"]})
    check(good, "tp comes from stage 1", tokenizer={"import_set": ["precision=bf16", "tp=2"]})
    # a recipe file's own model section (here gpt-tiny's) is replaced, with a warning naming the keys
    path = recipe(tmp_path, good)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump({**TRAIN, "model": {**TRAIN["model"], "hidden_size": 64,
                                                                            "num_query_groups": 2}}))
    capsys.readouterr()
    cfg, stages = load_pipeline(path, None)
    err = capsys.readouterr().err
    assert "model.hidden_size 64 -> 32" in err and "num_query_groups" not in err  # 2 groups: the base's too
    assert [s.name for s in stages] == ["import", "holdout", "base", "tokenizer", "adapt", "stage1"]
    train = " ".join(map(str, stages[-1].commands[0]))
    assert "model.hidden_size=32" in train and f"checkpoint.init_from=\"{tmp_path / 'run' / 'adapt'}\"" in train
