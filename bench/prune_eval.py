"""Pruning methods vs random at equal compute: per-language held-out loss with confidence intervals.

The experiment a reviewer of a data-pruning paper would ask for, small enough for a CPU:
  1. corpus: `--corpus FILE.jsonl` (fields `text`, `lang`; optional `group`, e.g. the man page a
     section came from) or, without it, the demo corpus (gettext catalogs of this machine);
     exact and near duplicates removed first; per language, documents go to test / validation /
     selection pool by a stable hash of their group (never scored, selected or tuned on
     validation or test);
  2. a SentencePiece tokenizer trained on the pool;
  3. proxy: `glotta train` on the pool, LR schedule for one epoch, checkpoints kept at 10-40%,
     stopped at 40%; `glotta prune score` of the pool at those checkpoints;
  4. per regime, method and seed: `glotta prune select --keep K` (per language, token budget;
     the seed is also random's selection seed), then `glotta train` from scratch on the kept
     documents for the SAME number of tokens for every arm:
       sub    the whole pool: the arm sees its kept half `--epochs-sub` times (< 1 epoch);
       multi  a hash-chosen small slice of the pool (data-constrained): `--epochs-multi` epochs
     seed s of every arm shares the training seed s (initialisation, data order);
  5. every final model scores every validation and test document (token-mean NLL);
  6. glotta.pruning.cat.compare: per language, mean and worst language, paired deltas vs random
     with intervals from a stratified document bootstrap plus seed variance, Bonferroni-corrected
     over methods, Holm p-values; the default is chosen on validation and confirmed on test.
Prints markdown tables; `--json FILE` and `--png FILE` write the same numbers.

    python bench/prune_corpus.py --out .cache/prune_corpus.jsonl       # real corpus (Debian man pages)
    nice -n 10 python bench/prune_eval.py --corpus .cache/prune_corpus.jsonl --json r.json --png r.png
    python bench/prune_eval.py --quick                                  # CI: demo corpus, minutes
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Doc:
    text: str
    lang: str
    group: str


def _h(*parts) -> int:
    return int.from_bytes(hashlib.blake2b("\x00".join(map(str, parts)).encode(), digest_size=8).digest(), "little")


def load_corpus(path: Path | None, langs: list[str] | None, demo_docs: int, work: Path) -> list[Doc]:
    if path is not None:
        docs, bad = [], Counter()
        with path.open(encoding="utf-8") as f:
            for i, line in enumerate(f):
                try:
                    r = json.loads(line)
                    text, lang = r["text"], r["lang"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    bad["malformed_lines"] += 1
                    continue
                if not isinstance(text, str) or not text.strip():
                    bad["empty_text"] += 1
                    continue
                docs.append(Doc(text, str(lang), str(r.get("group") or r.get("id") or f"line{i}")))
        if bad:
            print(f"corpus {path}: skipped {dict(bad)}", flush=True)
    else:
        from glotta.data import iter_samples, list_shards
        from glotta.data.demo_corpus import build_demo_corpus

        logging.getLogger("glotta.data.demo_corpus").setLevel(logging.ERROR)  # unreadable system catalogs
        raw = work / "raw"
        build_demo_corpus(raw, langs=langs, max_docs_per_lang=demo_docs, shard_samples=10_000)
        docs = [Doc(s.text, s.lang, s.id) for p in list_shards(raw) for s in iter_samples(p)]
    if langs:
        docs = [d for d in docs if d.lang in set(langs)]
    if not docs:
        sys.exit("prune_eval: no documents (check --corpus / --langs)")
    return docs


def split(docs: list[Doc], heldout: int, pool_max: int, doc_chars: int, seed: int) -> tuple[dict, Counter]:
    """Dedup, cut to doc_chars, then per language: test / valid (>= `heldout` docs each, whole
    groups) and the pool (the rest, at most pool_max), in stable-hash order of the group."""
    from glotta.pruning.cat.dedup import DedupConfig, find_duplicates

    counters: Counter = Counter()
    dup = find_duplicates([d.text for d in docs], DedupConfig(mode="near"))
    counters.update(exact_duplicates=dup.exact, near_duplicates=dup.near)
    docs = [Doc(d.text[:doc_chars], d.lang, d.group) for d, k in zip(docs, dup.keep) if k]
    out: dict[str, list[Doc]] = {"test": [], "valid": [], "pool": []}
    by_lang: dict[str, list[Doc]] = defaultdict(list)
    for d in docs:
        by_lang[d.lang].append(d)
    for lang, items in sorted(by_lang.items()):
        items.sort(key=lambda d: (_h(seed, "split", d.group), d.group))
        groups: dict[str, list[Doc]] = {}
        for d in items:
            groups.setdefault(d.group, []).append(d)
        part = {"test": [], "valid": [], "pool": []}
        for g in groups.values():
            name = "test" if len(part["test"]) < heldout else "valid" if len(part["valid"]) < heldout else "pool"
            part[name] += g
        if len(part["pool"]) < heldout:
            counters[f"lang_dropped_too_small.{lang}"] += len(items)
            continue
        part["pool"] = part["pool"][:pool_max]
        for k in out:
            out[k] += part[k]
            counters[f"{k}_docs.{lang}"] = len(part[k])
    return out, counters


def write_shards(docs: list[Doc], dest: Path, prefix: str) -> Path:
    from glotta.data.manifest import Manifest
    from glotta.data.shards import Sample, ShardWriter

    with ShardWriter(dest, prefix=prefix, max_samples=500) as w:
        for i, d in enumerate(docs):
            w.write(Sample(key=f"{d.lang}-{i:06d}", text=d.text, meta={"lang": d.lang, "url": "", "source": d.group}))
    Manifest(shards=w.written).save(dest)
    return dest


def doc_ids(dest: Path) -> list[tuple[str, str]]:
    from glotta.data import iter_samples, list_shards

    return [(s.id, s.lang) for p in list_shards(dest) for s in iter_samples(p)]


@dataclass
class Setup:
    work: Path
    tok: Path
    pool: Path
    valid: Path
    test: Path
    model_sets: list[str]
    tokens_per_step: int


def train(setup: Setup, run_dir: Path, iters: int, seed: int, extra: list[str], stop_at: int = 0) -> Path:
    from glotta.train import load_train_config
    from glotta.train import train as run

    sets = [f"run_dir={run_dir}", f"train_iters={iters}", f"data.train=[{setup.pool}]", "data.valid=[]",
            f"data.tokenizer={setup.tok}", "tracking.enabled=false", "data.num_workers=0", f"seed={seed}",
            "log_interval=100000", "eval_interval=0", f"checkpoint.interval={iters}", "checkpoint.keep_last=1",
            f"optim.warmup_iters={max(1, iters // 20)}", *setup.model_sets, *extra]
    if stop_at:
        sets.append(f"exit_after_iters={stop_at}")
    run(load_train_config(REPO / "configs" / "gpt-tiny.yaml", sets))
    return run_dir / "checkpoints"


def select(setup: Setup, scores: Path, out: Path, method: str, keep: float, seed: int, exclude: list[Path]) -> Path:
    from glotta.pruning.cat.select import SelectConfig, run

    cfg = SelectConfig(scores=[scores], shards=setup.pool, out_dir=out, method=method, seed=seed,
                       exclude=exclude, histograms=False, report_docs=0,
                       selection={"fraction": keep, "unit": "tokens", "scope": "language"})
    res = run(cfg, strict=True)
    if res["budget_unmet"]:
        sys.exit(f"prune_eval: {method}: budget not met for {res['budget_unmet']}")
    return out / "exclude.txt"


def final_checkpoint(ckpt_root: Path) -> Path:
    from glotta.train import checkpoint as ckpt

    return ckpt.resolve(ckpt_root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, help="JSONL with text, lang (and optional group); default: demo corpus")
    ap.add_argument("--langs", nargs="+", default=None)
    ap.add_argument("--methods", nargs="+", default=["random", "cat", "ppl_mid", "zscore"])
    ap.add_argument("--null-control", action="store_true",
                    help="add 'random_alt' (random with other selection seeds): its interval must contain 0")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--regimes", nargs="+", default=["sub", "multi"], choices=["sub", "multi"])
    ap.add_argument("--epochs-sub", type=float, default=0.5, help="epochs of the kept half in the sub-epoch regime")
    ap.add_argument("--epochs-multi", type=float, default=4.0, help="epochs of the kept half in the multi-epoch regime")
    ap.add_argument("--heldout", type=int, default=None,
                    help="validation and test documents per language, each (default 200; 10 on the demo corpus)")
    ap.add_argument("--pool", type=int, default=None, help="most pool documents per language (default 300; 100 on demo)")
    ap.add_argument("--doc-chars", type=int, default=800)
    ap.add_argument("--vocab", type=int, default=2000)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8, help="sequences per step")
    ap.add_argument("--demo-docs", type=int, default=130, help="documents per language from the demo corpus")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--context", type=int, default=0,
                    help="also score the pool with windows carrying this many tokens of context (sensitivity)")
    ap.add_argument("--quick", action="store_true", help="CI: demo corpus, 3 languages, 2 seeds, sub-epoch only")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--reuse", action="store_true",
                    help="reuse --work's split, tokenizer, proxy, scores, trained arms and evaluations (add arms/seeds)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--png", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.langs = args.langs or ["en", "de", "fr"]
        args.methods, args.seeds, args.regimes, args.null_control = ["random", "cat"], 2, ["sub"], True
        args.heldout, args.pool, args.doc_chars, args.demo_docs, args.bootstrap = 8, 40, 400, 60, 500
        args.seq_len, args.vocab, args.epochs_sub, args.context = 64, 1000, 0.5, 32
    if args.heldout is None:
        args.heldout = 200 if args.corpus else 10
    if args.pool is None:
        args.pool = 300 if args.corpus else 100
    if not args.corpus:
        print("no --corpus: the demo corpus (gettext messages, not prose); for the real experiment build "
              "one with bench/prune_corpus.py", flush=True)
    if "random" not in args.methods:
        args.methods = ["random", *args.methods]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    result = run(args)
    print(result["tables"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({k: v for k, v in result.items() if k != "tables"}, indent=1) + "\n")
        print(f"wrote {args.json}")


def run(args) -> dict:
    import sentencepiece as spm

    from glotta.pruning.cat import compare_report as rep
    from glotta.pruning.cat.compare import HeldOut, compare, decide
    from glotta.pruning.cat.heldout import evaluate
    from glotta.pruning.cat.score import ScoreConfig
    from glotta.pruning.cat.score import run as score
    from glotta.pruning.cat.sensitivity import table as sens_table

    t0 = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="prune_eval-"))
    work.mkdir(parents=True, exist_ok=True)
    docs = load_corpus(args.corpus, args.langs, args.demo_docs, work)
    parts, counters = split(docs, args.heldout, args.pool, args.doc_chars, seed=0)
    reuse = args.reuse and (work / "scores" / "score.json").is_file()
    if reuse:  # same split (stable hashes), same tokenizer, proxy and scores; arms already trained resume
        pool, valid, test = (work / k for k in ("pool", "valid", "test"))
    else:
        pool, valid, test = (write_shards(parts[k], work / k, k) for k in ("pool", "valid", "test"))
        lines = [t for d in parts["pool"] for t in d.text.split("\n") if t.strip()]
        spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(work / "sp"),
                                       vocab_size=args.vocab, model_type="unigram", byte_fallback=True,
                                       character_coverage=0.9995, num_threads=2, minloglevel=2)
    tok = work / "sp.model"
    sp = spm.SentencePieceProcessor(model_file=str(tok))
    pool_tokens = sum(len(x) + 1 for x in sp.encode([d.text for d in parts["pool"]]))
    model_sets = [f"model.hidden_size={args.hidden}", f"model.num_layers={args.layers}",
                  f"model.seq_length={args.seq_len}", f"global_batch_size={args.batch}", "micro_batch_size=" +
                  str(min(args.batch, 8))]
    setup = Setup(work, tok, pool, valid, test, model_sets, args.batch * args.seq_len)
    langs = sorted({d.lang for d in parts["pool"]})
    print(f"corpus: {len(langs)} languages {langs}; pool {len(parts['pool'])} docs / {pool_tokens:,} tokens; "
          f"valid {len(parts['valid'])}, test {len(parts['test'])} docs; counters {dict(counters)}", flush=True)

    # Proxy: one-epoch schedule, checkpoints at 10-40%, stop at 40%.
    epoch = max(20, pool_tokens // setup.tokens_per_step)
    if reuse:
        proxy = work / "proxy" / "checkpoints"
    else:
        proxy = train(setup, work / "proxy", epoch, 0, ["checkpoint.keep_steps=[0.1, 0.2, 0.3, 0.4]"],
                      stop_at=round(0.4 * epoch))
    t_proxy = time.perf_counter()
    # Resumable: a finished shard is skipped, an interrupted one continues from its parts.
    score(ScoreConfig(checkpoints=[proxy], shards=pool, out_dir=work / "scores", micro_batch_size=16))
    t_score = time.perf_counter()
    sens = sensitivity(work, proxy, pool, args)

    # Same compute for every arm and both regimes: T tokens = epochs_sub x kept share of the pool.
    keep_tokens = args.keep * pool_tokens
    iters = max(10, round(args.epochs_sub * keep_tokens / setup.tokens_per_step))
    arms = list(dict.fromkeys(args.methods + (["random_alt"] if args.null_control else [])))
    pool_ids = doc_ids(pool)
    finals: dict[tuple[str, str, int], Path] = {}
    timings: dict[str, float] = {}
    total_runs, done = len(args.regimes) * args.seeds * len(arms), 0
    t_runs = time.perf_counter()
    for regime in args.regimes:
        regime_excl: list[Path] = []
        if regime == "multi":  # a small slice of the pool, so that T tokens are epochs_multi epochs of its kept half
            frac = args.epochs_sub / args.epochs_multi
            out = work / "multi_pool_exclude.txt"
            out.write_text("".join(f"{i}\n" for i, _ in pool_ids if _h("multi", i) / 2**64 >= frac))
            regime_excl = [out]
        t_r = time.perf_counter()
        for seed in range(args.seeds):
            for arm in arms:
                method, sel_seed = ("random", 1000 + seed) if arm == "random_alt" else (arm, seed)
                excl = select(setup, work / "scores", work / regime / "select" / f"{arm}-s{seed}", method, args.keep,
                              sel_seed, regime_excl)
                ck = train(setup, work / regime / "train" / f"{arm}-s{seed}", iters, 1 + seed,
                           [f"data.exclude=[{', '.join(str(p) for p in [excl, *regime_excl])}]"])
                finals[(regime, arm, seed)] = final_checkpoint(ck)
                done += 1
                eta = (time.perf_counter() - t_runs) / done * (total_runs - done)
                print(f"  [{time.perf_counter() - t0:6.0f} s] {regime} {arm} seed {seed}: trained {iters} steps "
                      f"({done}/{total_runs}; training ETA {eta:.0f} s, then held-out evaluation)", flush=True)
        timings[f"train_{regime}_s"] = time.perf_counter() - t_r

    # Held-out NLL of every document under every final model, validation and test.
    keys = list(finals)
    t_e = time.perf_counter()
    held = {name: evaluate_cached(work, name, keys, finals, d, tok) for name, d in (("valid", valid), ("test", test))}
    timings["eval_s"] = time.perf_counter() - t_e
    comparisons, decisions, tables = {}, {}, []
    for regime in args.regimes:
        per_split = {}
        for name, h in held.items():
            nll = {arm: np.stack([h.nll[keys.index((regime, arm, s))] for s in range(args.seeds)]) for arm in arms}
            per_split[name] = compare(HeldOut(h.langs, h.n_tokens, nll), bootstrap=args.bootstrap)
            tables.append(rep.table(per_split[name], f"{regime}, {name}"))
        comparisons[regime] = per_split
        d = decide(per_split["valid"], per_split["test"])
        decisions[regime] = d
        tables.append(f"decision ({regime}): default **{d.default}** — {d.reason}\n")
    png = rep.plot({r: c["test"] for r, c in comparisons.items()}, args.png) if args.png else None
    total = time.perf_counter() - t0
    n_params = _params(finals[keys[0]])
    setup_line = (f"setup: {len(langs)} languages; pool {pool_tokens:,} tokens; every arm {iters} steps x "
                  f"{setup.tokens_per_step} tokens = {iters * setup.tokens_per_step:,} tokens; model {n_params:,} "
                  f"parameters; {args.seeds} seeds; proxy {t_proxy - t0:.0f} s, scoring {t_score - t_proxy:.0f} s; "
                  f"total {total:.0f} s")
    tables.append(setup_line)
    tables.insert(0, "**CAT sensitivity (selection level, pool scores of the proxy)**\n\n" + sens_table(sens))
    return {"tables": "\n\n".join(tables), "sensitivity": asdict(sens), "setup": {
                "langs": langs, "pool_docs": len(parts["pool"]), "valid_docs": len(parts["valid"]),
                "test_docs": len(parts["test"]), "pool_tokens": pool_tokens, "steps_per_arm": iters,
                "tokens_per_arm": iters * setup.tokens_per_step, "parameters": n_params, "seeds": args.seeds,
                "keep": args.keep, "epochs_sub": args.epochs_sub, "epochs_multi": args.epochs_multi,
                "arms": arms, "counters": dict(counters), "corpus": str(args.corpus) if args.corpus else "demo"},
            "results": {r: {s: rep.to_json(c) for s, c in per.items()} for r, per in comparisons.items()},
            "decision": {r: rep.decision_json(d) for r, d in decisions.items()},
            "seconds": {"total": total, "proxy": t_proxy - t0, "score": t_score - t_proxy, **timings},
            "png": str(png) if png else None}


def evaluate_cached(work: Path, split_name: str, keys: list, finals: dict, shards: Path, tok: Path):
    """Held-out NLL per model, cached per (split, regime, arm, seed) so a rerun with --reuse only
    evaluates the models it added."""
    from glotta.pruning.cat.heldout import HeldOutDocs, evaluate

    cache = work / "eval" / split_name
    cache.mkdir(parents=True, exist_ok=True)
    path = {k: cache / f"{k[0]}-{k[1]}-s{k[2]}.npy" for k in keys}
    meta = cache / "docs.json"
    todo = [k for k in keys if not path[k].is_file()]
    if todo or not meta.is_file():
        h = evaluate([finals[k] for k in todo] or [finals[keys[0]]], shards, tok, micro_batch_size=32)
        for i, k in enumerate(todo):
            np.save(path[k], h.nll[i])
        meta.write_text(json.dumps({"ids": h.ids, "langs": h.langs.tolist(), "n_tokens": h.n_tokens.tolist()}))
    m = json.loads(meta.read_text())
    return HeldOutDocs(m["ids"], np.asarray(m["langs"]), np.asarray(m["n_tokens"]),
                       np.stack([np.load(path[k]) for k in keys]))


def sensitivity(work: Path, proxy: Path, pool: Path, args):
    """Selection-level sensitivity of CAT; with --context, the pool is scored again with windows
    that carry `context` tokens of the document's past (one more scoring pass)."""
    from glotta.pruning.cat.score import ScoreConfig
    from glotta.pruning.cat.score import run as score
    from glotta.pruning.cat.sensitivity import analyse
    from glotta.pruning.cat.table import nll_matrix, read_scores

    df, meta = read_scores(work / "scores")
    other = {}
    if args.context:
        out = work / f"scores_context{args.context}"
        score(ScoreConfig(checkpoints=[proxy], shards=pool, out_dir=out, micro_batch_size=16, context=args.context))
        dfc, _ = read_scores(out)
        dfc = dfc.set_index(["shard", "key"]).loc[list(zip(df["shard"], df["key"]))].reset_index()
        other[f"windows carry {args.context} tokens of context"] = nll_matrix(dfc, meta.k)
    return analyse(df, nll_matrix(df, meta.k), args.keep, other)


def _params(ckpt_dir: Path) -> int:
    from glotta.train import checkpoint as ckpt

    meta = ckpt.read_meta(ckpt_dir)
    m, v = meta["config"]["model"], int(meta["vocab_size"])
    h, layers = m["hidden_size"], m["num_layers"]
    ffn = m.get("ffn_hidden_size") or 4 * h
    # attention (q, k, v, o with grouped kv) + swiglu MLP (3 matrices) + norms; tied embeddings
    heads, groups = m["num_attention_heads"], m.get("num_query_groups") or m["num_attention_heads"]
    kv = 2 * h * (h // heads) * groups
    per_layer = 2 * h * h + kv + 3 * h * ffn + 2 * h
    return int(layers * per_layer + v * h + h)


if __name__ == "__main__":
    main()
