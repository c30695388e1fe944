"""CAT and its variants vs random (and full data) at equal compute: held-out loss per language.

Pipeline, every step through the `glotta` CLI as a user would run it:
  1. corpus: the demo corpus (real gettext text), documents cut to --doc-chars; 10% of each
     language's documents held out as the evaluation set (never scored, selected or tuned on);
  2. tokenizer: SentencePiece on the training split;
  3. proxy: `glotta train` (configs/gpt-tiny.yaml) with an LR schedule sized for one epoch,
     keeping checkpoints at 10/20/30/40% and stopping after 40% (only early checkpoints are used);
  4. `glotta prune score` at the kept checkpoints, then `glotta prune select --keep 0.5` per
     method (per language, tokens);
  5. stage 2: `glotta train` from scratch for --steps on each selection and on the full data,
     --seeds seeds each; held-out loss per language from the trainer's final evaluation.
Prints per-language held-out NLL, mean, worst language, seed spread and mean minus random.

    python bench/prune_eval.py                      # random, cat, zscore, ppl_mid, full; 2 seeds (~10 min on 2 cores)
    python bench/prune_eval.py --methods all --seeds 3 --langs en de fr es ru ja zh ar hi el
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ALL_METHODS = ["cat", "std", "mean_abs_change", "drop", "nll_var", "cv", "rank_change", "zscore",
               "random", "ppl_low", "ppl_mid", "ppl_high", "length"]


def glotta(*args, timeout=1800) -> str:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, "-m", "glotta.launch.cli", *map(str, args)], env=env, capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode != 0:
        sys.exit(f"glotta {' '.join(map(str, args[:2]))} failed:\n{r.stderr[-3000:]}")
    return r.stdout


def build_corpus(work: Path, langs: list[str], docs: int, chars: int) -> tuple[Path, Path, Path]:
    from glotta.data import ShardWriter, iter_samples, list_shards
    from glotta.data.demo_corpus import build_demo_corpus
    from glotta.data.manifest import Manifest
    from glotta.seeding import stable_seed

    import logging

    logging.getLogger("glotta.data.demo_corpus").setLevel(logging.ERROR)  # unreadable system catalogs
    raw = work / "raw"
    build_demo_corpus(raw, langs=langs, max_docs_per_lang=docs, shard_samples=10_000)
    samples = [s for p in list_shards(raw) for s in iter_samples(p)]
    by_lang: dict[str, list] = {}
    for s in samples:
        s.text = s.text[:chars]
        by_lang.setdefault(s.lang, []).append(s)
    held = set()
    for lang, items in by_lang.items():
        items.sort(key=lambda s: stable_seed("heldout", s.id))
        held |= {s.id for s in items[: max(1, len(items) // 10)]}
    out = {}
    for name, keep in (("train", lambda s: s.id not in held), ("valid", lambda s: s.id in held)):
        d = work / name
        with ShardWriter(d, prefix=name, max_samples=200) as w:
            for s in samples:
                if keep(s):
                    w.write(s)
        Manifest(shards=w.written).save(d)
        out[name] = d
    import sentencepiece as spm

    lines = [t for s in samples if s.id not in held for t in s.text.split("\n") if t.strip()]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(work / "sp"), vocab_size=2000,
                                   model_type="unigram", byte_fallback=True, character_coverage=0.98,
                                   num_threads=2, minloglevel=2)
    return out["train"], out["valid"], work / "sp.model"


def train(run_dir: Path, train_dir: Path, valid_dir: Path, tok: Path, iters: int, seed: int, extra: list[str]) -> dict:
    sets = [f"data.train=[{train_dir}]", f"data.valid=[{valid_dir}]", f"data.tokenizer={tok}",
            "tracking.enabled=false", "data.num_workers=0", f"seed={seed}", "log_interval=1000", *extra]
    glotta("train", "-c", REPO / "configs" / "gpt-tiny.yaml", "--run-dir", run_dir, "--iters", iters,
           *[a for s in sets for a in ("--set", s)])
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    evals = [json.loads(x) for x in lines if "val/loss" in x]
    return evals[-1] if evals else {}


def tokens_of(train_dir: Path, tok: Path) -> int:
    import sentencepiece as spm

    from glotta.data import iter_samples, list_shards

    sp = spm.SentencePieceProcessor(model_file=str(tok))
    return sum(len(x) + 1 for p in list_shards(train_dir) for x in sp.encode([s.text for s in iter_samples(p)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--langs", nargs="+", default=["en", "de", "fr", "es", "ru", "ja", "zh", "ar"])
    ap.add_argument("--docs", type=int, default=40, help="documents per language")
    ap.add_argument("--doc-chars", type=int, default=2000)
    ap.add_argument("--methods", nargs="+", default=["random", "cat", "zscore", "ppl_mid"])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=0, help="stage-2 steps (default: one epoch of the kept half)")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    methods = ALL_METHODS if args.methods == ["all"] else args.methods
    work = args.work or Path(tempfile.mkdtemp(prefix="prune_eval-"))
    t0 = time.perf_counter()
    train_dir, valid_dir, tok = build_corpus(work, args.langs, args.docs, args.doc_chars)
    tokens = tokens_of(train_dir, tok)
    per_step = 8 * 64  # gpt-tiny: global_batch_size x seq_length
    epoch = max(20, tokens // per_step)
    steps = args.steps or max(10, int(epoch * args.keep))
    valid_iters = max(2, tokens_of(valid_dir, tok) // per_step)
    print(f"corpus: {len(args.langs)} languages, {tokens:,} training tokens (1 epoch = {epoch} steps); "
          f"stage 2: {steps} steps; eval: {valid_iters} batches; work dir {work}", flush=True)
    # Proxy: LR schedule for one epoch, checkpoints at 10-40%, stop at 40%.
    proxy = work / "proxy"
    train(proxy, train_dir, valid_dir, tok, epoch, 0,
          ["checkpoint.keep_steps=[0.1, 0.2, 0.3, 0.4]", f"exit_after_iters={round(0.4 * epoch)}", "eval_interval=0",
           f"checkpoint.interval={epoch}"])
    t_proxy = time.perf_counter()
    score = json.loads(glotta("prune", "score", "--checkpoints", proxy / "checkpoints", "--shards", train_dir,
                              "--out", work / "scores", "--json"))
    t_score = time.perf_counter()
    rows: dict[str, list[dict]] = {}
    for method in methods + ["full"]:
        exclude = []
        if method != "full":
            out = work / "select" / method
            glotta("prune", "select", "--scores", work / "scores", "--shards", train_dir, "--out", out,
                   "--method", method, "--keep", args.keep, "--set", "histograms=false", "--json")
            exclude = [f"data.exclude=[{out / 'exclude.txt'}]"]
        for seed in range(args.seeds):
            ev = train(work / "stage2" / f"{method}-s{seed}", train_dir, valid_dir, tok, steps, seed + 1,
                       exclude + [f"eval_interval={steps}", f"eval_iters={valid_iters}", "optim.warmup_iters=2"])
            rows.setdefault(method, []).append({k.split("/")[-1]: v for k, v in ev.items() if k.startswith("val/loss/")})
            print(f"  {method} seed {seed}: mean held-out NLL {np.mean(list(rows[method][-1].values())):.4f}", flush=True)
    report(rows, args.langs, score, t_proxy - t0, t_score - t_proxy, time.perf_counter() - t0)


def report(rows: dict[str, list[dict]], langs: list[str], score: dict, t_proxy: float, t_score: float, total: float):
    langs = [lang for lang in langs if all(lang in r for rs in rows.values() for r in rs)]
    print(f"\nheld-out NLL (nats/token, lower is better), mean over seeds; seeds = {len(next(iter(rows.values())))}")
    print(f"{'selection':<16}" + "".join(f"{lang:>7}" for lang in langs) + f"{'mean':>8}{'worst':>12}{'spread':>8}{'-random':>9}")
    base = None
    if "random" in rows:
        base = np.mean([np.mean([r[lang] for lang in langs]) for r in rows["random"]])
    for method, rs in rows.items():
        per_lang = {lang: float(np.mean([r[lang] for r in rs])) for lang in langs}
        means = [np.mean([r[lang] for lang in langs]) for r in rs]
        worst = max(per_lang, key=per_lang.get)
        diff = f"{np.mean(means) - base:+9.3f}" if base is not None else ""
        print(f"{method:<16}" + "".join(f"{per_lang[lang]:7.3f}" for lang in langs)
              + f"{np.mean(means):8.3f}{worst + ' ' + format(per_lang[worst], '.2f'):>12}{max(means) - min(means):8.3f}{diff}")
    rates = [r["tokens_per_s_per_device"] for r in score["throughput"]]
    print(f"\nproxy {t_proxy:.0f} s; scoring {len(rates)} checkpoints {t_score:.0f} s "
          f"({np.mean(rates):,.0f} tokens/s per device); total {total:.0f} s")


if __name__ == "__main__":
    main()
