"""`tokenizer build`: language-balanced sampling, SentencePiece options, the card, bad input."""
from __future__ import annotations

import json
import logging

import pytest
import sentencepiece as spm

from glotta.errors import ConfigError, DataError
from glotta.tokenizer.build import BuildConfig, build
from glotta.tokenizer.evaluate import EvalConfig, evaluate
from glotta.tokenizer.sample import SampleConfig, draw_sample, targets

SMALL = ("el", "hi", "ar")  # cut to 8 documents in the skewed_shards fixture


def test_temperature_and_unimax_targets():
    sizes = {"en": 1_000_000, "hi": 10_000}
    natural = targets(sizes, SampleConfig(alpha=1.0, sample_bytes=101_000))
    flat = targets(sizes, SampleConfig(alpha=0.3, sample_bytes=101_000))
    assert natural["hi"] == pytest.approx(1_000)
    assert flat["hi"] > 10 * natural["hi"]  # 0.3 up-weights the small language
    assert sum(flat.values()) == pytest.approx(101_000)
    uni = targets(sizes, SampleConfig(method="unimax", max_epochs=2, sample_bytes=101_000))
    assert uni["hi"] == 20_000  # capped at 2 epochs; the rest goes to en
    assert uni["en"] == pytest.approx(81_000)


def test_sample_is_seeded_and_balanced(skewed_shards):
    cfg = SampleConfig(alpha=0.3, sample_bytes=300_000, seed=7)
    a, b = draw_sample(skewed_shards, cfg), draw_sample(skewed_shards, cfg)
    assert a.lines == b.lines
    c = draw_sample(skewed_shards, cfg.model_copy(update={"seed": 8}))
    assert c.lines != a.lines
    total = sum(s.bytes for s in a.langs.values())
    avail = sum(s.available_bytes for s in a.langs.values())
    for lang in SMALL:  # the cut languages get a larger share of the sample than of the data
        assert a.langs[lang].bytes / total > 1.5 * a.langs[lang].available_bytes / avail
    assert a.langs["zh"].bytes / total < a.langs["zh"].available_bytes / avail
    assert abs(total - 300_000) / 300_000 < 0.1


def test_alpha_03_lowers_small_language_premiums(skewed_shards, parallel_jsonl, tmp_path):
    """alpha=0.3 vs alpha=1.0 on the same skewed data: the cut languages get cheaper, the worst premium does not rise."""
    for alpha in (0.3, 1.0):
        build(BuildConfig(shards=skewed_shards, out_dir=tmp_path, name=f"alpha{alpha}", vocab_size=2000,
                          model_type="bpe", sample=SampleConfig(alpha=alpha, sample_bytes=600_000)))
    result = evaluate(EvalConfig(tokenizers=[tmp_path / "alpha0.3.model", tmp_path / "alpha1.0.model"],
                                 parallel=parallel_jsonl))
    low, high = (result["tokenizers"][n] for n in ("alpha0.3", "alpha1.0"))
    for lang in sorted(low["langs"]):
        print(f"{lang}: premium alpha=0.3 {low['langs'][lang]['premium']:.3f}  alpha=1.0 {high['langs'][lang]['premium']:.3f}")
    print("max premium:", low["summary"]["premium"]["max"], high["summary"]["premium"]["max"])
    for lang in SMALL:
        assert low["langs"][lang]["premium"] < high["langs"][lang]["premium"], lang
    assert low["summary"]["premium"]["max"] <= high["summary"]["premium"]["max"]
    assert low["summary"]["premium"]["std"] < high["summary"]["premium"]["std"]


def test_build_writes_model_vocab_card(skewed_shards, tmp_path):
    cfg = BuildConfig(shards=skewed_shards, out_dir=tmp_path, name="tok", vocab_size=3000, model_type="bpe",
                      lang_tags=True, user_symbols=["<sep>"], sample=SampleConfig(sample_bytes=200_000))
    card = build(cfg)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tok.model"))
    assert sp.get_piece_size() == 3000
    assert [sp.id_to_piece(i) for i in range(5)] == ["<unk>", "<s>", "</s>", "<pad>", "<eod>"]
    assert "<lang:hi>" in sp.encode("a<lang:hi>b", out_type=str) and "<sep>" in sp.encode("a<sep>b", out_type=str)
    assert "<eod>" in sp.encode("end<eod>", out_type=str)
    text = "Größe: 12345 — नमस्ते 日本語 🙂"
    assert sp.decode(sp.encode(text)) == text  # identity normalisation + byte fallback: lossless
    assert "1" in sp.encode("12345", out_type=str)  # split digits
    on_disk = json.loads((tmp_path / "tok.card.json").read_text())
    assert on_disk == json.loads(json.dumps(card))
    assert set(on_disk["languages"]) == set(SMALL) | {"en", "de", "fr", "es", "ru", "ja", "zh"}
    assert on_disk["languages"]["hi"]["sampled_chars"] > 0
    assert on_disk["trainer"]["vocab_size"] == 3000 and on_disk["seconds"]["train"] > 0
    assert not list(tmp_path.glob(".tok*"))  # no temporary files left


def test_rerun_reuses_a_finished_build(skewed_shards, tmp_path):
    cfg = BuildConfig(shards=skewed_shards, out_dir=tmp_path, vocab_size=2000, model_type="bpe",
                      sample=SampleConfig(sample_bytes=100_000))
    first = build(cfg)
    mtime = (tmp_path / "glotta.model").stat().st_mtime_ns
    again = build(cfg)
    assert again["reused"] and again["seconds"] == first["seconds"]
    assert (tmp_path / "glotta.model").stat().st_mtime_ns == mtime
    changed = build(cfg.model_copy(update={"sample": SampleConfig(sample_bytes=100_000, seed=1)}))
    assert "reused" not in changed and (tmp_path / "glotta.model").stat().st_mtime_ns != mtime
    assert "reused" not in build(cfg.model_copy(update={"sample": SampleConfig(sample_bytes=100_000, seed=1),
                                                        "force": True}))


def test_temp_file_training_gives_the_same_model(skewed_shards, tmp_path):
    common = dict(shards=skewed_shards, vocab_size=2000, model_type="bpe", sample=SampleConfig(sample_bytes=100_000))
    build(BuildConfig(out_dir=tmp_path / "mem", **common))
    build(BuildConfig(out_dir=tmp_path / "file", temp_file=True, **common))
    pieces = []
    for sub in ("mem", "file"):  # the embedded trainer spec differs (input=...), the vocabulary must not
        sp = spm.SentencePieceProcessor(model_file=str(tmp_path / sub / "glotta.model"))
        pieces.append([(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())])
    assert pieces[0] == pieces[1]


def test_vocab_too_large_names_option_and_max(skewed_shards, tmp_path):
    cfg = BuildConfig(shards=skewed_shards, out_dir=tmp_path, vocab_size=500_000, model_type="unigram",
                      sample=SampleConfig(sample_bytes=50_000))
    with pytest.raises(ConfigError, match=r"--vocab-size 500000 is larger than the sample supports \(at most \d+"):
        build(cfg)
    assert not list(tmp_path.glob("*.model"))
    with pytest.raises(ConfigError, match=r"--vocab-size 300 is smaller than the \d+ characters"):
        build(cfg.model_copy(update={"vocab_size": 300}))


def test_holdout_keeps_evaluation_text_out(demo_shards, parallel_jsonl):
    from glotta.tokenizer.parallel import parallel_texts

    held = parallel_texts(parallel_jsonl)
    s = draw_sample(demo_shards, SampleConfig(sample_bytes=200_000, holdout=parallel_jsonl))
    assert s.counters["holdout_lines"] > 0 and not held & set(s.lines)


def test_tiny_language_is_counted_or_strict_error(skewed_shards, tmp_path, caplog):
    cfg = SampleConfig(sample_bytes=50_000, min_lang_bytes=20_000)  # ar has ~17 kB in the skewed set
    with caplog.at_level(logging.WARNING):
        s = draw_sample(skewed_shards, cfg)
    assert "ar" not in s.langs and s.counters["lang_too_small"] == 1
    assert "'ar'" in caplog.text
    with pytest.raises(DataError, match="'ar' has only"):
        draw_sample(skewed_shards, cfg, strict=True)
    with pytest.raises(DataError, match="no text for xx"):
        draw_sample(skewed_shards, SampleConfig(langs=["en", "xx"]))
