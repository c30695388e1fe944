"""The per-shard index: written at import, equal to a scan, hashed in the manifest; `glotta data
index` for shard sets from elsewhere; `glotta data show`."""
from __future__ import annotations

import json
import os
import shutil
import tarfile

import webdataset as wds
from typer.testing import CliRunner

from glotta.data import Manifest, iter_samples, list_shards
from glotta.data.manifest import sha256_file
from glotta.data.shard_index import ShardIndex, index_path, load_index, scan_shard
from glotta.launch.cli import app

runner = CliRunner()


def test_index_written_at_import_equals_a_scan_and_is_hashed_in_the_manifest(demo_shards):
    manifest = Manifest.load(demo_shards)
    for info, shard in zip(manifest.shards, list_shards(demo_shards)):
        blob = index_path(shard).read_bytes()
        assert sha256_file(index_path(shard)) == info.index_sha256
        # Offsets recorded while writing == offsets found by reading the tar back.
        assert scan_shard(shard).to_bytes(shard.name, shard.stat().st_size) == blob
        idx = ShardIndex.read_header(index_path(shard))
        assert idx.docs == info.samples and idx.header["shard_bytes"] == info.file_bytes
        assert dict(zip(idx.langs, idx.header["lang_docs"])) == {k: v["samples"] for k, v in info.langs.items()}
        samples = list(iter_samples(shard))
        assert idx.keys() == [s.key for s in samples]
        assert idx.cols()["nbytes"].tolist() == [len(s.text.encode()) for s in samples]


def test_an_index_whose_header_lacks_a_field_is_rebuilt_not_a_crash(demo_shards, tmp_path):
    # Valid JSON without `langs` (or with it not a list): a DataError inside, so load_index
    # rebuilds the index from the shard instead of failing with a KeyError at start-up.
    shard = tmp_path / list_shards(demo_shards)[0].name
    shutil.copy(list_shards(demo_shards)[0], shard)
    good = index_path(list_shards(demo_shards)[0]).read_bytes()
    for broken in ({"langs": None}, {"langs": "en"}, {"lang_docs": 3}):
        n = int.from_bytes(good[8:16], "little")
        head = json.loads(good[16 : 16 + n]) | broken
        raw = json.dumps(head).encode()
        index_path(shard).write_bytes(good[:8] + len(raw).to_bytes(8, "little") + raw)
        idx = load_index(shard)
        assert index_path(shard).read_bytes() == good and idx.langs == ShardIndex.read_header(index_path(shard)).langs


def test_start_up_reads_all_headers_at_once_and_rebuilds_each_damaged_one_named(demo_shards, tmp_path, caplog):
    # build_corpus_index reads every header in one C++ call and parses them in one json.loads;
    # one damaged header among them must not spoil the others: each bad one (cut short, bad
    # magic, a huge length, broken JSON, missing) is logged with its path and rebuilt, and the
    # corpus index equals the one from intact headers.
    from glotta.data.corpus_index import build_corpus_index

    d = tmp_path / "set"
    d.mkdir()
    for copy in "ab":  # 2 x 4 shards (their indexes are built by the first start-up)
        for p in list_shards(demo_shards):
            shutil.copy(p, d / f"{copy}-{p.name}")
    shards = list_shards(d)
    assert len(shards) >= 5
    intact = build_corpus_index([(p, None) for p in shards], set())
    good = [index_path(p).read_bytes() for p in shards]
    n = int.from_bytes(good[1][8:16], "little")
    index_path(shards[0]).write_bytes(good[0][:30])  # cut inside the header
    index_path(shards[1]).write_bytes(good[1][:16] + good[1][16 : 16 + n].replace(b'"docs"', b'"docs" :: '))
    index_path(shards[2]).write_bytes(b"NOTANIDX" + good[2][8:])
    index_path(shards[3]).write_bytes(good[3][:8] + (1 << 40).to_bytes(8, "little") + good[3][16:])
    index_path(shards[4]).unlink()
    index_path(shards[5]).write_bytes(good[5][:8] + (2 * n + 2).to_bytes(8, "little") + good[1][16 : 16 + n] + b", " + good[1][16 : 16 + n])
    with caplog.at_level("WARNING"):
        again = build_corpus_index([(p, None) for p in shards], set())
    # shards[5]'s header holds two headers (of shards[1]): one value too many in the joint parse,
    # so each is parsed alone, and shards[5]'s is not a dict of its own: rebuilt like the others.
    reasons = {0: "cut short", 1: "unreadable shard index", 2: "bad magic", 3: "1099511627776 bytes (damaged)", 5: "Extra data"}
    for p, why in ((shards[i], why) for i, why in reasons.items()):
        assert any(str(index_path(p)) in r.getMessage() and why in r.getMessage() for r in caplog.records), (p, why)
    assert [index_path(p).read_bytes() for p in shards] == good  # rebuilt, byte for byte
    assert {k: (t.shards.tolist(), t.ends.tolist(), t.start.tolist()) for k, t in again.tables.items()} == {
        k: (t.shards.tolist(), t.ends.tolist(), t.start.tolist()) for k, t in intact.tables.items()
    }


def test_direct_writer_output_reads_with_tarfile_and_webdataset(demo_shards):
    shard = list_shards(demo_shards)[0]
    ours = {s.key: s.text for s in iter_samples(shard)}
    with tarfile.open(shard) as tf:
        names = tf.getnames()
        assert all(m.isreg() and m.mtime == 0 for m in tf.getmembers())
        first = tf.extractfile(names[0]).read().decode()
    assert len(names) == 2 * len(ours) and first == next(iter(ours.values()))
    theirs = {s["__key__"]: s["txt"] for s in wds.WebDataset(str(shard), shardshuffle=False).decode()}
    assert theirs == ours


def test_data_index_for_shards_from_elsewhere_then_truncation_is_found(demo_shards, tmp_path):
    d = tmp_path / "elsewhere"
    d.mkdir()
    for p in list_shards(demo_shards):
        shutil.copy(p, d / p.name)  # tars only: no index, no manifest
    res = runner.invoke(app, ["data", "index", str(d), "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    n = len(list_shards(d))
    assert rep["built"] == n and rep["reused"] == 0 and rep["manifest"] == "written"
    assert rep["docs"] == Manifest.load(demo_shards).samples
    for info, p in zip(Manifest.load(d).shards, list_shards(d)):
        assert info.index_sha256 == sha256_file(index_path(p))  # same bytes as written at import
        assert index_path(p).read_bytes() == index_path(demo_shards / p.name).read_bytes()
    again = json.loads(runner.invoke(app, ["data", "index", str(d), "--json"]).stdout)
    assert again["built"] == 0 and again["reused"] == n and again["manifest"] == "unchanged"
    # A clean cut between two samples: a valid-looking archive, found against the manifest.
    victim = list_shards(d)[1]
    data = victim.read_bytes()
    headers = [i for i in range(0, len(data), 512) if data[i + 257 : i + 262] == b"ustar"]
    victim.write_bytes(data[: headers[len(headers) // 2]])
    rep = json.loads(runner.invoke(app, ["data", "index", str(d), "--json"]).stdout)
    lost = Manifest.load(d).shards[1].samples - len(headers) // 4
    assert rep["built"] == 1 and rep["counters"]["lost_documents"] == lost and rep["counters"]["truncated"] == 1
    res = runner.invoke(app, ["data", "index", str(d), "--strict"])
    assert res.exit_code == 2 and victim.name in res.output


def test_show_prints_samples_of_a_language(demo_shards):
    res = runner.invoke(app, ["data", "show", str(demo_shards), "--lang", "ja", "-n", "3", "--json"])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout)["samples"]
    texts = {s.id: s for p in list_shards(demo_shards) for s in iter_samples(p)}
    assert len(shown) == 3 and all(s["lang"] == "ja" for s in shown)
    for s in shown:
        assert s["url"] == texts[s["id"]].meta["url"] and texts[s["id"]].text.startswith(s["head"][0])
    res = runner.invoke(app, ["data", "show", str(demo_shards), "-n", "2", "--lines", "1"])
    assert res.exit_code == 0 and res.output.count("lang=") == 2
    res = runner.invoke(app, ["data", "show", str(demo_shards), "--lang", "tlh"])
    assert res.exit_code == 2 and "no sample with language 'tlh'" in res.output


def test_data_index_split_over_ranks_gives_the_single_rank_manifest(demo_shards, tmp_path, monkeypatch):
    """RANK/WORLD_SIZE: each rank indexes every 2nd shard, the last one writes the manifest, which
    equals a one-rank run's; a part that no longer matches its files is not merged."""
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        d.mkdir()
        for p in list_shards(demo_shards):
            shutil.copy(p, d / p.name)
    assert json.loads(runner.invoke(app, ["data", "index", str(one), "--json"]).stdout)["manifest"] == "written"
    shards = list_shards(two)
    assert len(shards) >= 3
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    rep = json.loads(runner.invoke(app, ["data", "index", str(two), "--json"]).stdout)
    assert (rep["rank"], rep["world_size"], rep["shards"], rep["manifest"]) == (1, 2, len(shards) // 2, "left to the last rank")
    assert [index_path(p).is_file() for p in shards] == [i % 2 == 1 for i in range(len(shards))]
    assert not (two / "manifest.json").exists()
    monkeypatch.setenv("RANK", "0")
    os.utime(shards[1], ns=(1, 1))  # a shard of rank 1 rewritten (same size) after it ran ...
    index_path(shards[1]).write_bytes(index_path(shards[1]).read_bytes())  # ... and its index: part stale
    rep = json.loads(runner.invoke(app, ["data", "index", str(two), "--json"]).stdout)
    assert rep["manifest"] == "left to the last rank" and not (two / "manifest.json").exists()
    monkeypatch.setenv("RANK", "1")
    assert json.loads(runner.invoke(app, ["data", "index", str(two), "--json"]).stdout)["manifest"] == "written"
    assert Manifest.load(two).shards == Manifest.load(one).shards
    assert not (two / "index.d").exists()
