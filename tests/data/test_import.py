"""glotta data import: formats, rank split, resume, keys and bad input, on real multilingual text."""
from __future__ import annotations

import gzip
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from glotta.data import Manifest, iter_samples, list_shards
from glotta.data.importer import ImportConfig, assign_files, rank_world, run_import, sanitize_key
from glotta.data.set_heads import load_current
from glotta.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def docs(demo_shards) -> list[dict]:
    """Real documents (gettext catalogs in 10 languages) as input records."""
    out = []
    for shard in list_shards(demo_shards):
        for s in iter_samples(shard):
            out.append({"id": s.key, "text": s.text, "url": s.meta["url"], "lang": s.meta["lang"], "date": s.meta["crawl_date"]})
    return out[:240]


def write_jsonl(path: Path, records: list, raw_lines: list[bytes] = ()) -> Path:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wb") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False).encode() + b"\n")
        for line in raw_lines:
            f.write(line + b"\n")
    return path


def imported(out: Path) -> list:
    return [s for p in list_shards(out, verify=True) for s in iter_samples(p)]


def cfg(inputs, out, **kw) -> ImportConfig:
    return ImportConfig(inputs=[str(i) for i in inputs], out=str(out), **kw)


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "parquet"])
def test_roundtrip_formats_ours_and_webdataset(tmp_path, docs, fmt):
    src = tmp_path / f"in.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(docs), src, row_group_size=50)
    else:
        write_jsonl(src, docs)
    res = run_import(cfg([src], tmp_path / "out", shard_samples=64, keep_fields=["date"]))
    assert res.status == "imported" and res.manifest_written
    ours = imported(tmp_path / "out")
    assert [(s.key, s.text, s.meta["url"], s.meta["lang"]) for s in ours] == [
        (d["id"], d["text"], d["url"], d["lang"]) for d in docs
    ]
    assert all(s.meta["crawl_date"] == d["date"] and s.meta["source"] == f"file:{src.name}" for s, d in zip(ours, docs))
    shards = [str(p) for p in list_shards(tmp_path / "out")]
    assert len(shards) == 4  # 240 docs / 64 per shard
    theirs = list(wds.WebDataset(shards, shardshuffle=False).decode())
    assert [(x["__key__"], x["txt"], x["json"]) for x in theirs] == [(s.key, s.text, s.meta) for s in ours]
    m = Manifest.load(tmp_path / "out")
    assert m.samples == len(docs) and m.meta["counters"]["written"] == len(docs)
    heads = load_current(str(tmp_path / "out"))  # every index header in one file, current
    assert heads is not None and heads.names == [s.name for s in m.shards] and heads.docs.tolist() == [s.samples for s in m.shards]
    assert {lang: e["samples"] for lang, e in m.langs().items()} == {
        lang: sum(d["lang"] == lang for d in docs) for lang in {d["lang"] for d in docs}
    }


def test_text_files_split_modes_and_language_id(tmp_path, multilingual_text):
    src = tmp_path / "txt"
    src.mkdir()
    for lang, text in multilingual_text.items():
        (src / f"{lang}.txt").write_text(f"{text}\n\n{text} {text}\n", encoding="utf-8")
    (src / "notes.md").write_text("not an input")
    res = run_import(cfg([src], tmp_path / "files"))
    samples = imported(tmp_path / "files")
    assert len(samples) == 8 and res.counters["ignored_files"] == 1 and res.counters["lid_docs"] == 8
    for s in samples:
        lang = s.meta["source"].removeprefix("file:").removesuffix(".txt")
        assert s.meta["lang"] == lang and 0.5 <= s.meta["lang_score"] <= 1.0
        assert s.text == (src / f"{lang}.txt").read_text(encoding="utf-8")
    run_import(cfg([src / "*.txt"], tmp_path / "paras", text_split="paragraphs"))
    paras = imported(tmp_path / "paras")
    assert len(paras) == 16 and {p.text for p in paras} >= set(multilingual_text.values())
    theirs = wds.WebDataset([str(p) for p in list_shards(tmp_path / "paras")], shardshuffle=False).decode()
    assert [(x["__key__"], x["txt"], x["json"]) for x in theirs] == [(s.key, s.text, s.meta) for s in paras]
    run_import(cfg([src / "de.txt"], tmp_path / "lines", text_split="lines", lid="never"))
    assert [s.meta["lang"] for s in imported(tmp_path / "lines")] == ["und", "und"]


def test_lid_threshold_gives_und_and_always_keeps_the_input_tag(tmp_path, multilingual_text):
    mixed = " ".join(multilingual_text[k] for k in ("de", "ru", "el", "fr"))  # no majority language
    recs = [{"text": t, "lang": "xx-unknown"} for t in multilingual_text.values()] + [{"text": mixed}]
    res = run_import(cfg([write_jsonl(tmp_path / "in.jsonl", recs)], tmp_path / "lid"))
    got = imported(tmp_path / "lid")
    assert [s.meta["lang"] for s in got] == [*multilingual_text, "und"] and got[-1].meta["lang_score"] < 0.5
    assert res.counters["lid_und"] == 1 and res.counters["lid_docs"] == 9
    src2 = write_jsonl(tmp_path / "tagged.jsonl", [{"text": t, "lang": "eng"} for t in multilingual_text.values()])
    run_import(cfg([src2], tmp_path / "given"))
    assert {s.meta["lang"] for s in imported(tmp_path / "given")} == {"en"}  # tag trusted, normalised
    run_import(cfg([src2], tmp_path / "always", lid="always"))
    got = imported(tmp_path / "always")
    assert [s.meta["lang"] for s in got] == list(multilingual_text) and {s.meta["lang_input"] for s in got} == {"en"}


def test_keys_sanitized_deduplicated_or_generated(tmp_path, multilingual_text):
    texts = list(multilingual_text.values())
    recs = [{"id": "doc/1.html", "text": texts[0]}, {"id": "doc/1.html", "text": texts[1]}, {"id": "..", "text": texts[2]}, {"text": texts[3]}]
    res = run_import(cfg([write_jsonl(tmp_path / "in.jsonl", recs)], tmp_path / "out", keep_fields=["*"]))
    keys = [s.key for s in imported(tmp_path / "out")]
    assert keys == ["doc_1_html", "doc_1_html_2", "r0-000000002", "r0-000000003"]
    assert res.counters["duplicate_ids"] == 1
    assert sanitize_key("__init__") == "init" and sanitize_key("a b/c.d") == "a_b_c_d"


def test_two_ranks_import_disjoint_subsets(tmp_path, docs):
    files = [write_jsonl(tmp_path / f"part{i}.jsonl", docs[i::3]) for i in range(3)]
    out = tmp_path / "out"
    r0 = run_import(cfg(files, out, shard_samples=30), rank=0, world_size=2)
    assert not r0.manifest_written and not (out / "manifest.json").exists()  # rank 1 not done yet
    r1 = run_import(cfg(files, out, shard_samples=30), rank=1, world_size=2)
    assert r1.manifest_written
    names0, names1 = {s.name for s in r0.shards}, {s.name for s in r1.shards}
    assert all("-00000-" in n for n in names0) and all("-00001-" in n for n in names1)
    got = imported(out)
    assert sorted(s.key for s in got) == sorted(d["id"] for d in docs)  # union = input, no duplicates
    m = Manifest.load(out)
    assert m.samples == len(docs) == r0.counters["written"] + r1.counters["written"]
    assert m.meta["counters"]["records"] == len(docs)


def test_fewer_files_than_ranks_split_by_record(tmp_path, docs, monkeypatch):
    src = write_jsonl(tmp_path / "one.jsonl", docs[:50])
    out = tmp_path / "out"
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for r in range(3):  # Slurm's variables when torchrun's are absent
        monkeypatch.setenv("SLURM_PROCID", str(r))
        monkeypatch.setenv("SLURM_NTASKS", "3")
        res = run_import(cfg([src], out))
        assert res.rank == r and res.world_size == 3
        assert [s.key for s in imported_rank(out, r)] == [d["id"] for d in docs[r:50:3]]
    assert Manifest.load(out).samples == 50


def imported_rank(out: Path, rank: int) -> list:
    return [s for p in sorted(out.glob(f"shard-{rank:05d}-*.tar")) for s in iter_samples(p)]


def test_rank_world_and_file_assignment(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert rank_world() == (3, 4) and rank_world(0, 1) == (0, 1)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="RANK < WORLD_SIZE"):
        rank_world()
    owner = assign_files([100, 10, 10, 90, 5], 2)
    assert owner == [0, 1, 0, 1, 1]  # largest first to the least loaded rank: loads 110 and 105


def test_resume_after_losing_last_shard_and_manifest(tmp_path, docs):
    src = write_jsonl(tmp_path / "in.jsonl", docs)
    out = tmp_path / "out"
    run_import(cfg([src], out, shard_samples=50))
    before = Manifest.load(out)
    again = run_import(cfg([src], out, shard_samples=50))
    assert again.status == "nothing to do" and not again.manifest_written
    (out / before.shards[-1].name).unlink()
    (out / "manifest.json").unlink()
    res = run_import(cfg([src], out, shard_samples=50))
    assert res.status == "resumed" and res.manifest_written
    after = Manifest.load(out)
    assert [(s.name, s.sha256) for s in after.shards] == [(s.name, s.sha256) for s in before.shards]
    assert after.meta["counters"] == before.meta["counters"]
    with pytest.raises(DataError, match="different config keys \\['text_field'\\]"):
        run_import(cfg([src], out, shard_samples=50, text_field="body"))


def test_resume_after_a_crash_continues_at_the_right_record(tmp_path, docs):
    bad = json.dumps({"id": "late", "text": ""}).encode()
    src = write_jsonl(tmp_path / "in.jsonl", docs[:130], raw_lines=[bad])
    src2 = write_jsonl(tmp_path / "in2.jsonl", docs[130:])
    crashed, clean = tmp_path / "crashed", tmp_path / "clean"
    with pytest.raises(DataError, match="in.jsonl:line 131: empty document"):
        run_import(cfg([src, src2], crashed, shard_samples=40, strict=True))
    assert len(list(crashed.glob("*.tar"))) == 3 and not list(crashed.glob(".*tmp*"))
    res = run_import(cfg([src, src2], crashed, shard_samples=40))
    assert res.status == "resumed" and res.counters["empty_docs"] == 1
    run_import(cfg([src, src2], clean, shard_samples=40))
    a, b = Manifest.load(crashed), Manifest.load(clean)
    assert [(s.name, s.sha256) for s in a.shards] == [(s.name, s.sha256) for s in b.shards]
    assert a.meta["counters"] == b.meta["counters"]


def test_parquet_resume_skips_row_groups(tmp_path, docs):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(docs[:100]), src, row_group_size=16)
    out = tmp_path / "out"
    run_import(cfg([src], out, shard_samples=30))
    first = Manifest.load(out)
    for s in first.shards[1:]:
        (out / s.name).unlink()
    (out / "manifest.json").unlink()
    run_import(cfg([src], out, shard_samples=30))
    assert [s.key for s in imported(out)] == [d["id"] for d in docs[:100]]
    assert [s.sha256 for s in Manifest.load(out).shards] == [s.sha256 for s in first.shards]


# ---- bad input --------------------------------------------------------------------------------
def test_invalid_utf8_replace_skip_strict(tmp_path, multilingual_text):
    good = json.dumps({"id": "ok", "text": multilingual_text["el"]}, ensure_ascii=False).encode()
    broken = b'{"id": "bad", "text": "caf\xe9 cr\xe8me"}'
    surrogate = b'{"id": "sur", "text": "half \\ud800 pair"}'
    src = write_jsonl(tmp_path / "in.jsonl", [], raw_lines=[good, broken, surrogate])
    res = run_import(cfg([src], tmp_path / "replace"))
    got = {s.key: s.text for s in imported(tmp_path / "replace")}
    assert res.counters["invalid_utf8_replaced"] == 2 and got["bad"] == "caf\ufffd cr\ufffdme" and "sur" in got
    res = run_import(cfg([src], tmp_path / "skip", utf8="skip", max_skip_share=1.0))
    assert [s.key for s in imported(tmp_path / "skip")] == ["ok"] and res.counters["invalid_utf8_skipped"] == 2
    assert "in.jsonl:line 2: invalid UTF-8 at byte 26" in res.examples["invalid_utf8_skipped"][0]
    with pytest.raises(DataError, match="in.jsonl:line 2: invalid UTF-8"):
        run_import(cfg([src], tmp_path / "strict", strict=True))
    (tmp_path / "latin1.txt").write_bytes("Größe".encode("latin-1"))
    res = run_import(cfg([tmp_path / "latin1.txt"], tmp_path / "txt", utf8="skip", max_skip_share=1.0))
    assert res.counters["invalid_utf8_skipped"] == 1 and res.counters.get("written", 0) == 0


def test_empty_missing_and_malformed_records_are_counted_with_location(tmp_path, multilingual_text):
    recs = [{"id": "a", "text": multilingual_text["fr"]}, {"id": "b", "text": "  \n "}, {"id": "c", "body": "x"}, {"id": "d", "text": 42}]
    src = write_jsonl(tmp_path / "in.jsonl", recs, raw_lines=[b'{"id": "e", "text": "unterminated', b"[1, 2]", b""])
    res = run_import(cfg([src], tmp_path / "out", max_skip_share=1.0))  # tiny input: count, do not fail
    assert [s.key for s in imported(tmp_path / "out")] == ["a"]
    c = res.counters
    assert (c["empty_docs"], c["missing_text"], c["bad_text"], c["bad_json"], c["blank_lines"]) == (1, 1, 1, 2, 1)
    assert c["records"] == 7 and c["written"] == 1
    assert res.examples["missing_text"] == [f"{src}:line 3: no text field 'text' (fields: body, id); see --text-field (skipped)"]
    assert res.examples["bad_json"][0].startswith(f"{src}:line 5: malformed JSON")
    assert "line 6: a JSON line must hold an object, got list" in res.examples["bad_json"][1]
    for bad_line in (2, 3, 4, 5):
        lines = [json.dumps(recs[0])] + [json.dumps(r) for r in recs[1:]] + ['{"text": "unterminated']
        strict_src = tmp_path / f"strict{bad_line}.jsonl"
        strict_src.write_text("\n".join([lines[0], lines[bad_line - 1]]) + "\n")
        with pytest.raises(DataError, match=f"strict{bad_line}.jsonl:line 2"):
            run_import(cfg([strict_src], tmp_path / f"s{bad_line}", strict=True))


def test_parquet_missing_text_names_the_row(tmp_path, multilingual_text):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist([{"text": t} for t in multilingual_text.values()] + [{"text": None}]), src)
    res = run_import(cfg([src], tmp_path / "out", max_skip_share=1.0))  # tiny input: count, do not fail
    assert res.counters["missing_text"] == 1 and res.examples["missing_text"][0].startswith(f"{src}:row 8: no text field")


def test_inputs_that_do_not_exist_or_cannot_be_read(tmp_path):
    with pytest.raises(DataError, match="input not found"):
        run_import(cfg([tmp_path / "nope.jsonl"], tmp_path / "out"))
    with pytest.raises(DataError, match="matches no files"):
        run_import(cfg([tmp_path / "*.jsonl"], tmp_path / "out"))
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="data.csv: unknown input format"):
        run_import(cfg([tmp_path / "data.csv"], tmp_path / "out"))
    (tmp_path / "fake.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="fake.parquet: not a readable Parquet file"):
        run_import(cfg([tmp_path / "fake.parquet"], tmp_path / "out"))
    gz = tmp_path / "cut.jsonl.gz"
    data = gzip.compress(b"".join(json.dumps({"text": f"line {i}"}).encode() + b"\n" for i in range(5000)))
    gz.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.jsonl.gz: corrupt or truncated"):
        run_import(cfg([gz], tmp_path / "out2"))


@pytest.mark.distributed
@pytest.mark.skipif(shutil.which("torchrun") is None or shutil.which("glotta") is None, reason="needs torchrun and the glotta script")
def test_torchrun_two_processes(tmp_path, docs):
    """Two real processes started by torchrun split the files by RANK/WORLD_SIZE; one of them merges."""
    files = [write_jsonl(tmp_path / f"part{i}.jsonl", docs[i::4]) for i in range(4)]
    out = tmp_path / "out"
    # Each rank's stdout goes to its own file (--redirects 1): two processes printing JSON to one pipe
    # can interleave their writes (the test failed that way once under load).
    logs = tmp_path / "logs"
    cmd = ["torchrun", "--nproc-per-node=2", "--log-dir", str(logs), "--redirects", "1", "--no-python",
           "glotta", "data", "import", *map(str, files), "--out", str(out), "--json"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    stdouts = sorted(logs.rglob("stdout.log"))
    assert len(stdouts) == 2, stdouts
    summaries = [json.loads(chunk) for f in stdouts for chunk in re.findall(r"^\{.*?^\}", f.read_text(), flags=re.S | re.M)]
    assert sorted(s["rank"] for s in summaries) == [0, 1] and {s["world_size"] for s in summaries} == {2}
    assert sum(s["samples"] for s in summaries) == len(docs)
    assert sorted(s.key for s in imported(out)) == sorted(d["id"] for d in docs)
    assert Manifest.load(out).meta["world_size"] == 2


def test_refuses_to_mix_with_another_shard_set(tmp_path, demo_shards, multilingual_text):
    out = tmp_path / "out"
    shutil.copytree(demo_shards, out)
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": multilingual_text["en"]}])
    with pytest.raises(DataError, match="already holds a shard set"):
        run_import(cfg([src], out))
    run_import(cfg([src], tmp_path / "two"), rank=0, world_size=2)
    with pytest.raises(DataError, match="another WORLD_SIZE"):
        run_import(cfg([src], tmp_path / "two"), rank=0, world_size=3)


def test_shard_mb_bounds_the_text_per_shard(tmp_path, docs):
    src = write_jsonl(tmp_path / "in.jsonl", docs)
    run_import(cfg([src], tmp_path / "out", shard_mb=0.05))  # 52,428 bytes of text
    m = Manifest.load(tmp_path / "out")
    limit = int(0.05 * (1 << 20))
    assert len(m.shards) > 3 and m.samples == len(docs)
    assert all(s.bytes >= limit for s in m.shards[:-1])  # a shard closes once it reaches the limit
    max_doc = max(len(d["text"].encode()) for d in docs)
    assert all(s.bytes < limit + max_doc for s in m.shards)  # ... and never takes more than one more document


def test_resume_after_sigkill(tmp_path, docs):
    """A real crash: the import process is killed with SIGKILL mid-run, then rerun."""
    recs = [dict(d, id=f"{d['id']}-{i}") for i in range(15) for d in docs]  # 3,600 real documents
    src = write_jsonl(tmp_path / "in.jsonl", recs)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "glotta.launch.cli", "data", "import", str(src), "--out", str(out), "--shard-samples", "50"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(list(out.glob("*.tar"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if (out / "manifest.json").exists():
        pytest.skip("the import finished before it could be killed")
    # what a kill between writing an index and renaming its shard leaves (the timing decides whether
    # this run hit it, so plant it too)
    (out / ".shard-00000-000099.tar.idx.tmp-1").write_bytes(b"x")
    (out / "shard-00000-000099.tar.idx").write_bytes(b"x")
    res = run_import(cfg([src], out, shard_samples=50))
    assert res.status == "resumed"
    run_import(cfg([src], tmp_path / "clean", shard_samples=50))
    a, b = Manifest.load(out), Manifest.load(tmp_path / "clean")
    assert [(s.name, s.sha256) for s in a.shards] == [(s.name, s.sha256) for s in b.shards]
    assert a.meta["counters"] == b.meta["counters"] and not list(out.glob(".*"))
    assert sorted(p.name for p in out.glob("*.idx")) == sorted(p.name for p in (tmp_path / "clean").glob("*.idx"))


def test_parquet_types_binary_text_dates_and_nested_fields(tmp_path, multilingual_text):
    import datetime as dt

    table = pa.table({
        "content": pa.array([multilingual_text["ja"].encode(), b"caf\xe9"], type=pa.binary()),
        "ts": pa.array([dt.datetime(2024, 5, 1, 12, 30), None], type=pa.timestamp("s")),
        "extra": pa.array([{"score": 0.9, "tags": ["a"]}, {"score": 0.1, "tags": []}]),
    })  # fmt: skip
    pq.write_table(table, tmp_path / "in.parquet")
    res = run_import(cfg([tmp_path / "in.parquet"], tmp_path / "out", text_field="content", date_field="ts", keep_fields=["extra"]))
    got = imported(tmp_path / "out")
    assert got[0].text == multilingual_text["ja"] and got[0].meta["crawl_date"] == "2024-05-01T12:30:00"
    assert got[0].meta["extra"] == {"score": 0.9, "tags": ["a"]} and got[0].meta["lang"] == "ja"
    assert got[1].text == "caf\ufffd" and "crawl_date" not in got[1].meta
    assert res.counters["invalid_utf8_replaced"] == 1
