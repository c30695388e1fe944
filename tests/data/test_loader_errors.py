"""Bad input: clear errors naming the culprit, or counted skips; never a hang."""
from __future__ import annotations

import io
import shutil
import tarfile

import pytest

from glotta.data import list_shards
from glotta.data.loader import TokenLoader
from glotta.errors import ConfigError, DataError

DROP = {"method": "natural", "exhausted": "drop"}


def _copy(demo_shards, tmp_path):
    out = tmp_path / "shards"
    out.mkdir()
    for p in list_shards(demo_shards):
        shutil.copy(p, out / p.name)  # no manifest: the loader lists *.tar
    return out


def test_tokenizer_missing_or_not_sentencepiece(demo_shards, tmp_path):
    with pytest.raises(DataError, match="tokenizer file not found: .*nope.model"):
        TokenLoader(str(demo_shards), str(tmp_path / "nope.model"), seq_len=64, micro_batch_size=1)
    bogus = tmp_path / "vocab.model"
    bogus.write_text("this is a vocabulary listing, not a model\n")
    with pytest.raises(DataError, match="vocab.model: not a SentencePiece model"):
        TokenLoader(str(demo_shards), str(bogus), seq_len=64, micro_batch_size=1)


def test_sources_with_the_same_shard_name_are_refused_naming_them(demo_shards, sp_model, tmp_path):
    # Exclude lists and CAT scores name documents `shard.tar/KEY`, so two sources may not both
    # hold a shard of the same name; the error lists the names (a shard set and its copy).
    copy = _copy(demo_shards, tmp_path)
    names = sorted(p.name for p in list_shards(copy))
    with pytest.raises(DataError, match=f"shard names must be unique across sources.*{names[0]}"):
        TokenLoader([str(demo_shards), str(copy)], str(sp_model), seq_len=64, micro_batch_size=1)
    TokenLoader([str(demo_shards)], str(sp_model), seq_len=64, micro_batch_size=1).close()


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"seq_len": 1}, "loader.seq_len"),
        ({"micro_batch_size": 0}, "loader.micro_batch_size"),
        ({"mix": {"method": "explicit", "weights": {"en": 0.0, "de": 0.0}}}, "sum to a positive number"),
        ({"mix": {"method": "temperature", "alpha": 0}}, "loader.mix.alpha"),
        ({"global_batch_size": 3, "micro_batch_size": 2}, "multiple of micro_batch_size"),
        ({"dp_size": 2, "mix": DROP}, "loader.num_batches"),
        ({"packing": "greedy"}, "loader.packing"),
    ],
)
def test_bad_config_is_one_clear_error(demo_shards, sp_model, kw, match):
    args = dict(seq_len=64, micro_batch_size=1) | kw
    with pytest.raises(ConfigError, match=match):
        TokenLoader(str(demo_shards), str(sp_model), **args)


def test_empty_language_is_named(demo_shards, sp_model, tmp_path):
    with pytest.raises(DataError, match=r"\['sw'\]"):
        TokenLoader(str(demo_shards), str(sp_model), 64, 1, mix={"langs": ["en", "sw"]})
    ids = [f"{p.name}" for p in list_shards(demo_shards)]
    ex = tmp_path / "all.txt"
    ex.write_text("\n".join(ids))
    with pytest.raises(DataError, match="no documents to load"):
        TokenLoader(str(demo_shards), str(sp_model), 64, 1, exclude=[str(ex)])
    with pytest.raises(DataError, match="exclude list not found"):
        TokenLoader(str(demo_shards), str(sp_model), 64, 1, exclude=[str(tmp_path / "missing.txt")])


def test_corrupt_shard_mid_stream_is_counted_or_strict(demo_shards, sp_model, tmp_path):
    shards = _copy(demo_shards, tmp_path)
    victim = sorted(shards.glob("*.tar"))[1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # cut mid-stream: the first half of its documents survive
    with TokenLoader(str(shards), str(sp_model), 512, 2, mix=DROP) as ld:
        n = sum(1 for _ in ld)
        st = ld.stats()
    assert n > 0 and st["skipped"]["truncated"] == 1
    assert 600 < st["documents"] < 800
    with pytest.raises(DataError, match=victim.name):
        TokenLoader(str(shards), str(sp_model), 512, 2, mix=DROP, strict=True)


def _add(tar, name, payload: bytes):
    ti = tarfile.TarInfo(name)
    ti.size = len(payload)
    tar.addfile(ti, io.BytesIO(payload))


def test_undecodable_text_is_replaced_and_counted(demo_shards, sp_model, tmp_path, multilingual_text):
    shards = _copy(demo_shards, tmp_path)
    with tarfile.open(shards / "extra-000000.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        good = multilingual_text["de"].encode()
        _add(tar, "bad0.txt", good[:20] + b"\xff\xfe" + good[20:])  # invalid UTF-8 in German text
        _add(tar, "bad0.json", b'{"lang": "de"}')
        _add(tar, "blank.txt", b"   \n")
        _add(tar, "blank.json", b'{"lang": "de"}')
    with TokenLoader(str(shards), str(sp_model), 512, 2, mix=DROP) as ld:
        seen = {d for b in ld for d in b["doc_ids"] if d}
        st = ld.stats()
    assert "extra-000000.tar/bad0" in seen and "extra-000000.tar/blank" not in seen
    assert st["skipped"]["utf8_replaced"] == 1 and st["skipped"]["empty_text"] == 1
    with TokenLoader(str(shards), str(sp_model), 512, 2, mix=DROP, strict=True) as ld:
        with pytest.raises(DataError, match="extra-000000.tar/bad0: invalid UTF-8"):
            for _ in ld:
                pass


def test_shard_changed_under_a_running_loader_fails_in_the_worker(demo_shards, sp_model, tmp_path):
    shards = _copy(demo_shards, tmp_path)
    with TokenLoader(str(shards), str(sp_model), 128, 2, mix=DROP, num_workers=2) as ld:
        for p in shards.glob("*.tar"):
            p.write_bytes(p.read_bytes()[:1024])  # every shard cut to its first document
        with pytest.raises(DataError, match="cannot re-read|shard changed"):
            for _ in ld:
                pass


def test_state_mismatch_names_what_changed(demo_shards, sp_model):
    a = TokenLoader(str(demo_shards), str(sp_model), 64, 2, global_batch_size=4)
    next(iter(a))
    state = a.state_dict()
    b = TokenLoader(str(demo_shards), str(sp_model), 128, 2, global_batch_size=4)
    with pytest.raises(DataError, match=r"seq_len: saved 64, now 128"):
        b.load_state_dict(state)
    with pytest.raises(DataError, match="version"):
        a.load_state_dict(state | {"version": 99})
    # A rank of another layout needs the lanes it now owns, at a step boundary.
    r0 = TokenLoader(str(demo_shards), str(sp_model), 64, 2, dp_rank=0, dp_size=2, global_batch_size=4, num_batches=9)
    next(iter(r0))
    c = TokenLoader(str(demo_shards), str(sp_model), 64, 1, dp_rank=3, dp_size=4, global_batch_size=4, num_batches=9)
    with pytest.raises(DataError, match="states of all ranks"):
        c.load_state_dict(r0.state_dict())
    with pytest.raises(DataError, match="mid-step"):
        c.load_state_dict(state)  # saved by one rank holding 4 lanes after half a step


def test_same_size_change_is_found_by_the_key_check(demo_shards, sp_model, tmp_path):
    # The index is kept (same size), but other samples now sit at its offsets: the C++ key check
    # (keys passed as one blob per shard) must catch it and name the key it expected.
    shards = _copy(demo_shards, tmp_path)
    TokenLoader(str(shards), str(sp_model), 128, 2, mix=DROP).close()  # writes the indexes
    a, b = sorted(shards.glob("*.tar"))[:2]
    size = a.stat().st_size
    other = b.read_bytes()[:size]
    a.write_bytes(other + bytes(size - len(other)))
    with TokenLoader(str(shards), str(sp_model), 128, 2, mix=DROP, num_workers=1) as ld:
        with pytest.raises(DataError, match=rf"{a.name}: expected document '[^']+' at offset \d+ .*changed after indexing"):
            for _ in ld:
                pass


def test_a_text_of_another_size_under_the_same_key_is_found_by_the_size_check(demo_shards, sp_model, tmp_path):
    # One text a byte shorter, in the same number of tar blocks: every key, offset and the shard's
    # size stay as indexed, so the index is reused and only the text size (read_texts compares it
    # with the index's nbytes) can tell. Before, the shorter text was read silently.
    shards = _copy(demo_shards, tmp_path)
    TokenLoader(str(shards), str(sp_model), 128, 2, mix=DROP).close()  # writes the indexes
    victim = sorted(shards.glob("*.tar"))[0]
    size = victim.stat().st_size
    with tarfile.open(victim) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    edited = next(m.name for m, data in members if m.name.endswith(".txt") and len(data) % 512 != 1)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for m, data in members:
            if m.name == edited:
                data = data[:-1]
                m.size = len(data)
            tf.addfile(m, io.BytesIO(data))
    blob = buf.getvalue()[:size]
    assert len(blob) == size and blob.rstrip(b"\0") != victim.read_bytes().rstrip(b"\0")
    victim.write_bytes(blob)
    with TokenLoader(str(shards), str(sp_model), 128, 2, mix=DROP, num_workers=1) as ld:
        with pytest.raises(DataError, match=rf"{victim.name}: expected document '{edited[:-4]}' at offset \d+ \(its text is \d+ bytes, the index says \d+\)"):
            for _ in ld:
                pass


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_a_shard_cut_short_while_the_loader_reads_it_is_an_error_naming_it(demo_shards, sp_model, tmp_path, worker_type):
    # Indexed at construction, then truncated under the running loader: workers pread (a reader
    # opened before the cut checks the file's size when a call opens it; one opened after finds no
    # sample at the indexed offset), so the cut is a DataError naming the shard, never a crash of
    # the trainer (a mapped read past the end would be SIGBUS) or documents silently missing.
    shards = _copy(demo_shards, tmp_path)
    with TokenLoader(str(shards), str(sp_model), 128, 2, mix=DROP, num_workers=2, worker_type=worker_type) as ld:
        victim = max(sorted(shards.glob("*.tar")), key=lambda p: p.stat().st_size)
        with open(victim, "r+b") as f:
            f.truncate(victim.stat().st_size // 2)
        with pytest.raises(DataError, match=rf"{victim.name}: .*(shrank to \d+ bytes|changed after indexing)"):
            for _ in ld:
                pass
