"""`glotta data ...` through typer's CliRunner: help, config errors, --json output, demo corpus."""
from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from glotta.launch.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_help_lists_the_commands_and_options():
    res = invoke("data", "--help")
    assert res.exit_code == 0
    for cmd in ("import", "inspect", "demo-corpus"):
        assert cmd in res.output
    res = invoke("data", "import", "--help")
    assert res.exit_code == 0
    for opt in ("--text-field", "--lang-field", "--keep-fields", "--shard-mb", "--lid-threshold", "--strict", "RANK/WORLD_SIZE"):
        assert opt in res.output
    assert "(default: text)" in res.output  # defaults are shown, not eaten as rich markup


def test_bad_set_key_is_one_clear_error(tmp_path, multilingual_text):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"text": multilingual_text["en"]}) + "\n")
    res = invoke("data", "import", str(src), "--out", str(tmp_path / "out"), "--set", "shard_sampels=5")
    assert res.exit_code == 2
    assert "unknown key 'shard_sampels'" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()  # rejected before any work
    res = invoke("data", "import", str(src), "--out", str(tmp_path / "out"), "--utf8", "ignore")
    assert res.exit_code == 2 and "utf8" in res.output


def test_import_json_then_inspect_json(tmp_path, multilingual_text):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": k, "text": v}, ensure_ascii=False) + "\n" for k, v in multilingual_text.items()) + "{oops\n")
    conf = tmp_path / "import.yaml"
    # max_skip_share: the one malformed line of 9 is counted here, not an error (1/9 > the 5% default)
    conf.write_text(yaml.safe_dump({"inputs": [str(src)], "out": str(tmp_path / "out"), "shard_samples": 3, "max_skip_share": 0.2}))
    res = invoke("data", "import", "--config", str(conf), "--set", "prefix=web", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["status"] == "imported" and summary["shards"] == 3 and summary["samples"] == 8
    assert summary["counters"]["bad_json"] == 1 and summary["manifest_written"]
    assert set(summary["langs"]) == set(multilingual_text)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tar"))[0] == "web-00000-000000.tar"
    again = json.loads(invoke("data", "import", "--config", str(conf), "--set", "prefix=web", "--json").stdout)
    assert again["status"] == "nothing to do"
    res = invoke("data", "inspect", str(tmp_path / "out"), "--verify", "--json")
    assert res.exit_code == 0
    report = json.loads(res.stdout)
    assert report["verified"] and report["docs"] == 8 and report["languages"] == 8
    assert report["counters"]["bad_json"] == 1
    table = invoke("data", "inspect", str(tmp_path / "out"))
    assert "8 docs" in table.output and "from manifest.json" in table.output and "bytes_share" in table.output


def test_demo_corpus_command(tmp_path):
    res = invoke("data", "demo-corpus", "--out", str(tmp_path / "demo"), "--langs", "de,ja", "--max-docs-per-lang", "3", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert {r["lang"] for r in report["langs"]} == {"de", "ja"} and report["docs"] == 6
    empty = tmp_path / "no-locales"
    empty.mkdir()
    res = invoke("data", "demo-corpus", "--out", str(tmp_path / "x"), "--locale-dirs", str(empty))
    assert res.exit_code == 2 and "no gettext catalogs" in res.output
