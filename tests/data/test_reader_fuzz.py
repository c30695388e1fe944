"""Fuzzing the tar reader on real shards: byte flips, truncations and crafted headers.

Every case runs in one forked child that reports back after each case; the parent waits at most
CASE_LIMIT seconds per case, so a hang (the old reader looped forever on an overflowing size,
with the GIL released) fails the test naming the case instead of stalling the suite.

Per case we assert: no crash (only a DataError naming an unsupported compressed shard is
allowed), and no silent loss: without the manifest, fewer intact documents than written means a
problem counter is non-zero; with the manifest entry, every written document is either
yielded or counted (`lost_documents`, `missing_text`, ...). The loader's random reads
(`TarReader.texts` at the original samples' offsets) give the same texts and statuses through
pread as through a mapping.
"""
from __future__ import annotations

import gzip
import random
import struct
from collections import Counter

import pytest

import numpy as np

from case_limit import run_cases  # tests/data: a forked child, a time limit per case
from glotta._native import TarReader
from glotta.data import Sample, ShardWriter, iter_samples, list_shards
from glotta.data.shards import PROBLEMS
from glotta.errors import DataError

CASE_LIMIT = 10.0  # seconds per case; a healthy case takes milliseconds
N_DOCS = 120


def _checksum(block: bytearray) -> None:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)


def _header(name: bytes, size_field: bytes, typeflag: bytes = b"0") -> bytearray:
    h = bytearray(512)
    h[0 : len(name)] = name
    h[100:108] = b"0000444\0"
    h[108:116] = h[116:124] = b"0000000\0"
    h[124:136] = size_field
    h[136:148] = b"00000000000\0"
    h[156:157] = typeflag
    h[257:265] = b"ustar\x0000"
    _checksum(h)
    return h


def _rec(key: bytes, value: bytes) -> bytes:
    """One pax record with its correct length prefix."""
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n).encode()) + len(body) != n:
        n += 1
    return str(n).encode() + body


def _pax(records: bytes) -> bytes:
    body = records + b"\0" * (-len(records) % 512)
    return bytes(_header(b"PaxHeader/x", b"%011o\0" % len(records), b"x")) + body


def _crafted(good: bytes) -> list[tuple[str, bytes]]:
    """Hand-made hostile members inserted after the 4th sample of a good shard."""
    headers = [i for i in range(0, len(good), 512) if good[i + 257 : i + 262] == b"ustar"]
    cut = headers[8]  # the 5th sample's first header
    head, tail = good[:cut], good[cut:]
    base256_huge = b"\x80" + b"\xff" * 11  # 2^88-1: more than 64 bits
    base256_wrap = b"\x80" + b"\0" * 3 + b"\xff" * 8  # 2^64-1: data_at + size overflows
    base256_neg = b"\xff" * 12
    octal_huge = b"77777777777\0"
    cases = [
        ("base256 size > 64 bits", _header(b"x1.txt", base256_huge)),
        ("base256 size 2^64-1 (offset overflow)", _header(b"x2.txt", base256_wrap)),
        ("negative base256 size", _header(b"x3.txt", base256_neg)),
        ("octal size past the end", _header(b"x4.txt", octal_huge)),
        ("size field not octal", _header(b"x5.txt", b"12ab5678901\0")),
        ("pax size=abc", _pax(_rec(b"size", b"abcdefg")) + bytes(_header(b"x6.txt", b"00000000001\0")) + b"a" + b"\0" * 511),
        ("pax size overflow", _pax(_rec(b"size", b"9" * 24)) + bytes(_header(b"x7.txt", b"00000000000\0"))),
        ("pax record length huge", _pax(b"99999999999999999999 path=a\n") + bytes(_header(b"x8.txt", b"00000000000\0"))),
        ("pax record length zero", _pax(b"0 path=a\n") + bytes(_header(b"x9.txt", b"00000000000\0"))),
        ("pax path not UTF-8", _pax(_rec(b"path", b"\xe9t\xe9.txt")) + bytes(_header(b"x10.txt", b"00000000000\0"))),
        ("Latin-1 member name", _header(b"caf\xe9.txt", b"00000000000\0")),
        ("GNU long name past the end", _header(b"././@LongLink", octal_huge, b"L")),
        ("directory entry", _header(b"somedir/", b"00000000000\0", b"5")),
    ]
    return [(f"crafted: {what}", head + bytes(h) + tail) for what, h in cases]


def _cases(good: bytes) -> list[tuple[str, bytes]]:
    rng = random.Random(20261129)
    headers = [i for i in range(0, len(good), 512) if good[i + 257 : i + 262] == b"ustar"]
    out: list[tuple[str, bytes]] = []
    for k in range(120):  # flips in header blocks (flips in text are found by the manifest's sha256)
        data = bytearray(good)
        for _ in range(rng.choice((1, 1, 2, 4))):
            pos = rng.choice(headers) + rng.randrange(512)
            data[pos] ^= 1 << rng.randrange(8)
        out.append((f"flip #{k}", bytes(data)))
    for k in range(40):  # truncations anywhere, and at block boundaries (a clean-looking archive)
        cut = rng.randrange(len(good)) if k % 2 else rng.randrange(len(good) // 512) * 512
        out.append((f"truncate at {cut}", good[:cut]))
    for k in range(20):  # a run of garbage over several blocks, starting inside a header
        data = bytearray(good)
        at, n = rng.choice(headers) + rng.randrange(512), rng.randrange(1, 3000)
        data[at : at + n] = bytes(rng.randrange(256) for _ in range(len(data[at : at + n])))
        out.append((f"garbage {n} bytes at {at}", bytes(data)))
    return out + _crafted(good)


def _random_reads(path, where) -> list:
    """texts() of the original samples through a pread reader and a mapped one."""
    out = []
    for mapped in (False, True):
        r = TarReader(str(path), False, mapped)
        texts, status = r.texts(*where)
        out.append((texts, status.tolist()))
        r.close()
    return out


def _run_case(path, data: bytes, expected, originals: dict, where) -> dict:
    path.write_bytes(data)
    if data[:2] != b"\x1f\x8b":  # a compressed shard cannot be opened (tested below)
        pread, mapped = _random_reads(path, where)
        if pread != mapped:
            return {"error": "texts differ between pread and mapped reads"}
    problems = Counter()
    got = list(iter_samples(path, problems))
    intact = sum(1 for s in got if originals.get(s.key) == (s.text, s.meta))
    with_manifest = Counter()
    n = sum(1 for _ in iter_samples(path, with_manifest, expected=expected))
    accounted = n + sum(with_manifest[k] for k in ("missing_text", "bad_json", "lost_documents"))
    flagged = sum(v for k, v in problems.items() if k in PROBLEMS or k in ("missing_text", "missing_json", "bad_json"))
    return {"intact": intact, "flagged": flagged, "accounted": accounted}


def _child(conn, cases, workdir, expected, originals, where) -> None:
    for i, (_, data) in enumerate(cases):
        try:
            res = _run_case(workdir / f"case{i}.tar", data, expected, originals, where)
        except Exception as e:  # reported to the parent: a crash is a failure
            res = {"error": f"{type(e).__name__}: {e}"}
        conn.send((i, res))
    conn.close()


@pytest.fixture(scope="module")
def real_shard(demo_shards, tmp_path_factory):
    """N_DOCS real multilingual samples written by our ShardWriter, plus their manifest entry."""
    src = [s for p in list_shards(demo_shards) for s in iter_samples(p)][:N_DOCS]
    out = tmp_path_factory.mktemp("fuzz_src")
    with ShardWriter(out, max_samples=10_000) as w:
        for s in src:
            w.write(Sample(key=s.key, text=s.text[:600], meta=s.meta))
    info = w.written[0]
    originals = {s.key: (s.text[:600], s.meta) for s in src}
    return (out / info.name).read_bytes(), info, originals


def _sample_starts(path) -> tuple[np.ndarray, bytes, np.ndarray]:
    """(offsets, key blob, key ends) of every sample: the arguments the loader gives texts()."""
    r = TarReader(str(path))
    offsets, keys = [], []
    while True:
        at = r.offset
        got = r.read(1)
        if not got:
            return np.asarray(offsets, np.uint64), b"".join(keys), np.cumsum([len(k) for k in keys])
        offsets.append(at)
        keys.append(got[0][0].encode())


def test_fuzzed_shards_never_hang_crash_or_lose_documents_silently(real_shard, tmp_path):
    good, info, originals = real_shard
    cases = _cases(good)
    (tmp_path / "good.tar").write_bytes(good)
    where = _sample_starts(tmp_path / "good.tar")
    (pread, _), (mapped, _) = _random_reads(tmp_path / "good.tar", where)
    assert pread == mapped == [t.encode() for t, _ in originals.values()]
    results = run_cases(_child, (cases, tmp_path, info, originals, where), [name for name, _ in cases], CASE_LIMIT, "reader")
    crashes = {cases[i][0]: r["error"] for i, r in results.items() if "error" in r}
    assert not crashes
    silent = [cases[i][0] for i, r in results.items() if r["intact"] < N_DOCS and r["flagged"] == 0]
    assert not silent, f"documents lost without a counter: {silent[:5]}"
    unaccounted = [cases[i][0] for i, r in results.items() if r["accounted"] < N_DOCS]
    assert not unaccounted, f"documents neither read nor counted against the manifest: {unaccounted[:5]}"
    # The fuzzer did hit damage: most cases lost something and said so.
    assert sum(1 for r in results.values() if r["intact"] < N_DOCS) > len(cases) // 2


def test_crafted_overflowing_size_is_skipped_and_later_samples_kept(real_shard, tmp_path):
    good, info, originals = real_shard
    name, data = next(c for c in _crafted(good) if "2^64-1" in c[0])
    path = tmp_path / "wrap.tar"
    path.write_bytes(data)
    counters = Counter()
    keys = [s.key for s in iter_samples(path, counters)]
    # The overflowing member claims more bytes than the file holds: the archive is cut there.
    assert counters["truncated"] == 1 and keys == list(originals)[:4]
    with pytest.raises(DataError, match=r"wrap\.tar at byte \d+: member data cut short"):
        list(iter_samples(path, strict=True))


def test_bad_pax_and_latin1_names_are_counted_with_shard_and_offset(real_shard, tmp_path):
    good, _, originals = real_shard
    for what, counter in (("pax size=abc", "bad_pax"), ("Latin-1 member name", "bad_name"), ("pax path not UTF-8", "bad_pax")):
        data = next(d for n, d in _crafted(good) if what in n)
        path = tmp_path / "c.tar"
        path.write_bytes(data)
        counters = Counter()
        keys = [s.key for s in iter_samples(path, counters)]
        assert counters[counter] == 1, what
        assert keys == list(originals), what  # the bad member is skipped, every real sample kept
        with pytest.raises(DataError, match=r"c\.tar at byte \d+: "):
            list(iter_samples(path, strict=True))


def test_block_boundary_truncation_is_found_by_the_manifest(real_shard, tmp_path):
    good, info, _ = real_shard
    headers = [i for i in range(0, len(good), 512) if good[i + 257 : i + 262] == b"ustar"]
    path = tmp_path / "half.tar"
    path.write_bytes(good[: headers[len(headers) // 2]])  # a clean cut between two samples
    counters = Counter()
    n = sum(1 for _ in iter_samples(path, counters, expected=info))
    assert n == N_DOCS // 2
    assert counters["truncated"] == 1 and counters["lost_documents"] == N_DOCS - n and counters["size_mismatch"] == 1


def test_compressed_shard_is_unsupported_not_corrupt(real_shard, tmp_path):
    good, _, _ = real_shard
    (tmp_path / "set").mkdir()
    gz = tmp_path / "set" / "a.tar"
    gz.write_bytes(gzip.compress(good))
    with pytest.raises(DataError, match=r"a\.tar: unsupported: compressed shard \(gzip\)"):
        list(iter_samples(gz))
    gz.rename(tmp_path / "set" / "a.tar.gz")
    with pytest.raises(DataError, match=r"unsupported: compressed shards \(a\.tar\.gz\)"):
        list_shards(tmp_path / "set")


def test_readers_hold_no_file_descriptors(real_shard, tmp_path):
    import os

    from glotta.data.shards import open_reader

    good, _, _ = real_shard
    path = tmp_path / "a.tar"
    path.write_bytes(good)
    before = len(os.listdir("/proc/self/fd"))
    readers = [open_reader(path, sequential=False) for _ in range(200)]
    assert len(os.listdir("/proc/self/fd")) == before  # a 'ulimit -n 64' cannot be exhausted by readers
    assert all(len(r.read(1)) == 1 for r in readers)
    for r in readers:
        r.close()


def test_struct_helpers_build_valid_headers():
    # The crafted-header builder itself must make checksum-valid headers, or the crafted cases test nothing.
    h = _header(b"a.txt", b"00000000001\0")
    stored = int(bytes(h[148:154]), 8)
    assert stored == sum(h[:148]) + 8 * 32 + sum(h[156:])
    assert struct.unpack("5s", bytes(h[257:262]))[0] == b"ustar"
    assert _rec(b"size", b"abc") == b"12 size=abc\n"
