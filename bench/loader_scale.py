"""Loader start-up at scale: time to first batch and peak memory as data-parallel rank 0 of 8.

Two shard sets of the same real text (demo-corpus paragraphs, 10 languages), written by the
ShardWriter with their indexes: a small one (10,000 documents, 10 shards) and a large one
(1,000,000 documents in 1,000 shards by default). Each is loaded in a fresh process as rank 0
of 8 (seq_len 2048, micro-batch 4, global batch 32, 2 tokenizer threads), which measures the
time from `TokenLoader(...)` to the first batch and the peak RSS above the process's RSS just
before (Python, torch and numpy already imported). Targets (issue 12): the large set within
5 s to the first batch and within 64 MB of the small set's memory.

    python bench/loader_scale.py [--docs 1000000] [--shards 1000] [--small 10000] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROBE = r"""
import json, resource, sys, time, logging
logging.disable(logging.WARNING)
import numpy, torch  # imported before the baseline RSS: the loader's cost is what we measure
from glotta.data.loader import TokenLoader
def rss_mb():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "RssAnon:", "RssFile:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out
before = rss_mb()
t0 = time.perf_counter()
ld = TokenLoader(sys.argv[1], sys.argv[2], seq_len=2048, micro_batch_size=4, global_batch_size=32,
                 dp_rank=0, dp_size=8, num_workers=2, mix={"method": "natural"})
t1 = time.perf_counter()
batch = next(iter(ld))
t2 = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
now = rss_mb()
print(json.dumps({"construct_s": t1 - t0, "first_batch_s": t2 - t0, "rss_before_mb": before["VmRSS"],
                  "peak_above_mb": peak - before["VmRSS"], "anon_above_mb": now["RssAnon"] - before["RssAnon"],
                  "file_above_mb": now["RssFile"] - before["RssFile"], "docs": ld.index.documents, "shards": len(ld.index.shards),
                  "tokenized": ld.tokenized_docs}))
ld.close()
"""


def build(out: Path, docs: int, shards: int, texts: list[tuple[str, str]]) -> None:
    from glotta.data import Manifest, Sample, ShardWriter

    if (out / "manifest.json").is_file():
        return
    per = max(1, docs // shards)
    t = time.perf_counter()
    with ShardWriter(out, max_samples=per) as w:
        for i in range(docs):
            lang, text = texts[i % len(texts)]
            w.write(Sample(key=f"d{i:08d}", text=text, meta={"lang": lang, "url": f"https://example.org/{i}"}))
    Manifest(shards=w.written).save(out)
    print(f"  wrote {docs:,} docs in {len(w.written)} shards to {out} in {time.perf_counter() - t:.0f} s", flush=True)


def probe(shard_dir: Path, model: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", PROBE, str(shard_dir), str(model)], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=1000)
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--keep", type=Path, help="build (or reuse) the shard sets here instead of a temporary folder")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    import sentencepiece as spm

    from glotta.data import iter_samples, list_shards
    from glotta.data.demo_corpus import build_demo_corpus

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-loader-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    demo = root / "demo"
    if not (demo / "manifest.json").is_file():
        build_demo_corpus(demo, langs="en de fr es ru el ja zh hi ar".split(), max_docs_per_lang=100, shard_samples=1000)
    texts = [(s.lang, p) for sh in list_shards(demo) for s in iter_samples(sh) for p in s.text.split("\n") if len(p) > 40]
    model = root / "sp.model"
    if not model.is_file():
        spm.SentencePieceTrainer.train(sentence_iterator=iter([t for _, t in texts]), model_prefix=str(root / "sp"),
                                       vocab_size=4000, pad_id=3, minloglevel=2)  # fmt: skip
    small, large = root / f"small-{args.small}", root / f"large-{args.docs}-{args.shards}"
    build(small, args.small, max(1, args.small * args.shards // args.docs), texts)
    build(large, args.docs, args.shards, texts)
    a, b = probe(small, model), probe(large, model)
    print(f"{'set':>18s}{'docs':>11s}{'shards':>8s}{'construct s':>13s}{'first batch s':>15s}"
          f"{'peak RSS +MB':>14s}{'anon +MB':>10s}{'file +MB':>10s}")
    for name, r in (("small (baseline)", a), ("large", b)):
        print(f"{name:>18s}{r['docs']:>11,d}{r['shards']:>8d}{r['construct_s']:>13.2f}{r['first_batch_s']:>15.2f}"
              f"{r['peak_above_mb']:>14.1f}{r['anon_above_mb']:>10.1f}{r['file_above_mb']:>10.1f}")
    print(f"time to first batch, large: {b['first_batch_s']:.2f} s (target <= 5 s); "
          f"large / small = {b['first_batch_s'] / a['first_batch_s']:.2f}x")
    print(f"peak memory, large - small: {b['peak_above_mb'] - a['peak_above_mb']:+.1f} MB (target <= 64 MB); "
          f"anonymous {b['anon_above_mb'] - a['anon_above_mb']:+.1f} MB, page cache of mapped files "
          f"{b['file_above_mb'] - a['file_above_mb']:+.1f} MB (shared, reclaimable)")


if __name__ == "__main__":
    main()
