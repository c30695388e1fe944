"""The C++ tar reader against Python's tarfile, webdataset's key rules, and damaged shards."""
from __future__ import annotations

import io
import json
import tarfile
from collections import Counter

import numpy as np
import pytest

from glotta._native import TarError, TarReader, read_texts
from glotta.data import Manifest, Sample, ShardWriter, iter_samples, list_shards
from glotta.errors import DataError


def make_tar(path, members, fmt=tarfile.PAX_FORMAT):
    """members: [(name, bytes)] written in order (so tests control adjacency)."""
    with tarfile.open(path, "w", format=fmt) as tf:
        for name, payload in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(payload)
            tf.addfile(ti, io.BytesIO(payload))
    return path


def read_all(path, batch=3):
    r = TarReader(str(path))
    out = []
    while chunk := r.read(batch):
        out.extend(chunk)
    return out, r


def tarfile_samples(path):
    """Reference grouping with Python's tarfile and webdataset's rule (key = up to first dot of basename)."""
    samples = []
    with tarfile.open(path) as tf:
        for m in tf:
            if not m.isreg():
                continue
            d, _, base = m.name.rpartition("/")
            stem, _, ext = base.partition(".")
            key = f"{d}/{stem}" if d else stem
            if samples and samples[-1][0] == key:
                samples[-1][1][ext.lower()] = tf.extractfile(m).read()
            else:
                samples.append((key, {ext.lower(): tf.extractfile(m).read()}))
    return samples


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_equals_tarfile_with_long_names(tmp_path, fmt, multilingual_text):
    members = []
    for i, (lang, text) in enumerate(multilingual_text.items()):
        # ustar can only hold long paths through its 155-byte prefix; pax/GNU through extra headers.
        d = "/".join(["deep"] * (12 if fmt == tarfile.USTAR_FORMAT else 40))
        key = f"{d}/{lang}_{'x' * (60 if fmt == tarfile.USTAR_FORMAT else 150)}_{i}"
        members += [(f"{key}.txt", text.encode()), (f"{key}.seg.JSON", json.dumps({"lang": lang}).encode())]
    path = make_tar(tmp_path / "long.tar", members, fmt)
    ours, reader = read_all(path)
    assert [(k, f) for k, f in ours] == tarfile_samples(path)
    assert len(ours) == len(multilingual_text)
    assert "seg.json" in ours[0][1]  # extension is everything after the first dot, lower-cased
    assert reader.done and not any(reader.counters().values())


def test_large_member_and_binary_payload(tmp_path):
    blob = bytes(range(256)) * 40_000  # 10 MB, crosses many blocks
    path = make_tar(tmp_path / "big.tar", [("a.bin", blob), ("a.txt", b"t"), ("b.txt", b"")])
    ours, _ = read_all(path)
    assert ours == [("a", {"bin": blob, "txt": b"t"}), ("b", {"txt": b""})]


def test_offset_resume_gives_the_rest(tmp_path, multilingual_text):
    members = [(f"k{i:03d}.txt", f"{i} {t}".encode()) for i, t in enumerate(list(multilingual_text.values()) * 4)]
    path = make_tar(tmp_path / "r.tar", members)
    r = TarReader(str(path))
    first = r.read(5)
    off = r.offset
    r2 = TarReader(str(path))
    r2.seek(off)
    rest = []
    while chunk := r2.read(4):
        rest.extend(chunk)
    assert [k for k, _ in first + rest] == [f"k{i:03d}" for i in range(len(members))]
    with pytest.raises(ValueError, match="bad offset"):
        r2.seek(off + 1)


def test_skips_meta_dirs_unsafe_and_extensionless_members_with_counters(tmp_path):
    path = tmp_path / "odd.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        d = tarfile.TarInfo("somedir")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
        for name, payload in [
            ("__index__", b"meta"),
            ("../escape.txt", b"evil"),
            ("/abs.txt", b"evil"),
            ("README", b"no extension"),
            ("ok.txt", b"fine"),
        ]:
            ti = tarfile.TarInfo(name)
            ti.size = len(payload)
            tf.addfile(ti, io.BytesIO(payload))
    ours, reader = read_all(path)
    assert ours == [("ok", {"txt": b"fine"})]
    assert {k: v for k, v in reader.counters().items() if v} == {
        "skipped_unsafe_name": 2,
        "skipped_non_regular": 1,
        "skipped_no_extension": 1,
        "skipped_meta": 1,
    }
    assert any("../escape.txt" in w for w in reader.warnings())
    counters = Counter()
    assert [s.key for s in iter_samples(path, counters)] == ["ok"]
    assert counters["skipped_unsafe_name"] == 2
    with pytest.raises(DataError, match=r"odd\.tar.*unsafe member name"):
        list(iter_samples(path, strict=True))


def test_misplaced_and_duplicate_members_are_skipped_and_counted_not_the_rest(tmp_path):
    # webdataset would yield two partial samples for 'a'; one bad member used to end the shard.
    path = make_tar(
        tmp_path / "na.tar",
        [("a.txt", b"1"), ("b.txt", b"2"), ("a.json", b"{}"), ("c.txt", b"3"), ("c.txt", b"4"), ("d.txt", b"5")],
    )
    ours, reader = read_all(path)
    assert ours == [("a", {"txt": b"1"}), ("b", {"txt": b"2"}), ("c", {"txt": b"3"}), ("d", {"txt": b"5"})]
    c = reader.counters()
    assert c["misplaced_member"] == 1 and c["duplicate_member"] == 1
    assert any("na.tar at byte 2048" in w and "a.json" in w for w in reader.warnings())
    with pytest.raises(DataError, match=r"na\.tar at byte \d+: member 'a\.json' skipped"):
        list(iter_samples(path, strict=True))


def _good_shard(tmp_path, n=20, text="Ein kurzer deutscher Satz über Daten."):
    with ShardWriter(tmp_path, max_samples=1000) as w:
        for i in range(n):
            w.write(Sample(key=f"d{i:03d}", text=f"{text} {i}", meta={"lang": "de"}))
    Manifest(shards=w.written).save(tmp_path)
    return tmp_path / w.written[0].name


def _counted_then_strict(path, strict_match):
    """The samples and counters of a damaged shard read leniently; strict=True must raise."""
    counters = Counter()
    got = list(iter_samples(path, counters))
    with pytest.raises(DataError, match=strict_match):
        list(iter_samples(path, strict=True))
    return got, counters


def test_truncated_shard_yields_complete_samples_then_counts(tmp_path):
    path = _good_shard(tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2 + 100])
    got, counters = _counted_then_strict(cut, r"cut\.tar at byte \d+: .*truncated")
    assert 0 < len(got) < 20
    assert [s.text for s in got] == [f"Ein kurzer deutscher Satz über Daten. {i}" for i in range(len(got))]
    assert counters["truncated"] == 1


def test_corrupt_header_checksum(tmp_path):
    path = _good_shard(tmp_path)
    data = bytearray(path.read_bytes())
    # Flip a byte in the name field of a later header: the checksum no longer matches.
    headers = [i for i in range(0, len(data), 512) if data[i + 257 : i + 262] == b"ustar"]
    data[headers[10] + 3] ^= 0xFF
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    got, counters = _counted_then_strict(bad, "bad header checksum")
    # The damaged header (d005.txt) is skipped and the reader resumes at the next valid one:
    # d005 is a half sample (counted), every later sample is kept.
    assert [s.key for s in got] == [f"d{i:03d}" for i in range(20) if i != 5]
    assert counters["damaged"] == 1 and counters["missing_text"] == 1


def test_text_and_metadata_problems_are_counted(tmp_path):
    path = make_tar(
        tmp_path / "m.tar",
        [
            ("a.txt", "gültig".encode()),
            ("b.txt", b"caf\xe9 latin-1"),  # invalid UTF-8
            ("c.json", b'{"lang": "fr"}'),  # no .txt
            ("d.txt", b"texte"),
            ("d.json", b"{not json"),
            ("e.txt", b"ok"),
            ("e.json", b'["not", "an", "object"]'),
        ],
    )
    counters = Counter()
    got = {s.key: s.text for s in iter_samples(path, counters)}
    assert got == {"a": "gültig", "b": "caf\ufffd latin-1"}
    assert counters == Counter(samples=2, utf8_replaced=1, missing_text=1, bad_json=2, missing_json=2)
    counters = Counter()
    assert [s.key for s in iter_samples(path, counters, utf8="skip")] == ["a"]
    assert counters["invalid_utf8"] == 1
    with pytest.raises(DataError, match=r"m\.tar/a: sample has no \.json"):
        list(iter_samples(path, strict=True))


def test_manifest_hash_mismatch_names_the_shard(tmp_path):
    path = _good_shard(tmp_path)
    data = bytearray(path.read_bytes())
    data[600] ^= 0x01  # inside the first member's data: same size, other hash
    path.write_bytes(bytes(data))
    assert list_shards(tmp_path) == [path]
    with pytest.raises(DataError, match=rf"{path.name}: sha256 does not match manifest.json"):
        list_shards(tmp_path, verify=True)


def test_missing_and_empty_inputs(tmp_path):
    counters = Counter()
    assert list(iter_samples(tmp_path / "nope.tar", counters)) == []
    assert counters["unreadable_shard"] == 1
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    assert list(iter_samples(empty)) == []
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(DataError, match="no \\*.tar shards"):
        list_shards(tmp_path / "emptydir")


# Bytes at the edges of UTF-8's ranges (Unicode Table 3-7): ASCII ends, continuation sub-ranges
# (80-8F / 90-9F / A0-BF decide E0, ED, F0, F4), overlong leads C0/C1, the first and last leads of
# each length, the surrogate lead ED, F4 (U+10FFFF) and F5-FF (never UTF-8).
EDGE_BYTES = bytes.fromhex("007f808f909fa0bfc0c1c2dfe0e1edeff0f1f4f5ff")
UTF8_CASE_LIMIT = 10.0  # seconds per case; each takes well under a second


def _python_utf8_ok(s: bytes) -> bool:
    try:
        s.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _utf8_cases(multilingual_text) -> list[tuple[str, list[bytes]]]:
    """Named batches of byte strings for the differential test against Python's strict decoder."""
    import itertools
    import random

    rng = random.Random(20261130)
    seqs = [bytes(t) for k in range(1, 5) for t in itertools.product(EDGE_BYTES, repeat=k)]
    real = [t.encode() * 3 for t in multilingual_text.values()] + ["Math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢, emoji 🙂👍🏽, CJK Ext B 𠀀𪛖, U+10FFFF \U0010ffff.".encode()]
    flips = []
    for _ in range(3000):
        b = bytearray(rng.choice(real))
        for _ in range(rng.choice((1, 1, 2, 3))):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        flips.append(bytes(b))
    alphabet = [*range(0x20, 0x7F), *range(0x80, 0x100)] + [0xC3, 0xD0, 0xE2, 0xE3, 0xF0, 0x80, 0xBF] * 20
    return [
        # every 1-4 byte sequence of edge bytes: alone (the first bytes and the end check), then
        # inside ASCII at every alignment of the vectorised loop
        ("edge sequences alone", seqs),
        ("edge sequences inside ASCII", [b"a" * (i % 37) + q + b"z" * (i * 7 % 23) for i, q in enumerate(seqs)]),
        ("real text, every truncation", [t[:k] for t in real for k in range(len(t) + 1)] + [t[k:] for t in real for k in range(len(t))]),
        ("real text, bit flips", flips),
        ("random bytes biased to leads", [bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 80))) for _ in range(3000)]),
    ]


def _utf8_child(conn, cases) -> None:
    from glotta._native import valid_utf8

    for i, (_, batch) in enumerate(cases):
        ends = np.cumsum([len(b) for b in batch], dtype=np.int64)
        ours = valid_utf8(b"".join(batch), ends).tolist()
        conn.send((i, [b for b, o in zip(batch, ours) if o != _python_utf8_ok(b)][:5]))
    conn.close()

def _sample_starts(r: TarReader) -> tuple[list[int], list[bytes]]:
    """(offset, key) of every sample, read through once (what an index records)."""
    offsets, keys = [], []
    while True:
        at = r.offset
        got = r.read(1)
        if not got:
            return offsets, keys
        offsets.append(at)
        keys.append(got[0][0].encode())



def test_utf8_check_agrees_with_python_decoder(tmp_path, multilingual_text):
    """csrc/text.h's valid_utf8 accepts exactly what bytes.decode('utf-8') accepts (~420k strings;
    cases run in a forked child, the parent waits at most UTF8_CASE_LIMIT seconds per case), and
    TarReader.texts (the loader's read path) flags exactly the texts Python cannot decode."""
    import multiprocessing as mp

    cases = _utf8_cases(multilingual_text)
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_utf8_child, args=(child, cases), daemon=True)
    proc.start()
    child.close()
    wrong = {}
    try:
        for name, _ in cases:
            if not parent.poll(UTF8_CASE_LIMIT):
                pytest.fail(f"valid_utf8 took > {UTF8_CASE_LIMIT}s (or crashed) on case {name!r}")
            i, bad = parent.recv()
            if bad:
                wrong[cases[i][0]] = bad
    finally:
        proc.kill()
        proc.join()
    assert not wrong, wrong
    # The cases hold both answers in quantity (a check that said "valid" or "invalid" to all would fail).
    for name, batch in cases:
        n_ok = sum(map(_python_utf8_ok, batch))
        assert 0 < n_ok < len(batch), name

    # Through TarReader.texts: every boundary of the UTF-8 byte ranges, truncations of real text,
    # then seeded random bytes biased to multi-byte leads.
    import random

    edge = [
        b"", b"ascii only", b"\x7f", b"\x80", b"\xbf", b"\xc0\x80", b"\xc1\xbf", b"\xc2\x80", b"\xdf\xbf", b"\xc2",
        b"\xe0\x80\x80", b"\xe0\x9f\xbf", b"\xe0\xa0\x80", b"\xed\x9f\xbf", b"\xed\xa0\x80", b"\xed\xbf\xbf",
        b"\xee\x80\x80", b"\xef\xbf\xbf", b"\xef\xbf", b"\xe1\x80\x7f", b"\xf0\x8f\xbf\xbf", b"\xf0\x90\x80\x80",
        b"\xf4\x8f\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xff", b"\xf0\x90\x80", b"abcdefg\xe2\x82",
        "Grüße, Привет, 你好, नमस्ते, 🙂".encode(), b"12345678\xc3\xa912345678\xe2\x82\xac",
    ]
    rng = random.Random(7)
    alphabet = [*range(0x20, 0x7F), *range(0x80, 0xC0), *range(0xC0, 0x100)] + [0xC3, 0xE2, 0xF0, 0x80, 0xBF] * 20
    real = (multilingual_text["hi"] + "🙂").encode()
    payloads = edge + [real[:k] for k in range(len(real))] + [bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(3000)]
    path = make_tar(tmp_path / "u.tar", [(f"k{i:05d}.txt", b"x" + p) for i, p in enumerate(payloads)])
    r = TarReader(str(path), False)
    offsets, keys = _sample_starts(r)
    ends = np.cumsum([len(k) for k in keys])
    n = len(offsets)
    texts, status = read_texts([r], np.zeros(n, np.int32), np.arange(n), np.asarray(offsets, np.uint64), b"".join(keys), ends)
    assert len(texts) == len(payloads)
    # With the indexed sizes each text is read straight into its bytes object: the same result.
    sized = read_texts([r], np.zeros(n, np.int32), np.arange(n), np.asarray(offsets, np.uint64), b"".join(keys), ends,
                       np.array([1 + len(p) for p in payloads]))  # fmt: skip
    assert sized[0] == texts and sized[1].tolist() == status.tolist()
    # A size the index did not record is status 5 with the size found; one past the end of the
    # file (a damaged index) too, without allocating it.
    wrong = np.array([1 + len(p) for p in payloads])
    wrong[3] += 1
    wrong[5] = 1 << 40
    got, st = read_texts([r], np.zeros(n, np.int32), np.arange(n), np.asarray(offsets, np.uint64), b"".join(keys), ends, wrong)
    assert st[3] == st[5] == 5 and got[3] == 1 + len(payloads[3]) and got[5] == 1 + len(payloads[5])
    assert got[:3] == texts[:3] and got[6:] == texts[6:]
    for p, t, st in zip(payloads, texts, status.tolist()):
        try:
            (b"x" + p).decode("utf-8")
            ok = True
        except UnicodeDecodeError:
            ok = False
        assert (st != 1) == ok, (p, st)
        assert st == 1 or t == b"x" + p


def test_pread_and_mapped_random_reads_agree_and_a_shrunk_shard_is_named(tmp_path):
    """texts() through pread (nothing mapped) and through a mapping: texts around the 4 KiB read
    size, past the 64 KiB buffer, empty, .json before .txt (webdataset's order), no .txt, a key
    that moved. A shard cut while a pread reader holds it is an error naming it (a mapping would
    take SIGBUS)."""
    members = []
    for i, n in enumerate([0, 1, 100, 3500, 3583, 3584, 3585, 3700, 9000, 70_000]):
        members += [(f"k{i}.json", b"{}"), (f"k{i}.txt", ("é" * (n // 2) + "x" * (n % 2)).encode())]
    members += [("half.json", b"{}"), ("last.txt", b"end")]
    path = make_tar(tmp_path / "s.tar", members)
    offsets, keys = _sample_starts(TarReader(str(path)))
    keys[-1] = b"moved"  # the index says another key starts there
    args = (np.asarray(offsets, np.uint64), b"".join(keys), np.cumsum([len(k) for k in keys]))
    reads = []
    for mapped in (False, True, None):
        rr = TarReader(str(path), False, mapped)
        texts, status = rr.texts(*args)
        assert rr.mapped == bool(mapped)  # the default maps only after 32 documents
        reads.append((texts, status.tolist()))
    assert reads[0] == reads[1] == reads[2]
    texts, status = reads[0]
    assert status == [4] + [0] * 9 + [2, 3]
    assert texts[1:10] == [dict(members)[f"k{i}.txt"] for i in range(1, 10)]
    assert texts[10:] == ["", "last"]

    rr = TarReader(str(path), False, False)
    assert rr.texts(*args)[1].tolist() == status
    path.write_bytes(path.read_bytes()[:5000])  # cut in place (same file, now shorter)
    with pytest.raises(TarError, match=r"s\.tar: the shard shrank to 5000 bytes"):
        rr.texts(*args)
