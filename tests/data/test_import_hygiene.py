"""Import hygiene: keys unique and exact duplicates removed across ranks, long documents split or
dropped, short ones dropped, and loud failures for a wrong field mapping. Two ranks run one after
the other in this process (RANK/WORLD_SIZE given explicitly), as torchrun would run them."""
from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from glotta.data.importer import ImportConfig, run_import, split_text
from glotta.data.manifest import Manifest
from glotta.data.shards import iter_samples, list_shards
from glotta.errors import DataError

SENT = "The quick brown fox jumps over the lazy dog near the riverbank. "
DE = "Der schnelle braune Fuchs springt über den faulen Hund am Flussufer. "


def write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def two_files(tmp_path):
    a = [
        {"id": "dup_1", "body": DE * 3, "language": "de", "url": "https://a.example/1"},
        {"id": "same", "body": SENT * 2, "language": "EN", "url": "https://a.example/2"},
        {"id": "same", "body": SENT * 4, "language": "en-US", "url": "https://a.example/3"},  # id repeated in a rank
        {"id": "big", "body": SENT * 400, "language": "en", "url": "https://a.example/4"},  # 25,600 chars
        {"id": "tiny", "body": "ok", "language": "en"},
        {"id": "x1", "body": f"{SENT}   alpha", "language": "en"},
    ]
    b = [
        {"id": "dup_1", "body": DE * 5, "language": "de_DE", "url": "https://b.example/1"},  # id from rank 0
        {"id": "copy", "body": SENT * 2, "language": "en", "url": "https://b.example/2"},  # text from rank 0
        {"id": "x2", "body": f"{SENT} alpha", "language": "en"},  # same as x1 up to whitespace
        {"id": "b3", "body": DE * 7, "language": "de"},
    ]
    return write(tmp_path / "a.jsonl", a), write(tmp_path / "b.jsonl", b)


def cfg(inputs, out, **kw):
    base = dict(text_field="body", lang_field="language", max_chars=10_000, min_chars=10, shard_samples=3, max_skip_share=0.2)
    return ImportConfig(inputs=[str(i) for i in inputs], out=str(out), **{**base, **kw})


def samples(out):
    return [s for p in list_shards(out) for s in iter_samples(p)]


def test_two_ranks_unique_keys_no_duplicates_and_split(tmp_path):
    files, out = two_files(tmp_path), tmp_path / "out"
    first = run_import(cfg(files, out), rank=0, world_size=2)
    assert not first.manifest_written  # rank 1 is not done yet
    second = run_import(cfg(files, out), rank=1, world_size=2)
    assert second.manifest_written
    docs = samples(out)
    keys = [s.key for s in docs]
    assert len(keys) == len(set(keys))  # unique over the whole set, not only per shard
    texts = [re.sub(r"\s+", " ", s.text).strip() for s in docs]
    assert len(texts) == len(set(texts))
    assert {"dup_1", "dup_1_2", "same", "same_2"} <= set(keys)
    parts = [s for s in docs if s.key.startswith("big")]
    assert all(len(s.text) <= 10_000 for s in parts) and sum(len(s.text) for s in parts) < 25_600
    c = Manifest.load(out).meta["counters"]
    assert c["split_docs"] == 1 and c["split_parts"] == 3
    assert c["too_short"] == 1
    assert c["duplicate_ids"] == 1 and c["duplicate_ids_across_ranks"] == 1
    # across ranks: "copy" (= rank 0's "same") and "x2" (= "x1" up to whitespace)
    assert c["duplicate_docs_across_ranks"] == 2
    assert Manifest.load(out).samples == len(docs)
    assert Counter(s.lang for s in docs) == {"en": len(docs) - 3, "de": 3}  # EN, en-US, de_DE normalized
    before = (out / "manifest.json").read_bytes()
    again = run_import(cfg(files, out), rank=1, world_size=2)  # complete: verified, nothing redone
    assert again.status == "nothing to do" and (out / "manifest.json").read_bytes() == before


def test_long_documents_dropped_when_asked(tmp_path):
    files, out = two_files(tmp_path), tmp_path / "out"
    run_import(cfg(files, out, long_docs="drop", max_skip_share=0.5), rank=0, world_size=1)
    c = Manifest.load(out).meta["counters"]
    assert c["too_long_dropped"] == 1 and "split_docs" not in c
    assert not any(s.key.startswith("big") for s in samples(out))


def test_wrong_text_field_fails_loudly(tmp_path):
    files, out = two_files(tmp_path), tmp_path / "out"
    with pytest.raises(DataError, match=r"10 of 10 records skipped \(missing_text=10\).*--text-field 'text'"):
        run_import(cfg(files, out, text_field="text"), rank=0, world_size=1)
    assert not (out / "manifest.json").exists()


def test_mapped_field_missing_from_most_records_fails(tmp_path):
    files, out = two_files(tmp_path), tmp_path / "out"
    with pytest.raises(DataError, match="--url-field 'link' is missing from 9 of 10 records"):
        run_import(cfg(files, out, url_field="link", max_skip_share=0.5), rank=0, world_size=1)


def test_split_text_cuts_at_boundaries():
    text = "para one.\n\n" + "word " * 30 + "\n\nlast"
    pieces = split_text(text, 60)
    assert all(len(p) <= 60 for p in pieces)
    assert pieces[0].startswith("para one.") and pieces[-1].endswith("last")
    assert "".join(pieces).replace(" ", "").replace("\n", "") == text.replace(" ", "").replace("\n", "")
    assert split_text("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]  # no boundary: exact cuts


def test_near_duplicates_removed_with_minhash(tmp_path):
    base = SENT * 6 + DE * 6
    rows = [
        {"id": "orig", "body": base, "language": "en"},
        {"id": "edited", "body": base.replace("lazy", "sleepy", 1) + " Thanks.", "language": "en"},  # a light edit
        {"id": "other", "body": DE * 3 + "Ganz anders: ein eigener Text über Katzen und Regen.", "language": "de"},
    ]
    src = write(tmp_path / "near.jsonl", rows)
    run_import(cfg([src], tmp_path / "exact"), rank=0, world_size=1)
    assert Manifest.load(tmp_path / "exact").samples == 3  # exact dedup alone keeps the edited copy
    run_import(cfg([src], tmp_path / "near", near_dedup=True), rank=0, world_size=1)
    assert {s.key for s in samples(tmp_path / "near")} == {"orig", "other"}
    assert Manifest.load(tmp_path / "near").meta["counters"]["near_duplicate_docs"] == 1
