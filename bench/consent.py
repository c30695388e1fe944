"""Consent decisions per second: ConsentFilter with warm caches vs a naive per-document parse.

Workload: ORIGINS origins, each with two robots.txt captures (a year apart) drawn from a mix of
real-world shapes (no file, open, CMS-style path rules, wildcard rules, GPTBot/CCBot blocks,
full blocks with /ads.txt allowed, Content-Signal, server errors), and DOCS documents whose
URLs and crawl dates spread over those origins, decided for the 20-agent `training` policy
as of crawl time.
  ours      ConsentFilter.__call__ (decide + counters), second pass = warm per-origin verdicts
  naive     per document: pick the snapshot, Protego.parse its robots.txt, ask can_fetch for
            every agent (what a straightforward implementation does); timed on a subset
End to end (`--e2e-docs`, default 1,000,000): `run_filter` on real shards in a child process
(reading tar shards, deciding, writing the Parquet audit and exclude list), CPU time and peak RSS
of that process; with the origin-indexed store (ours) vs loading the whole store (baseline), and
ours again on a quarter of the documents, to show that memory does not follow the document count
(printed as the ratio of the two peaks). With --before DIR (a folder holding an older source tree
as glotta/, e.g. `git archive <commit>` laid out like the installed package) that code runs on the
same shards too, for a before/after figure.
Run: python bench/consent.py [--docs N] [--origins N] [--e2e-docs N] [--before DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from protego import Protego

from glotta.data import Sample
from glotta.pruning.consent import ConsentFilter, DecideConfig, Snapshot, SnapshotStore, resolve_policy
from glotta.pruning.consent.robots import sha256_text
from glotta.pruning.consent.urls import split_url

CMS = """User-agent: *
Crawl-delay: 10
Disallow: /admin/
Disallow: /core/
Disallow: /profiles/
Disallow: /README.txt
Disallow: /search/
Disallow: /user/register/
Disallow: /user/password/
Disallow: /user/login/
Disallow: /*?sort=
Disallow: /*/print$
Allow: /core/*.css$
Allow: /core/*.js$
Sitemap: https://{host}/sitemap.xml
"""
SHAPES = [  # (weight, status, body)
    (30, 404, None),
    (25, 200, "User-agent: *\nDisallow:\n"),
    (15, 200, CMS),
    (8, 200, "User-agent: *\nDisallow: /*.pdf$\nDisallow: /tmp/\n\nUser-agent: GPTBot\nDisallow: /private/\n"),
    (8, 200, "User-agent: GPTBot\nUser-agent: CCBot\nUser-agent: Google-Extended\nDisallow: /\n\nUser-agent: *\nAllow: /\n"),
    (4, 200, "User-agent: *\nAllow: /ads.txt\nDisallow: /\n"),
    (4, 200, "User-agent: *\nContent-Signal: search=yes, ai-train=no\nAllow: /\n"),
    (3, 503, None),
    (3, 200, "User-agent: ClaudeBot\nDisallow: /de/\n\nUser-agent: *\nDisallow: /cart\n"),
]
LOCALES = ["en", "de", "fr", "es", "ru", "el", "ja", "zh_CN", "hi", "ar", "pt_BR", "ko"]


def workload(n_origins: int, n_docs: int, seed: int = 0):
    rng = random.Random(seed)
    weights = [w for w, _, _ in SHAPES]
    snaps, origins = [], []
    for i in range(n_origins):
        host = f"site{i:05d}.{rng.choice(['example', 'example.org', 'co.example', 'blogspot.example'])}"
        origin = f"https://{host}"
        origins.append(origin)
        for date in ("2023-01-15", "2024-01-15"):
            _, status, body = rng.choices(SHAPES, weights)[0]
            body = body.format(host=host) if body else None
            snaps.append(Snapshot(origin, date, status, body, sha256_text(body) if body else "", "bench"))
    docs = []
    for j in range(n_docs):
        origin = origins[min(int(rng.paretovariate(1.2)) - 1, n_origins - 1) if j % 2 else rng.randrange(n_origins)]
        path = rng.choice(["/", "/de/", "/private/", "/news/", "/tmp/", "/cart/", "/search/"]) + f"{j}"
        url = origin + path + rng.choice(["", ".pdf", "?sort=asc", "/print"])
        meta = {"url": url, "lang": rng.choice(LOCALES), "crawl_date": rng.choice(["2023-06-01", "2024-03-01", "2024-11-30"])}
        docs.append(Sample(f"d{j}", "", meta, "bench.tar"))
    return SnapshotStore(snaps), docs


def write_e2e(root: Path, store: SnapshotStore, n_docs: int, n_origins: int) -> tuple[Path, Path]:
    """Shards of n_docs documents (~300 bytes of text each) and the store as JSONL parts."""
    from glotta.data import Manifest, ShardWriter

    rng = random.Random(1)
    origins = sorted(store.by_origin)
    shards = root / f"shards-{n_docs}"
    with ShardWriter(shards, prefix="web", max_samples=50_000) as w:
        for j in range(n_docs):
            origin = origins[min(int(rng.paretovariate(1.2)) - 1, n_origins - 1) if j % 2 else rng.randrange(n_origins)]
            path = rng.choice(["/", "/de/", "/private/", "/news/", "/tmp/", "/cart/", "/search/"]) + f"{j}"
            meta = {"url": origin + path + rng.choice(["", ".pdf", "?sort=asc", "/print"]), "lang": rng.choice(LOCALES),
                    "crawl_date": rng.choice(["2023-06-01", "2024-03-01", "2024-11-30"])}
            w.write(Sample(f"d{j}", "lorem ipsum dolor sit amet " * 11, meta))
    Manifest(shards=w.written).save(shards)
    st = root / "store"
    if not st.exists():
        SnapshotStore.append(st / "bench.jsonl", [s for lst in store.by_origin.values() for s in lst])
    return shards, st


def e2e_child(shards: str, store: str, out: str, index: bool) -> None:
    """One `consent filter` run in this (fresh) process: prints CPU seconds, docs and peak RSS."""
    from glotta.progress import set_quiet
    from glotta.pruning.consent.filter import FilterConfig, run_filter

    set_quiet(True)
    t0 = time.process_time()
    res = run_filter(FilterConfig(shards=Path(shards), store=Path(store), out=Path(out), index=index), 0, 1)
    cpu = time.process_time() - t0
    print(json.dumps({"cpu_s": cpu, "docs": res["counters"]["total"], "maxrss_mib": peak_rss_mib(),
                      "bucket_loads": res["counters"].get("store_bucket_loads", 0)}))


def peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM restarts at exec; ru_maxrss would carry the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(*args: str, code: str | None = None) -> dict:
    """A fresh process; with `code`, a source tree of an older glotta put first on the path (before/after)."""
    env = dict(os.environ, PYTHONPATH=code) if code else None
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def naive(store: SnapshotStore, docs, agents) -> tuple[int, int]:
    kept = 0
    for doc in docs:
        origin, path = split_url(doc.meta["url"])
        snap, _ = store.at(origin, doc.meta["crawl_date"][:10])
        if snap is None or 400 <= snap.status < 500:
            kept += 1
            continue
        if snap.status >= 500:
            continue
        rp = Protego.parse(snap.robots or "")
        kept += all(rp.can_fetch(doc.meta["url"], a) for a in agents)
    return kept, len(docs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--origins", type=int, default=50_000)
    ap.add_argument("--naive-docs", type=int, default=4_000)
    ap.add_argument("--repeat", type=int, default=3, help="warm passes; the best is reported")
    ap.add_argument("--e2e-docs", type=int, default=1_000_000, help="documents of the end-to-end run (0: skip)")
    ap.add_argument("--before", default=None, help="a folder holding an older source tree as glotta/ (e.g. from "
                    "`git archive`), run end to end on the same shards for a before/after figure")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return e2e_child(args.child[0], args.child[1], args.child[2], args.child[3] == "1")
    store, docs = workload(args.origins, args.docs)
    if not docs:  # --docs 0: only the end-to-end runs
        return end_to_end(store, args)
    policy = resolve_policy("training")
    f = ConsentFilter(store, DecideConfig(agents="training", as_of="crawl"))

    # CPU time of this process (one core), so other load on a shared machine does not count.
    clock = time.process_time
    t0 = clock()
    for d in docs:
        f(d)
    cold = clock() - t0
    warm = float("inf")
    for _ in range(args.repeat):  # best of N: the machine may be shared
        f.counters.clear()
        t0 = clock()
        for d in docs:
            f(d)
        warm = min(warm, clock() - t0)
    ours = len(docs) / warm
    decided = dict(f.counters)

    # Where the time goes: documents decided per origin vs documents whose path protego must match.
    from glotta.pruning.consent.urls import split_url as _split

    sample = docs[:100_000]
    by_path = [d for d in sample if f.verdict(_split(d.meta["url"])[0], d.meta["crawl_date"]).fast is None]
    by_origin = [d for d in sample if f.verdict(_split(d.meta["url"])[0], d.meta["crawl_date"]).fast is not None]
    split = {}
    for name, part in (("origin-level", by_origin), ("path-matched", by_path)):
        best = float("inf")
        for _ in range(args.repeat):
            t0 = clock()
            for d in part:
                f(d)
            best = min(best, clock() - t0)
        split[name] = (len(part), len(part) / max(best, 1e-9))

    sub = docs[: args.naive_docs]
    best = float("inf")
    for _ in range(2):
        t0 = clock()
        naive_kept, n = naive(store, sub, policy.agents)
        best = min(best, clock() - t0)
    base = n / best
    ours_sub = sum(f.decide(d).keep for d in sub)

    c = decided
    print(f"workload: {len(docs):,} docs over {args.origins:,} origins x 2 captures, policy training ({len(policy.agents)} agents), as of crawl")
    print("decisions: " + ", ".join(f"{k}={v:,}" for k, v in sorted(c.items()) if k != "total"))
    print("rates are documents per CPU-second of this process (one core)")
    print(f"ours, cold caches (first pass) : {len(docs) / cold:12,.0f} docs/s")
    print(f"ours, warm caches (best of {args.repeat})  : {ours:12,.0f} docs/s   (target >= 200,000 per core)")
    for name, (n_part, rate) in split.items():
        print(f"  of which {name:<13}       : {rate:12,.0f} docs/s   ({100 * n_part / len(sample):.0f}% of docs)")
    print(f"naive per-document parse       : {base:12,.0f} docs/s   (on {n:,} docs)")
    print(f"ratio warm / naive             : {ours / base:12,.0f} x")
    print(f"agreement on robots: naive keeps {naive_kept:,}/{n:,}; ours keeps {ours_sub:,} "
          "(ours also applies Content-Signal, TDMRep and the full-block rule)")
    if args.e2e_docs:
        del docs, f
        end_to_end(store, args)


def end_to_end(store: SnapshotStore, args) -> None:
    if args.e2e_docs:
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
            root = Path(tmp)
            big, st = write_e2e(root, store, args.e2e_docs, args.origins)
            small, _ = write_e2e(root, store, args.e2e_docs // 4, args.origins)
            from glotta.pruning.consent.store_index import build_index

            t0 = time.process_time()
            meta = build_index(st)  # once per store change (rank 0 of the first filter run does it)
            print(f"origin index: {meta['origins']:,} origins, {meta['captures']:,} captures -> {meta['buckets']} buckets "
                  f"in {time.process_time() - t0:.1f} CPU-s (one-off)")
            runs = {
                "ours (origin index)": run_child(str(big), str(st), str(root / "o1"), "1"),
                "ours, 1/4 of the docs": run_child(str(small), str(st), str(root / "o2"), "1"),
                "baseline (whole store)": run_child(str(big), str(st), str(root / "o3"), "0"),
            }
            if args.before:
                runs["before this change"] = run_child(str(big), str(st), str(root / "o4"), "1", code=args.before)
        print(f"end to end `consent filter` (read shards, decide, write audit), {args.origins:,} origins, one process:")
        for name, r in runs.items():
            print(f"  {name:<24}: {r['docs']:>10,} docs  {r['docs'] / r['cpu_s']:10,.0f} docs/s per core  "
                  f"peak RSS {r['maxrss_mib']:8,.0f} MiB  (index buckets loaded: {r['bucket_loads']:,})")
        a, b, q = runs["ours (origin index)"], runs["baseline (whole store)"], runs["ours, 1/4 of the docs"]
        rate = lambda r: r["docs"] / r["cpu_s"]  # noqa: E731
        print(f"  ratio ours / baseline: speed {rate(a) / rate(b):.2f}x, peak memory {a['maxrss_mib'] / b['maxrss_mib']:.2f}x")
        print(f"  peak memory, {a['docs']:,} docs / {q['docs']:,} docs: {a['maxrss_mib'] / q['maxrss_mib']:.3f}x "
              "(1.00 = independent of the number of documents)")
        if "before this change" in runs:
            c = runs["before this change"]
            print(f"  ratio ours / before: speed {rate(a) / rate(c):.2f}x, peak memory {a['maxrss_mib'] / c['maxrss_mib']:.2f}x")


if __name__ == "__main__":
    main()
