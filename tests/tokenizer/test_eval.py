"""`tokenizer eval`: per-language metrics, premiums (parallel and per-byte), chart, CLI."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from glotta.errors import DataError
from glotta.launch.cli import app
from glotta.tokenizer.build import BuildConfig, build
from glotta.tokenizer.evaluate import EvalConfig, evaluate
from glotta.tokenizer.parallel import read_parallel
from glotta.tokenizer.sample import SampleConfig


@pytest.fixture(scope="module")
def model(skewed_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("evalmodel")
    build(BuildConfig(shards=skewed_shards, out_dir=out, name="m", vocab_size=3000, model_type="bpe",
                      sample=SampleConfig(sample_bytes=400_000)))
    return out / "m.model"


def test_gettext_parallel_is_parallel(parallel_jsonl):
    texts = read_parallel(parallel_jsonl)
    assert len(texts) == 10
    ids = {lang: set(by_id) for lang, by_id in texts.items()}
    assert all(v == ids["en"] for v in ids.values()) and len(ids["en"]) == 600
    some = sorted(ids["en"])[0]
    assert texts["en"][some] != texts["de"][some]  # a translation, not a copy


def test_metrics_on_parallel_text(model, parallel_jsonl, tmp_path):
    r = evaluate(EvalConfig(tokenizers=[model], parallel=parallel_jsonl, chart=tmp_path / "c.png"))
    rows = r["tokenizers"]["m"]["langs"]
    assert rows["en"]["premium"] == 1.0 and rows["en"]["premium_kind"] == "parallel"
    assert rows["en"]["premium_lines"] == 600
    for lang in ("ja", "zh"):  # no spaces: fertility per character, no continued-word rate
        assert rows[lang]["fertility_unit"] == "char" and rows[lang]["pcw"] is None
    for lang in ("en", "de", "ru", "hi", "ar"):
        assert rows[lang]["fertility_unit"] == "word" and rows[lang]["fertility"] >= 1.0
        assert 0 < rows[lang]["pcw"] < 1
    # Devanagari takes 3 bytes a character: more bytes per token than Latin text
    assert rows["hi"]["bytes_per_token"] > rows["en"]["bytes_per_token"]
    assert all(0 <= row["byte_rate"] < 0.5 and row["unk_rate"] == 0 for row in rows.values())
    s = r["tokenizers"]["m"]["summary"]
    non_ref = [row["premium"] for lang, row in rows.items() if lang != "en"]
    assert s["premium"]["max"] == max(non_ref) and rows[s["worst_lang"]]["premium"] == max(non_ref)
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_premium_per_byte_without_parallel_text(model, skewed_shards):
    r = evaluate(EvalConfig(tokenizers=[model], shards=skewed_shards, max_lines=300, langs=["en", "hi", "zh"]))
    rows = r["tokenizers"]["m"]["langs"]
    assert {row["premium_kind"] for row in rows.values()} == {"per-byte"}
    assert r["tokenizers"]["m"]["summary"]["premium_kinds"] == ["per-byte"]
    assert rows["en"]["premium"] == pytest.approx(1.0)


def test_bad_inputs_name_the_file(model, parallel_jsonl, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "lang": "en", "text": "ok"}\n{"id": 2, "text": "no lang"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        evaluate(EvalConfig(tokenizers=[model], parallel=bad))
    notmodel = tmp_path / "x.model"
    notmodel.write_bytes(b"not a model")
    with pytest.raises(DataError, match=r"x.model: not a SentencePiece model"):
        evaluate(EvalConfig(tokenizers=[notmodel], parallel=parallel_jsonl))
    with pytest.raises(DataError, match="reference language 'sw'"):
        evaluate(EvalConfig(tokenizers=[model], parallel=parallel_jsonl, reference="sw"))


def test_cli_build_and_eval_json(skewed_shards, parallel_jsonl, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["tokenizer", "build", "--shards", str(skewed_shards), "--out", str(tmp_path),
                              "--name", "cli", "--vocab-size", "2500", "--model-type", "bpe", "--alpha", "0.5",
                              "--sample-bytes", "200000", "--set", "split_digits=false", "--json"])
    assert res.exit_code == 0, res.output
    card = json.loads(res.stdout)
    assert card["config"]["sample"]["alpha"] == 0.5 and card["trainer"]["split_digits"] is False
    res = runner.invoke(app, ["tokenizer", "eval", str(tmp_path / "cli.model"), "--parallel", str(parallel_jsonl),
                              "--lang", "en", "--lang", "hi", "--json"])
    assert res.exit_code == 0, res.output
    assert set(json.loads(res.stdout)["tokenizers"]["cli"]["langs"]) == {"en", "hi"}
    res = runner.invoke(app, ["tokenizer", "build", "--shards", str(skewed_shards), "--out", str(tmp_path),
                              "--vocab-size", "900000", "--sample-bytes", "20000"])
    assert res.exit_code == 2 and "--vocab-size 900000" in res.output
