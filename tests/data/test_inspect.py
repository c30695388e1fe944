"""glotta data inspect: per-language figures from the manifest, --verify, scanning without a manifest."""
from __future__ import annotations

import shutil

import pytest

from glotta.data import Manifest
from glotta.data.inspect import inspect_shards
from glotta.errors import DataError


def test_inspect_from_manifest_matches_the_shards(demo_shards):
    report = inspect_shards(demo_shards, verify=True)
    m = Manifest.load(demo_shards)
    assert report.source == "manifest" and report.verified
    assert report.shards == len(m.shards) and report.samples == m.samples and report.bytes == m.bytes
    rows = report.rows()
    assert {r["lang"] for r in rows} == {"en", "de", "fr", "es", "ru", "el", "ja", "zh", "hi", "ar"}
    assert sum(r["docs_share"] for r in rows) == pytest.approx(1.0)
    assert sum(r["bytes_share"] for r in rows) == pytest.approx(1.0)
    assert [r["bytes"] for r in rows] == sorted((r["bytes"] for r in rows), reverse=True)
    j = report.to_json()
    assert j["docs"] == m.samples and j["languages"] == 10


def test_scan_without_manifest_gives_the_same_figures(demo_shards, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(demo_shards, copy)
    (copy / "manifest.json").unlink()
    scanned = inspect_shards(copy)
    assert scanned.source == "scan" and not scanned.verified
    assert scanned.langs == Manifest.load(demo_shards).langs()
    assert scanned.counters["samples"] == scanned.samples


def test_verify_names_the_changed_shard(demo_shards, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(demo_shards, copy)
    victim = sorted(copy.glob("*.tar"))[1]
    data = bytearray(victim.read_bytes())
    data[1000] ^= 0xFF  # same size, different content: only sha256 catches it
    victim.write_bytes(bytes(data))
    assert inspect_shards(copy).source == "manifest"  # without --verify: the manifest is trusted (fast)
    with pytest.raises(DataError, match=f"{victim.name}: sha256 does not match"):
        inspect_shards(copy, verify=True)
    victim.unlink()
    with pytest.raises(DataError, match=f"{victim.name}: listed in manifest.json but missing"):
        inspect_shards(copy, verify=True)


def test_not_a_shard_directory(tmp_path):
    with pytest.raises(DataError, match="shard directory not found"):
        inspect_shards(tmp_path / "missing")
    with pytest.raises(DataError, match="no \\*.tar shards"):
        inspect_shards(tmp_path)
