"""heads.idx (data/set_heads.py): every shard's index header in one file. Start-up from it must
give exactly the corpus index the headers give, and it must never be trusted once anything it
describes changed or once it is damaged."""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import struct

import numpy as np
import pytest
from typer.testing import CliRunner

from case_limit import run_cases  # tests/data: a forked child, a time limit per case
from glotta.data.corpus_index import _CACHE, build_corpus_index, open_corpus_index
from glotta.data.demo_corpus import build_demo_corpus
from glotta.data.loader import TokenLoader
from glotta.data.set_heads import HEADS, SetHeads, load_current
from glotta.data.shards import shard_entries
from glotta.errors import DataError
from glotta.launch.cli import app

CASE_LIMIT = 10.0  # seconds per damaged file; a healthy start-up takes milliseconds
HEADER_KEYS = ("shard", "shard_bytes", "docs", "samples", "langs", "lang_docs", "lang_bytes", "counters", "arrays")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """~30 shards of 8 documents in 10 languages (most shards hold several languages)."""
    out = tmp_path_factory.mktemp("heads_set")
    build_demo_corpus(out, langs=["en", "de", "fr", "es", "ru", "el", "ja", "zh", "hi", "ar"], max_docs_per_lang=24, shard_samples=8)
    return out


@pytest.fixture
def shard_set(pristine, tmp_path):
    d = tmp_path / "set"
    shutil.copytree(pristine, d)
    (d / HEADS).unlink(missing_ok=True)
    _CACHE.clear()
    yield d
    _CACHE.clear()


def _open(d, exclude=frozenset(), strict=False):
    _CACHE.clear()  # each start-up reads the files, as a fresh process does
    return open_corpus_index([str(d)], set(exclude), strict)


def _view(ix) -> tuple:
    """Everything a loader reads from a corpus index."""
    tables = {k: (t.shards.tolist(), t.ends.tolist(), t.local.tolist(), t.nbytes, t.start.tolist()) for k, t in ix.tables.items()}
    kept = {s: {ll: v.tolist() for ll, v in d.items()} for s, d in ix.kept.items()}
    per_shard = [None if i is None else (i.layout, i.docs, {k: i.header[k] for k in HEADER_KEYS}) for i in ix.indexes]
    return ix.shards, ix.names, tables, kept, dict(ix.counters), ix.shard_list_hash(), per_shard, list(ix.doc_ids())


def _headers_view(d, exclude=frozenset()) -> tuple:
    """The same set read header by header (no heads.idx involved)."""
    entries = [(os.path.join(d, p.name), e) for p, e in shard_entries(d)]
    return _view(build_corpus_index(entries, set(exclude)))


def test_the_first_start_writes_heads_idx_and_the_next_reads_the_same_index_and_batches(shard_set, sp_model):
    first = _open(shard_set)
    assert first.read_from == ["headers"] and (shard_set / HEADS).is_file()
    second = _open(shard_set)
    assert second.read_from == ["heads.idx"]
    assert _view(second) == _view(first) == _headers_view(shard_set)

    def batches():
        _CACHE.clear()
        with TokenLoader(str(shard_set), sp_model, 64, 2, mix={"method": "unimax", "exhausted": "drop"}, num_workers=1) as ld:
            out = [(b["tokens"].numpy().tobytes(), list(b["doc_ids"])) for b in ld]
            return out, ld.index.read_from, ld.stats()

    with_heads, read_from, stats = batches()
    assert read_from == ["heads.idx"]
    (shard_set / HEADS).unlink()
    without, read_from, stats2 = batches()
    assert read_from == ["headers"] and with_heads == without and stats == stats2 and len(with_heads) > 10


def test_exclusions_apply_the_same_to_heads_idx(shard_set):
    _open(shard_set)
    names = [p.name for p, _ in shard_entries(shard_set)]
    keys = [x.split("/", 1)[1] for x in _open(shard_set).doc_ids() if x.startswith(names[3] + "/")]
    exclude = {names[0], f"{names[3]}/{keys[0]}", f"{names[3]}/{keys[-1]}", f"{names[5]}/no-such-key"}
    ix = _open(shard_set, exclude)
    assert ix.read_from == ["heads.idx"]
    assert ix.counters["excluded_shards"] == 1 and ix.counters["excluded"] == 2 and ix.indexes[0] is None
    assert _view(ix) == _headers_view(shard_set, exclude)
    assert not any(x.startswith(names[0] + "/") for x in ix.doc_ids())


@pytest.mark.parametrize("change", ["shard_touched", "index_replaced", "manifest_touched", "shard_swapped", "index_removed"])
def test_heads_idx_is_not_used_once_a_shard_its_index_or_the_manifest_changed(shard_set, change):
    _open(shard_set)
    names = [p.name for p, _ in shard_entries(shard_set)]
    a, b = shard_set / names[2], shard_set / names[7]
    if change == "shard_touched":  # same bytes, a new mtime: could be new content of the same size
        st = a.stat()
        os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    elif change == "index_replaced":
        shutil.copy(f"{a}.idx", shard_set / "x")
        os.replace(shard_set / "x", f"{a}.idx")
    elif change == "manifest_touched":
        st = (shard_set / "manifest.json").stat()
        os.utime(shard_set / "manifest.json", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    elif change == "shard_swapped":  # another shard's documents under this name (its index is rebuilt)
        shutil.copy(b, shard_set / "x")
        os.replace(shard_set / "x", a)
    else:
        os.unlink(f"{a}.idx")
    again = _open(shard_set)
    assert again.read_from == ["headers"]
    assert _view(again) == _headers_view(shard_set)
    third = _open(shard_set)  # written again for the changed set
    assert third.read_from == ["heads.idx"] and _view(third) == _view(again)


def test_strict_start_up_does_not_take_recorded_problems_from_heads_idx(shard_set):
    # A shard cut at a 512-byte boundary: its index is rebuilt and the manifest says documents
    # were lost. Not strict: counted (from the headers, then from heads.idx alike). Strict: the
    # header scan runs and fails naming the shard, as without heads.idx.
    names = [p.name for p, _ in shard_entries(shard_set)]
    victim = shard_set / names[4]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2 // 512 * 512])
    loose = _open(shard_set)
    assert loose.counters["lost_documents"] > 0
    again = _open(shard_set)
    assert again.read_from == ["heads.idx"] and again.counters == loose.counters
    with pytest.raises(DataError, match=names[4]):
        _open(shard_set, strict=True)


def test_a_set_where_heads_idx_cannot_be_written_starts_from_the_headers(shard_set, caplog):
    # A folder in its place (the test runs as root, for whom a read-only folder is writable):
    # neither read nor written, said so, and no temporary file left behind.
    (shard_set / HEADS).mkdir()
    for _ in range(2):
        ix = _open(shard_set)
        assert ix.read_from == ["headers"] and _view(ix) == _headers_view(shard_set)
    assert "could not write heads.idx" in caplog.text
    assert not [p.name for p in shard_set.iterdir() if ".tmp-" in p.name]


def test_glotta_data_index_writes_heads_idx(shard_set):
    res = CliRunner().invoke(app, ["data", "index", str(shard_set)])
    assert res.exit_code == 0, res.output
    assert "heads.idx written" in res.output
    assert load_current(str(shard_set)) is not None
    assert _view(_open(shard_set)) == _headers_view(shard_set)
    written = (shard_set / HEADS).read_bytes()
    (shard_set / HEADS).unlink()
    assert _open(shard_set).read_from == ["headers"] and (shard_set / HEADS).read_bytes() == written  # what a loader writes


def _recrafted(blob: bytes, edit) -> bytes:
    """heads.idx with its JSON header changed by `edit` and its sha256 made to match: what the
    checksum cannot catch must be caught by the consistency checks."""
    (h,) = struct.unpack("<Q", blob[8:16])
    header = json.loads(blob[16 : 16 + h])
    edit(header)
    raw = json.dumps(header, sort_keys=True).encode()
    head = blob[:8] + struct.pack("<Q", len(raw)) + raw
    pad = (len(head) + 7) // 8 * 8 - len(head)
    body = blob[(16 + h + 7) // 8 * 8 : -32]
    out = head + b"\0" * pad + body
    return out + hashlib.sha256(out).digest()


def _resigned_body(blob: bytes, edit) -> bytes:
    """heads.idx with its arrays changed by `edit(SetHeads)` and the sha256 made to match."""
    heads = SetHeads.from_bytes(blob, "")
    for k in ("stat", "docs", "samples", "arrays", "pair_end", "pair_lang", "pair_docs", "pair_bytes"):
        setattr(heads, k, np.array(getattr(heads, k)))
    edit(heads)
    return heads.to_bytes()


def _child(conn, d: str, cases: list) -> None:
    for i, (name, blob) in enumerate(cases):
        try:
            with open(os.path.join(d, HEADS), "wb") as f:
                f.write(blob)
            ix = _open(d)
            conn.send((i, {"from": ix.read_from[0], "view": _view(ix)}))
        except Exception as e:  # noqa: BLE001 - any exception is what this test reports
            conn.send((i, {"error": f"{type(e).__name__}: {e}"}))


def test_a_damaged_heads_idx_is_never_trusted(shard_set):
    _open(shard_set)
    good = (shard_set / HEADS).read_bytes()
    want = _headers_view(shard_set)
    rng = random.Random(12)
    cases: list[tuple[str, bytes]] = []
    for k in range(40):
        cut = rng.randrange(len(good))
        cases.append((f"cut at {cut}", good[:cut]))
        flipped = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            flipped[rng.randrange(len(good))] ^= 1 << rng.randrange(8)
        cases.append((f"flips {k}", bytes(flipped)))
    cases += [("empty", b""), ("only magic", good[:8]), ("appended", good + b"\0" * 8), ("huge header length", good[:8] + struct.pack("<Q", 1 << 62) + good[16:])]

    def crafted(name, edit):
        cases.append((name, _recrafted(good, edit)))

    crafted("more shards", lambda h: h.update(shards=h["shards"] + 1))
    crafted("fewer shards", lambda h: h.update(shards=h["shards"] - 1))
    crafted("more pairs", lambda h: h.update(pairs=h["pairs"] + 1))
    crafted("a language less", lambda h: h.update(langs=h["langs"][:-1]))
    crafted("negative offset", lambda h: h.update(at=[-8] + h["at"][1:]))
    crafted("names cut", lambda h: h.update(names_bytes=h["names_bytes"] - 3))
    crafted("another version", lambda h: h.update(version=2))
    crafted("counters of no shard", lambda h: h.update(counters={"100000": {"missing_text": 1}}))
    crafted("a counter that is not a number", lambda h: h.update(counters={"0": {"missing_text": "x"}}))
    cases.append(("pairs out of order", _resigned_body(good, lambda s: s.pair_end.__setitem__(0, s.pair_end[1] + 1))))
    cases.append(("a shard's languages do not add up", _resigned_body(good, lambda s: s.pair_docs.__setitem__(0, s.pair_docs[0] + 1))))
    cases.append(("a negative count", _resigned_body(good, lambda s: s.pair_bytes.__setitem__(3, -5))))
    cases.append(("a language past the list", _resigned_body(good, lambda s: s.pair_lang.__setitem__(1, len(s.langs)))))
    cases.append(("intact", good))

    results = run_cases(_child, (str(shard_set), cases), [n for n, _ in cases], CASE_LIMIT, "start-up from heads.idx")
    errors = {cases[i][0]: r["error"] for i, r in results.items() if "error" in r}
    assert not errors
    wrong = [cases[i][0] for i, r in results.items() if r["view"] != want]
    assert not wrong, f"a damaged heads.idx changed the corpus index: {wrong[:5]}"
    trusted = [cases[i][0] for i, r in results.items() if r["from"] == "heads.idx"]
    assert trusted == ["intact"]  # every damaged file was noticed (and the headers read instead)
