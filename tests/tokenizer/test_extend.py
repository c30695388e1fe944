"""`tokenizer extend`: append-only, id_map, drift report, worst-premium allocation, bad base model."""
from __future__ import annotations

import json

import pytest
import sentencepiece as spm
from typer.testing import CliRunner

from glotta.errors import DataError
from glotta.launch.cli import app
from glotta.tokenizer.build import BuildConfig, build
from glotta.tokenizer.extend import ExtendConfig, extend
from glotta.tokenizer.sample import SampleConfig

BASE_LANGS = ["en", "de", "fr", "ru"]


@pytest.fixture(scope="module")
def base_models(skewed_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    for mt in ("bpe", "unigram"):
        build(BuildConfig(shards=skewed_shards, out_dir=out, name=mt, vocab_size=2000, model_type=mt,
                          sample=SampleConfig(langs=BASE_LANGS, sample_bytes=250_000)))
    return out


def pieces(sp):
    return [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]


def test_extend_round_trip_bpe(base_models, skewed_shards, parallel_jsonl, tmp_path, multilingual_text):
    report = extend(ExtendConfig(base=base_models / "bpe.model", shards=skewed_shards, langs=["hi", "el"],
                                 out_dir=tmp_path, add=300, parallel=parallel_jsonl,
                                 base_langs=BASE_LANGS, sample=SampleConfig(sample_bytes=150_000)))
    base = spm.SentencePieceProcessor(model_file=str(base_models / "bpe.model"))
    new = spm.SentencePieceProcessor(model_file=str(tmp_path / "extended.model"))
    n = base.get_piece_size()
    assert new.get_piece_size() == n + report["added"] and report["added"] == 300
    assert pieces(new)[:n] == pieces(base)  # old ids never move, scores untouched
    all_pieces = [p for p, _ in pieces(new)]
    assert len(set(all_pieces)) == len(all_pieces)  # no duplicates
    for text in multilingual_text.values():  # old ids decode identically
        ids = base.encode(text)
        assert new.decode(ids) == base.decode(ids) == text
    id_map = json.loads((tmp_path / "extended.id_map.json").read_text())
    assert id_map["base_vocab_size"] == n and [a["id"] for a in id_map["added"]] == list(range(n, n + 300))
    assert all(new.id_to_piece(a["id"]) == a["piece"] for a in id_map["added"])
    # below-min scores: every new piece ranks under every base piece
    assert max(a["score"] for a in id_map["added"]) < min(s for _, s in pieces(base) if s != 0)
    total = report["base_total"]
    print("base drift:", total)
    assert report["score_mode"] == "below-min" and total["tokens_after"] <= total["tokens_before"]
    assert all(b["old_ids_decode_same"] == b["lines"] for b in report["base"].values())
    for lang in ("hi", "el"):
        t = report["target"][lang]
        print(lang, t)
        assert t["source"] == "parallel"
        assert t["fertility_after"] < t["fertility_before"] and t["premium_after"] < t["premium_before"]


def test_extend_unigram_same_script_auto_scores(base_models, skewed_shards, parallel_jsonl, tmp_path):
    """es is written like the base languages: the drift report shows what the new pieces did to base text."""
    report = extend(ExtendConfig(base=base_models / "unigram.model", shards=skewed_shards, langs=["es"],
                                 out_dir=tmp_path, add=200, parallel=parallel_jsonl, base_langs=BASE_LANGS,
                                 sample=SampleConfig(sample_bytes=150_000)))
    total = report["base_total"]
    print(report["score_mode"], report["score_mode_note"], total, report["target"]["es"])
    assert total["tokens_after"] <= total["tokens_before"]  # auto never lets base text get longer
    assert all(b["old_ids_decode_same"] == b["lines"] for b in report["base"].values())
    assert report["target"]["es"]["fertility_after"] < report["target"]["es"]["fertility_before"]


def test_worst_premium_allocation(base_models, skewed_shards, parallel_jsonl, tmp_path):
    report = extend(ExtendConfig(base=base_models / "bpe.model", shards=skewed_shards, langs=["hi", "ar", "el"],
                                 out_dir=tmp_path, add=150, chunk=25, allocate="worst-premium",
                                 parallel=parallel_jsonl, base_langs=["en"], sample=SampleConfig(sample_bytes=100_000)))
    steps = report["allocation_steps"]
    before = {lang: t["premium_before"] for lang, t in report["target"].items()}
    print("steps:", [(s["lang"], round(s["premium_before"], 2)) for s in steps], "before:", before)
    assert steps[0]["lang"] == max(before, key=before.get)  # the worst language is served first
    assert sum(s["pieces"] for s in steps) == report["added"] == 150
    id_map = json.loads((tmp_path / "extended.id_map.json").read_text())
    assert {a["lang"] for a in id_map["added"]} <= {"hi", "ar", "el"}


def test_bad_base_model_and_cli(base_models, skewed_shards, tmp_path):
    fake = tmp_path / "fake.model"
    fake.write_text("this is a text file, not a protobuf")
    with pytest.raises(DataError, match="fake.model: not a SentencePiece model"):
        extend(ExtendConfig(base=fake, shards=skewed_shards, langs=["hi"], out_dir=tmp_path))
    res = CliRunner().invoke(app, ["tokenizer", "extend", "--base", str(base_models / "bpe.model"),
                                   "--shards", str(skewed_shards), "--lang", "hi", "--out", str(tmp_path),
                                   "--add", "50", "--set", "sample.sample_bytes=50000", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["added"] == 50 and out["target"]["hi"]["source"].startswith("shards")
