"""`glotta consent filter`: decide every document of a shard set, write the audit and an exclude list.

Work is split by RANK / WORLD_SIZE over shards (shard i goes to rank i % WORLD_SIZE). Each rank
writes, under `out/`:
  audit/part-RRRRR.parquet     one row per document: decision, reason code and evidence
  exclude/part-RRRRR.txt       `shard.tar/KEY` of every dropped document
  stats/RRRRR.json             counters (total/kept/dropped_<reason>/flag_<name>, read_*)
  completions/RRRRR            marker holding the run fingerprint (a rerun with the same inputs skips)
  shards/                      with rewrite=true: the kept documents as a new shard set
The rank that completes last merges `exclude.txt` and `summary.json` (no barrier needed).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from glotta.data.manifest import atomic_write_text, merge_parts, save_part
from glotta.data.shards import ShardWriter, iter_samples, list_shards
from glotta.errors import ConfigError, DataError
from glotta.progress import track
from glotta.pruning.consent.audit import AUDIT_SCHEMA, AuditWriter  # noqa: F401 (AUDIT_SCHEMA: re-exported)
from glotta.pruning.consent.decide import ConsentFilter, DecideConfig
from glotta.pruning.consent.shard_meta import iter_meta
from glotta.pruning.consent.snapshots import store_fingerprint
from glotta.pruning.consent.store_index import open_store

URL_REASONS = {"no_url", "bad_scheme", "no_host", "bad_host"}


class FilterConfig(DecideConfig):
    shards: Path | None = None  # input shard set (directory with manifest.json or *.tar)
    store: Path | None = None  # snapshot store: a directory of JSONL parts (indexed) or one .jsonl file (read whole)
    out: Path | None = None  # output directory
    rewrite: bool = False  # also write the kept documents as a new shard set under out/shards
    strict: bool = False  # a document without a usable url, or a corrupt shard, is an error
    shard_samples: int = 10_000  # samples per rewritten shard
    # load the store through its origin-hash Parquet index (rank 0 builds a missing one; a stale one
    # is refused: `glotta consent index` rebuilds it)
    index: bool = True
    max_buckets: int = 1024  # index buckets a rank keeps loaded (1024 = all: loads only those its docs touch, never evicts)


def rank_world() -> tuple[int, int]:
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return rank, world


def _run_id(cfg: FilterConfig, policy_version: str, world_size: int) -> str:
    """Same for every rank of one run: config, agent list, store and world size."""
    h = hashlib.sha256(cfg.model_dump_json().encode())
    h.update(f"{policy_version}:{world_size}:{store_fingerprint(cfg.store)}".encode())
    return h.hexdigest()[:16]


def _fingerprint(run_id: str, shards: list[Path]) -> str:
    h = hashlib.sha256(run_id.encode())
    for s in shards:
        h.update(f"{s.name}:{s.stat().st_size}".encode())
    return h.hexdigest()[:16]


def run_filter(cfg: FilterConfig, rank: int | None = None, world_size: int | None = None) -> dict:
    if cfg.shards is None or cfg.store is None or cfg.out is None:
        raise ConfigError("consent filter needs shards, store and out (e.g. shards/ --store snapshots/ --out consent/)")
    if rank is None or world_size is None:
        rank, world_size = rank_world()
    shards = list_shards(cfg.shards)
    mine = shards[rank::world_size]
    store = open_store(cfg.store, rank, world_size, lazy=cfg.index, max_buckets=cfg.max_buckets)
    filt = ConsentFilter(store, cfg)
    out = Path(cfg.out)
    for d in ("audit", "exclude", "stats", "completions"):
        (out / d).mkdir(parents=True, exist_ok=True)
    run_id = _run_id(cfg, filt.policy.version, world_size)
    fp = _fingerprint(run_id, mine)
    done = out / "completions" / f"{rank:05d}"
    stats_path = out / "stats" / f"{rank:05d}.json"
    if done.is_file() and done.read_text().strip() == fp and stats_path.is_file():
        counters = Counter(json.loads(stats_path.read_text())["counters"])
        return _finish(out, world_size, rank, counters, run_id, skipped=True)

    audit_path = out / "audit" / f"part-{rank:05d}.parquet"
    excl_path = out / "exclude" / f"part-{rank:05d}.txt"
    tmp_audit, tmp_excl = audit_path.with_name("." + audit_path.name + ".tmp"), excl_path.with_name("." + excl_path.name + ".tmp")
    read = Counter()
    rewriter = ShardWriter(out / "shards", prefix="consent", rank=rank, max_samples=cfg.shard_samples) if cfg.rewrite else None
    policy, version = filt.policy.name, filt.policy.version
    examples: dict[str, list[str]] = {}  # counter -> the first documents it counted, named
    audit = AuditWriter(tmp_audit, policy, version, cfg.as_of)
    # Nothing per document is kept: each row goes to a bounded record batch, each drop to the
    # exclude file, each kept document (with --rewrite) to the shard writer.
    try:
        with open(tmp_excl, "w", encoding="utf-8") as excl:
            decide, count, add = filt.decide_meta, filt.count, audit.add
            current: list = [None]  # with --rewrite: the Sample whose metadata is being decided
            for shard in track(mine, "consent filter"):
                name = shard.name
                if rewriter is None:  # metadata and text sizes only (the C++ reader's index pass): no text copied
                    docs = iter_meta(shard, read, cfg.strict)
                else:  # the kept documents are written again: read them whole
                    docs = _whole(shard, read, cfg.strict, current)
                for key, nbytes, meta in docs:
                    d = count(decide(meta))
                    if d.flags and "bad_crawl_date" in d.flags:
                        if cfg.strict:
                            raise DataError(f"{name}/{key}: crawl_date {meta.get('crawl_date')!r} is not ISO 8601, "
                                            "RFC 2822, YYYYMMDD or a 14-digit Wayback timestamp (strict)")
                        _example(examples, "bad_crawl_date", f"{name}/{key}", meta.get("crawl_date"))
                    elif d.reason in URL_REASONS:
                        if cfg.strict:
                            raise DataError(f"{name}/{key}: {d.rule or d.reason} (strict: every document needs an http(s) url)")
                        _example(examples, d.reason, f"{name}/{key}", meta.get("url"))
                    add(name, key, meta.get("url"), meta.get("lang") or "und", nbytes, meta.get("crawl_date"), d)
                    if not d.keep:
                        excl.write(f"{name}/{key}\n")
                    elif rewriter is not None:
                        rewriter.write(current[0])
        audit.close()
    except BaseException:
        audit.writer.close()
        if rewriter is not None:
            rewriter.abort()
        raise
    os.replace(tmp_audit, audit_path)
    os.replace(tmp_excl, excl_path)
    if rewriter is not None:
        rewriter.close()
        save_part(out / "shards", rank, world_size, {"complete": True, "shards": [asdict(i) for i in rewriter.written]})
        merge_parts(out / "shards", world_size, {"source": str(cfg.shards), "stage": "consent filter", "policy": policy})
    counters = filt.counters + Counter({f"read_{k}": v for k, v in read.items() if k != "samples"})
    if getattr(store, "bucket_loads", 0):
        counters["store_bucket_loads"] = store.bucket_loads
    if store.torn_lines:
        counters["store_torn_lines"] = store.torn_lines
    atomic_write_text(stats_path, json.dumps({"rank": rank, "world_size": world_size, "fingerprint": fp, "run_id": run_id,
                                              "policy": policy, "policy_version": version,
                                              "config": json.loads(cfg.model_dump_json()),
                                              "counters": dict(counters), "examples": examples}, indent=1) + "\n")
    atomic_write_text(done, fp + "\n")
    return _finish(out, world_size, rank, counters, run_id, skipped=False)


def _whole(shard: Path, read: Counter, strict: bool, current: list):
    """iter_meta's (key, text bytes, metadata) from whole samples, each Sample left in current[0]."""
    for s in iter_samples(shard, counters=read, strict=strict):
        current[0] = s
        text = s.text
        yield s.key, len(text) if text.isascii() else len(text.encode("utf-8")), s.meta


def _concat_atomic(parts: list[Path], target: Path) -> None:
    """Concatenate the ranks' exclude parts into `target` without holding them in memory
    (10^9 lines at the largest scale), then rename into place."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as dst:
        for p in parts:
            with open(p, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, target)


def _example(examples: dict[str, list[str]], counter: str, doc_id: str, value) -> None:
    lst = examples.setdefault(counter, [])
    if len(lst) < 20:
        lst.append(f"{doc_id} {value!r}")


def _finish(out: Path, world_size: int, rank: int, counters: Counter, run_id: str, skipped: bool) -> dict:
    """Merge exclude.txt and summary.json once every rank of this run (same run_id) is complete."""
    result = {"rank": rank, "world_size": world_size, "skipped": skipped, "counters": dict(counters), "out": str(out)}
    stats = []
    for r in range(world_size):
        path = out / "stats" / f"{r:05d}.json"
        if not (out / "completions" / f"{r:05d}").is_file() or not path.is_file():
            return result
        st = json.loads(path.read_text())
        if st.get("run_id") != run_id:  # left over from a run with other inputs: that rank reruns
            return result
        stats.append(st)
    total = Counter()
    examples: dict[str, list[str]] = {}
    for st in stats:
        total.update(st["counters"])
        for k, v in st.get("examples", {}).items():
            examples.setdefault(k, []).extend(v[: 20 - len(examples.get(k, []))])
    _concat_atomic([out / "exclude" / f"part-{r:05d}.txt" for r in range(world_size)], out / "exclude.txt")
    atomic_write_text(out / "summary.json", json.dumps({"world_size": world_size, "counters": dict(total),
                                                        "examples": examples}, indent=1) + "\n")
    result.update(merged=True, total=dict(total), exclude=str(out / "exclude.txt"), examples=examples)
    return result
