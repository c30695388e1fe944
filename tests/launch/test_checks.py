"""Checks before work: `glotta train` refuses a non-SentencePiece tokenizer with one clear error;
the tokenizer stage reads the user's own parallel text (JSONL or FLORES-style TSV) and names the
languages without any."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from glotta.tokenizer.parallel import ParallelConfig, read_parallel, write_parallel

REPO = Path(__file__).resolve().parents[2]


def test_train_rejects_a_tokenizer_that_is_not_sentencepiece(tmp_path):
    bogus = tmp_path / "tokenizer.json"
    bogus.write_text('{"model": {"type": "BPE"}}')
    r = subprocess.run(
        [sys.executable, "-m", "glotta.launch.cli", "train", "-c", str(REPO / "configs/gpt-tiny.yaml"),
         "--set", f"data.train=[{tmp_path}]", "--set", f"data.tokenizer={bogus}", "--run-dir", str(tmp_path / "run")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 2
    assert "data.tokenizer" in r.stderr and "not a SentencePiece model" in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 3 and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


def test_user_parallel_tsv_for_the_corpus_languages(tmp_path, caplog):
    tsv = tmp_path / "flores.tsv"
    tsv.write_text(
        "id\ten\tde\tko\tsw\n"
        "1\tThe cat sleeps.\tDie Katze schläft.\t고양이가 잔다.\tPaka analala.\n"
        "2\tIt rains today.\tEs regnet heute.\t오늘 비가 온다.\tLeo kunanyesha.\n"
    )
    out = tmp_path / "parallel.jsonl"
    counts = write_parallel(ParallelConfig(out=out, langs=["en", "de", "ko", "ja"], source=tsv))
    assert counts == {"de": 2, "en": 2, "ko": 2}  # sw is not a corpus language; ja has no line
    assert "no parallel text for ja" in caplog.text
    assert read_parallel(out)["ko"]["2"] == "오늘 비가 온다."
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert {x["lang"] for x in lines} == {"en", "de", "ko"}


def test_gettext_parallel_leaves_out_languages_without_catalogs(tmp_path, caplog):
    out = tmp_path / "parallel.jsonl"
    counts = write_parallel(ParallelConfig(out=out, langs=["en", "de", "qaa"], max_ids=50))
    assert set(counts) == {"en", "de"} and counts["de"] > 0
    assert "no parallel text for qaa" in caplog.text


def test_one_error_format_for_commands_and_recipes(tmp_path):
    """`load_config` (one source) and `load_recipe` (an origin per key) word errors alike."""
    import pytest

    from glotta.config import StrictModel, load_config
    from glotta.errors import ConfigError
    from glotta.launch.checks import load_recipe

    class Stage(StrictModel):
        keep: float

    class Recipe(StrictModel):
        name: str
        stages: list[Stage] = []

    path = tmp_path / "recipe.yaml"
    path.write_text("name: x\nstages:\n  - keep: 0.5\n  - keep: half\n    extra: 1\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(Recipe, path, ["name=[1]"])
    assert str(e.value).splitlines() == [
        "--set name=[1]: name: Input should be a valid string (got [1])",
        f"{path}:4: stages[1].keep: Input should be a valid number, unable to parse string as a number (got 'half')",
        f"{path}:5: unknown key 'stages[1].extra'",
    ]
    (tmp_path / "bare.yaml").write_text("stages: []\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(Recipe, tmp_path / "bare.yaml", None)
    assert str(e.value) == f"{tmp_path / 'bare.yaml'}: 'name' is required"
    with pytest.raises(ConfigError) as e:
        load_config(Recipe, tmp_path / "bare.yaml", ["stages=[{keep: 2, x: 1}]"])
    assert str(e.value).splitlines() == [
        f"{tmp_path / 'bare.yaml'}: 'name' is required (give it in the YAML, as an option, or with --set name=...)",
        f"{tmp_path / 'bare.yaml'}: unknown key 'stages[0].x'",
    ]


def test_cli_overrides_leave_options_not_given_alone():
    from glotta.launch.options import cli_overrides

    got = cli_overrides(["a=1"], none=None, empty=[], paths=(Path("x y"), Path("z")), flag=True, n=3)
    assert got == ["a=1", 'paths=["x y", "z"]', "flag=true", "n=3"]
