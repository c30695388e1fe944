"""Shard reading: glotta's C++ reader vs the webdataset library on the same shards, same run;
then the loader's random read path vs Python doing the same reads.

Sequential reading, two levels:
  raw     - samples as {ext: bytes}        (ours: TarReader.read;  theirs: wds.WebDataset)
  decoded - text str + metadata dict       (ours: iter_samples;    theirs: wds.WebDataset(...).decode())
Shards come from the demo corpus (real gettext text); pass a shard directory to use your own.

The loader's read path (CPU seconds of this thread, best of --repeat, modes interleaved), on the
corpus of bench/loader.py (24 languages, 500 documents each, 500 per shard) and on a many-shard
set (--sparse-docs paragraphs in --sparse-shards shards, as in bench/loader_scale.py):
  fetch   - CorpusIndex.fetch per 128-document task vs the per-shard loop it replaced
  utf8    - the C++ UTF-8 check (csrc/text.h) vs Python's bytes.decode, over every text
  texts   - read_texts for every document, one call per task (random task order, fetch's
            arguments, an LRU of 64 readers opened fresh each epoch like the loader's encoder),
            per reader mode:
            the default (pread, mapping after 32 documents), always mapped, always pread; vs
            Python: os.pread of the headers, tarfile.TarInfo.frombuf, os.pread of the text,
            decode, isspace
With --baseline-site DIR (an older glotta installed with `pip install --no-deps --target DIR`),
an epoch of texts with the loader's default random readers also runs under that glotta and under
this one, each in its own process, alternating (--repeat times each); the best CPU figures are
compared (a code-vs-code comparison in the same run).

    python bench/read_shards.py [SHARD_DIR] [--repeat 3] [--sparse-docs 100000] [--sparse-shards 1000]
                                [--baseline-site DIR]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import webdataset as wds

from glotta._native import TarReader, read_texts, valid_utf8
from glotta.data import iter_samples, list_shards
from glotta.data.corpus_index import CorpusIndex, build_corpus_index
from glotta.data.demo_corpus import build_demo_corpus

LANGS = "en de fr es pt it nl pl ru uk el tr ar he fa hi bn ta ja zh ko vi th id".split()  # bench/loader.py's


def best_rate(fn, repeat: int) -> tuple[float, int]:
    best, n = 0.0, 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = fn()
        best = max(best, n / (time.perf_counter() - t0))
    return best, n


def ours_raw(shards) -> int:
    n = 0
    for p in shards:
        r = TarReader(str(p))
        while chunk := r.read(1024):
            n += len(chunk)
    return n


def ours_decoded(shards) -> int:
    return sum(1 for p in shards for _ in iter_samples(p))


def theirs_raw(shards) -> int:
    return sum(1 for _ in wds.WebDataset([str(p) for p in shards], shardshuffle=False))


def theirs_decoded(shards) -> int:
    return sum(1 for _ in wds.WebDataset([str(p) for p in shards], shardshuffle=False).decode())


# ---- the loader's random read path -----------------------------------------------------------
def fetch_per_shard(index: CorpusIndex, ids: np.ndarray):
    """CorpusIndex.fetch before session 5: a dozen numpy calls per shard, each over the whole task."""
    shard, local = ids >> 32, ids & 0xFFFFFFFF
    groups = []
    for s in sorted(set(shard.tolist())):
        pos = np.flatnonzero(shard == s)
        j = local[pos]
        c = index.indexes[s].cols()
        hi = c["key_end"][j].astype(np.int64)
        lo = np.where(j > 0, c["key_end"][np.maximum(j - 1, 0)], 0).astype(np.int64)
        lens = hi - lo
        ends = np.cumsum(lens)
        gather = np.repeat(lo - (ends - lens), lens) + np.arange(int(ends[-1]) if len(ends) else 0)
        groups.append((int(s), pos, c["offset"][j].astype(np.int64), c["keys"][gather].tobytes(), ends))
    return len(ids), groups


def python_texts(path: str, offsets, key_blob: bytes, key_ends) -> list:
    """What TarReader.texts does, in Python: walk the sample's headers to its .txt member, read it,
    check it decodes and is not only whitespace."""
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        start = 0
        for off, end in zip(offsets.tolist(), key_ends.tolist()):
            key, start = key_blob[start:end].decode(), end
            text = b""
            while True:
                h = os.pread(fd, 512, off)
                if len(h) < 512 or h == bytes(512):
                    break
                ti = tarfile.TarInfo.frombuf(h, "utf-8", "surrogateescape")
                stem, _, ext = ti.name.partition(".")
                if stem != key:
                    break
                if ext == "txt":
                    text = os.pread(fd, ti.size, off + 512)
                    text = b"" if text.decode("utf-8").isspace() else text
                    break
                off += 512 + (ti.size + 511) // 512 * 512
            out.append(text)
    finally:
        os.close(fd)
    return out


def cpu(fn) -> float:
    t = time.thread_time()
    fn()
    return time.thread_time() - t


def read_path(d: Path, repeat: int, label: str) -> None:
    index = build_corpus_index([(p, None) for p in list_shards(d)], set())
    ids = np.concatenate([(np.int64(s) << 32) | np.arange(ix.docs, dtype=np.int64) for s, ix in enumerate(index.indexes)])
    ids = ids[np.random.default_rng(0).permutation(len(ids))][:20_000]
    tasks = [ids[i : i + 128] for i in range(0, len(ids), 128)]
    fetched = [index.fetch(t) for t in tasks]
    texts = [t for task in fetched for t in read_texts([TarReader(index.shards[s], False, True) for s in task.shards], *task[2:])[0]]
    mb = sum(map(len, texts)) / 1e6
    print(f"\n{label}: {len(index.shards)} shards, {len(ids):,} documents read in random order, "
          f"{len(tasks)} tasks of 128, {mb:.1f} MB of text; CPU ms of this thread, best of {repeat}")

    def epoch(mapped):
        readers: OrderedDict = OrderedDict()
        for task in fetched:  # one read_texts per task, as the loader's encoder does
            here = []
            for s in task.shards:
                r = readers.pop(s, None) or TarReader(index.shards[s], False, mapped)
                while len(readers) >= 64:
                    readers.popitem(last=False)[1].close()
                readers[s] = r
                here.append(r)
            read_texts(here, *task[2:])
        for r in readers.values():
            r.close()

    def python_epoch():
        for task in fetched:
            starts = np.concatenate(([0], task.key_ends[:-1]))
            for k, s in enumerate(task.shards):
                sel = np.flatnonzero(task.which == k)
                blob = b"".join(task.key_blob[int(starts[i]) : int(task.key_ends[i])] for i in sel)
                python_texts(index.shards[s], task.offsets[sel], blob, np.cumsum(task.key_ends[sel] - starts[sel]))

    utf8_blob, utf8_ends = b"".join(texts), np.cumsum([len(t) for t in texts])
    rows = {
        "fetch (per task)": (lambda: [index.fetch(t) for t in tasks], lambda: [fetch_per_shard(index, t) for t in tasks], len(tasks)),
        "utf8 check": (lambda: valid_utf8(utf8_blob, utf8_ends), lambda: [t.decode("utf-8") for t in texts], 1),
        "texts, default": (lambda: epoch(None), python_epoch, 1),
        "texts, mapped": (lambda: epoch(True), None, 1),
        "texts, pread": (lambda: epoch(False), None, 1),
    }
    best = {name: [float("inf"), float("inf")] for name in rows}
    for _ in range(repeat):
        for name, (ours, theirs, _) in rows.items():
            best[name][0] = min(best[name][0], cpu(ours))
            if theirs:
                best[name][1] = min(best[name][1], cpu(theirs))
    print(f"{'':18} {'ours ms':>9} {'baseline ms':>12} {'ratio':>7}   baseline")
    for name, (_, theirs, per) in rows.items():
        o, t = best[name][0] * 1e3 / per, best[name][1] * 1e3 / per
        base = {"fetch (per task)": "per-shard loop", "utf8 check": "bytes.decode", "texts, default": "Python pread+tarfile"}
        if theirs:
            print(f"{name:18} {o:9.3f} {t:12.3f} {t / o:6.1f}x   {base[name]}")
        else:
            print(f"{name:18} {o:9.3f}")
    o = best["texts, default"][0] * 1e3
    print(f"texts per document: default {o * 1e3 / len(ids):.2f} us, mapped {best['texts, mapped'][0] * 1e6 / len(ids):.2f} us, "
          f"pread {best['texts, pread'][0] * 1e6 / len(ids):.2f} us; {o * 1e6 / (mb * 1e6):.2f} ns per text byte (default)")


# One epoch of TarReader.texts with the loader's default random readers (`TarReader(path, False)`,
# an LRU of 64 opened fresh), CPU of this thread; run in a fresh process under either glotta.
EPOCH = r"""
import json, logging, sys, time
from collections import OrderedDict
logging.disable(logging.WARNING)
import numpy as np
from glotta._native import TarReader
from glotta.data import list_shards
from glotta.data.corpus_index import build_corpus_index
index = build_corpus_index([(p, None) for p in list_shards(sys.argv[1])], set())
ids = np.concatenate([(np.int64(s) << 32) | np.arange(ix.docs, dtype=np.int64) for s, ix in enumerate(index.indexes)])
ids = ids[np.random.default_rng(0).permutation(len(ids))][:20000]
fetched = [index.fetch(ids[i : i + 128]) for i in range(0, len(ids), 128)]
def reader(readers, s):
    r = readers.pop(s, None) or TarReader(index.shards[s], False)
    while len(readers) >= 64:
        readers.popitem(last=False)[1].close()
    readers[s] = r
    return r
best = float("inf")
for _ in range(3):
    t = time.thread_time()
    readers = OrderedDict()
    for task in fetched:
        if hasattr(task, "which"):  # a ReadTask (session 5 on): one read per task
            from glotta._native import read_texts
            read_texts([reader(readers, s) for s in task.shards], *task[2:])
        else:  # (n, [(shard, positions, offsets, key blob, key ends)]): one texts() per shard
            for s, _, offs, blob, ends in task[1]:
                reader(readers, s).texts(offs, blob, ends)
    for r in readers.values():
        r.close()
    best = min(best, time.thread_time() - t)
print(json.dumps({"ms": best * 1e3, "docs": len(ids)}))
"""


def against_site(d: Path, site: Path, repeat: int) -> None:
    """texts epochs of this glotta and the one in `site`, alternating processes."""
    env_old = dict(os.environ, PYTHONPATH=str(site))
    runs: dict[str, list[float]] = {"baseline": [], "ours": []}
    for _ in range(repeat):
        for who, env in (("baseline", env_old), ("ours", dict(os.environ))):
            out = subprocess.run([sys.executable, "-c", EPOCH, str(d)], env=env, capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            runs[who].append(r["ms"])
    b, o = min(runs["baseline"]), min(runs["ours"])
    print(f"texts epoch ({r['docs']:,} documents), default random readers, best CPU ms: {site} {b:.1f}, "
          f"this glotta {o:.1f}; {b / o:.2f}x less CPU ({b * 1e3 / r['docs']:.2f} -> {o * 1e3 / r['docs']:.2f} us per document)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shards", nargs="?", type=Path)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sparse-docs", type=int, default=100_000, help="documents of the many-shard set (0: skip it)")
    ap.add_argument("--sparse-shards", type=int, default=1000)
    ap.add_argument("--baseline-site", type=Path, help="an older glotta (pip install --no-deps --target DIR) to compare texts with")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # unreadable .mo catalogs are counted, not printed here
    with tempfile.TemporaryDirectory() as tmp:
        d = args.shards
        if d is None:
            d = Path(tmp)
            build_demo_corpus(d, langs=["en", "de", "fr", "ru", "ja", "hi", "ar", "zh"], doc_chars=1000, shard_samples=2000)
        shards = list_shards(d)
        mb = sum(p.stat().st_size for p in shards) / 1e6
        print(f"{len(shards)} shards, {mb:.1f} MB, best of {args.repeat} (page cache warm)")
        print(f"{'level':8} {'glotta samples/s':>18} {'webdataset samples/s':>22} {'ratio':>8}")
        for level, ours, theirs in [("raw", ours_raw, theirs_raw), ("decoded", ours_decoded, theirs_decoded)]:
            theirs(shards)  # warm the page cache
            r_ours, n1 = best_rate(lambda: ours(shards), args.repeat)
            r_theirs, n2 = best_rate(lambda: theirs(shards), args.repeat)
            assert n1 == n2, f"sample counts differ: {n1} vs {n2}"
            print(f"{level:8} {r_ours:18,.0f} {r_theirs:22,.0f} {r_ours / r_theirs:7.1f}x")
        loader_corpus = Path(tmp) / "loader"
        build_demo_corpus(loader_corpus, langs=LANGS, max_docs_per_lang=500, shard_samples=500)
        read_path(loader_corpus, args.repeat, "loader read path, bench/loader.py's corpus")
        if args.baseline_site:
            against_site(loader_corpus, args.baseline_site, args.repeat)
        if args.sparse_docs:
            sys.path.insert(0, str(Path(__file__).parent))
            from loader_scale import build

            paras = [(s.lang, p) for sh in list_shards(loader_corpus) for s in iter_samples(sh) for p in s.text.split("\n") if len(p) > 40]
            sparse = Path(tmp) / "sparse"
            build(sparse, args.sparse_docs, args.sparse_shards, paras)
            read_path(sparse, args.repeat, "loader read path, many shards")
            if args.baseline_site:
                against_site(sparse, args.baseline_site, args.repeat)


if __name__ == "__main__":
    main()
