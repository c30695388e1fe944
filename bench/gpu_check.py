"""The prepared GPU check (run by bench/gpu_check.sh on one H100/H200-class GPU, ~8 minutes).

    python bench/gpu_check.py prepare gpu_bundle/data      # here (CPU): corpus shards + 32k SentencePiece
    python bench/gpu_check.py attention  --out DIR          # (a) document attention on CUDA = reference
    python bench/gpu_check.py converge   --data DIR --out DIR   # (b) gpt-125m bf16 vs fp32, 50 steps
    python bench/gpu_check.py throughput --data DIR --out DIR   # (c) tokens/s, TFLOP/s, MFU (125m, 1b)
    python bench/gpu_check.py all --cpu-smoke --data DIR --out DIR  # every part with tiny sizes on CPU

(a) flex_attention (the kernel glotta trains with on CUDA without TE) and SDPA with the same mask,
    forward and backward, bf16 and fp32, GQA and MHA, seq 2048, random document layouts, against a
    float64 reference. Tolerance (relative L2 error, METHOD.md): fp32 1e-3, bf16 2e-2.
(b) gpt-125m (configs/gpt-125m.yaml shape, seq 2048) trained 50 steps twice on the same batches:
    bf16 with flex attention (production path) and fp32 with the SDPA kernel (the CPU path's maths).
    Tolerance: mean relative loss difference over steps 11-50 below 1.5%, every step below 4%, and
    both curves fall by more than 1 nat.
(c) gpt-125m and gpt-1b (their recipes' shapes, seq 2048) through `glotta.train.train`, the
    TokenLoader tokenizing the shards on the fly in worker processes (data loading included),
    SentencePiece vocabulary of ~32k padded to 32,768, the largest micro-batch that fits and
    several micro-batches per step; tokens/s, TFLOP/s/GPU and MFU (989 TFLOP/s peak) are the
    trainer's own figures (train/flops.py), median over the steps after the first 5.

Each part writes <out>/<part>.json and prints one table; the shell script runs them in order.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("PYTHONWARNINGS", "ignore")
REPO = Path(__file__).resolve().parent.parent
LANGS = ["en", "de", "fr", "es", "ru", "el", "ja", "zh", "hi", "ar"]


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write(out: Path, part: str, result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{part}.json").write_text(json.dumps(result, indent=1))


# --- prepare (CPU, before the GPU run) -----------------------------------------------------------


def prepare(data: Path, vocab: int = 32000, docs_per_lang: int = 600) -> None:
    """Shards of the demo corpus (real gettext text, 10 languages) and a SentencePiece model."""
    import sentencepiece as spm

    from glotta.data import iter_samples, list_shards
    from glotta.data.demo_corpus import build_demo_corpus

    shards = data / "shards"
    build_demo_corpus(shards, langs=LANGS, max_docs_per_lang=docs_per_lang, shard_samples=500)
    lines = [x for p in list_shards(shards) for s in iter_samples(p) for x in s.text.split("\n") if x.strip()]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(data / "sp"), vocab_size=vocab, hard_vocab_limit=False,
        character_coverage=0.9995, byte_fallback=True, model_type="unigram", num_threads=os.cpu_count() or 2,
        minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(data / "sp.model"))
    log(f"prepared {shards} ({len(lines):,} lines) and {data / 'sp.model'} ({sp.get_piece_size():,} pieces)")


# --- (a) attention -------------------------------------------------------------------------------


def attention(out: Path, smoke: bool) -> bool:
    import torch

    sys.path.insert(0, str(REPO / "tests" / "train"))
    from test_attention import layouts, reference

    from glotta.train.attention import attend

    device = torch.device("cpu" if smoke else "cuda")
    b, s, d = (2, 96, 16) if smoke else (2, 2048, 128)
    gen = torch.Generator().manual_seed(0)
    rows, ok = [], True
    tol = {torch.float32: 1e-3, torch.bfloat16: 2e-2}
    # flex compiles once per (dtype, GQA) combination: 3 compiles keep this part near a minute.
    combos = [("sdpa", torch.float32, 16, 4), ("sdpa", torch.bfloat16, 16, 16), ("sdpa", torch.bfloat16, 16, 4)]
    if not smoke:  # CPU has no flex backward (torch 2.13)
        combos = [("flex", torch.float32, 16, 4), ("flex", torch.bfloat16, 16, 16), ("flex", torch.bfloat16, 16, 4)] + combos[:2]
    for kernel, dtype, heads, groups in combos:
        worst = {"out": 0.0, "dq": 0.0, "dk": 0.0, "dv": 0.0}
        lay = layouts(b, s, gen)
        for seg in [lay[0]] + lay[2:6] + [None]:  # not the one-token documents (dq = dk = 0 there)
            q = torch.randn(b, heads, s, d, generator=gen)
            k, v = torch.randn(b, groups, s, d, generator=gen), torch.randn(b, groups, s, d, generator=gen)
            g = torch.randn(b, heads, s, d, generator=gen)
            qd, kd, vd = (t.to(device, dtype).requires_grad_() for t in (q, k, v))
            o = attend(qd, kd, vd, None if seg is None else seg.to(device), d ** -0.5, kernel)
            grads = torch.autograd.grad(o, (qd, kd, vd), g.to(device, dtype))
            # float64 reference on the same device (on CPU it would take minutes at seq 2048)
            qr, kr, vr = (t.to(device, torch.float64).requires_grad_() for t in (q, k, v))
            ref = reference(qr, kr, vr, None if seg is None else seg.to(device), d ** -0.5)
            refs = torch.autograd.grad(ref, (qr, kr, vr), g.to(device, torch.float64))
            for name, got, want in zip(("out", "dq", "dk", "dv"), (o, *grads), (ref, *refs)):
                diff = (got.double() - want).norm().item()
                err = diff / want.norm().item() if want.norm() > 0 else diff
                worst[name] = max(worst[name], err if math.isfinite(err) else float("inf"))
        passed = all(e <= tol[dtype] for e in worst.values())
        ok &= passed
        rows.append({"kernel": kernel, "dtype": str(dtype).split(".")[-1], "heads/kv": f"{heads}/{groups}",
                     **{f"rel_err_{k}": v for k, v in worst.items()}, "tolerance": tol[dtype], "pass": passed})
    write(out, "attention", {"device": str(device), "seq": s, "head_dim": d, "rows": rows, "pass": ok})
    for r in rows:
        print(f"  {r['kernel']:5} {r['dtype']:9} heads {r['heads/kv']:6}  out {r['rel_err_out']:.1e}  dq {r['rel_err_dq']:.1e}  "
              f"dk {r['rel_err_dk']:.1e}  dv {r['rel_err_dv']:.1e}  (tol {r['tolerance']:.0e})  {'PASS' if r['pass'] else 'FAIL'}")
    log(f"(a) attention equivalence on {device}: {'PASS' if ok else 'FAIL'}")
    return ok


# --- training runs -------------------------------------------------------------------------------


def train_run(recipe: str, run_dir: Path, data: Path, sets: list[str]) -> list[dict]:
    """One `glotta.train.train` run in this process; returns its metrics.jsonl rows."""
    import shutil

    from glotta.train import load_train_config, train

    shutil.rmtree(run_dir, ignore_errors=True)
    base = [f"run_dir={run_dir}", f"data.train=[{data / 'shards'}]", f"data.tokenizer={data / 'sp.model'}",
            "tracking.enabled=false", "eval_interval=0", "log_interval=1", "checkpoint.enabled=false",
            "model.make_vocab_size_divisible_by=32768"]
    cfg = load_train_config(REPO / "configs" / f"{recipe}.yaml", base + sets)
    t = time.perf_counter()
    summary = train(cfg)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    log(f"{recipe} {' '.join(sets)}: {summary['step']} steps in {time.perf_counter() - t:.0f} s")
    return [r for r in rows if "loss" in r]


def smoke_model(smoke: bool) -> list[str]:
    return ["model.num_layers=2", "model.hidden_size=64", "model.num_attention_heads=4", "model.num_query_groups=2",
            "model.seq_length=64", "model.make_vocab_size_divisible_by=64", "data.num_workers=0"] if smoke else []


def converge(data: Path, out: Path, smoke: bool) -> bool:
    steps = 8 if smoke else 50
    common = smoke_model(smoke) + [
        f"train_iters={steps}", "optim.warmup_iters=5", "optim.lr=1e-3", "optim.spike_factor=0",
        "micro_batch_size=2" if smoke else "micro_batch_size=8", "global_batch_size=4" if smoke else "global_batch_size=16"]
    # CPU smoke: megatron's bf16 optimizer wants CUDA tensors, so both runs are fp32 there (the
    # comparison then only shows that the part runs).
    half = "model.precision=fp32" if smoke else "model.precision=bf16"
    bf16 = train_run("gpt-125m", out / "run_bf16", data, common + [half, "model.attention_backend=auto"])
    fp32 = train_run("gpt-125m", out / "run_fp32", data, common + ["model.precision=fp32", "model.attention_backend=sdpa"])
    a, b = [r["loss"] for r in bf16], [r["loss"] for r in fp32]
    rel = [abs(x - y) / y for x, y in zip(a, b)]
    tail = rel[10:] if len(rel) > 10 else rel
    result = {"steps": steps, "loss_bf16": a, "loss_fp32": b, "rel_diff": rel, "mean_rel_diff_after_10": statistics.mean(tail),
              "max_rel_diff": max(rel), "drop_bf16": a[0] - min(a[-5:]), "drop_fp32": b[0] - min(b[-5:])}
    ok = result["mean_rel_diff_after_10"] < 0.015 and result["max_rel_diff"] < 0.04 and (
        smoke or (result["drop_bf16"] > 1.0 and result["drop_fp32"] > 1.0))
    result["pass"] = ok
    write(out, "converge", result)
    for i in range(0, steps, max(1, steps // 10)):
        print(f"  step {i + 1:3}  bf16 {a[i]:.4f}  fp32 {b[i]:.4f}  rel diff {100 * rel[i]:.2f}%")
    log(f"(b) bf16 vs fp32 over {steps} steps: mean rel diff (steps 11+) {100 * result['mean_rel_diff_after_10']:.2f}%, "
        f"max {100 * result['max_rel_diff']:.2f}%, loss drop {result['drop_bf16']:.2f} / {result['drop_fp32']:.2f}: "
        f"{'PASS' if ok else 'FAIL'}")
    return ok


# Per recipe: micro-batch (125m: the converge part's, so the compiled attention is reused), micro-
# batches per step (a global batch of 128 / 64 sequences = 262k / 131k tokens), steps.
THROUGHPUT = {"gpt-125m": (8, 16, 20), "gpt-1b": (8, 8, 16)}


def throughput(data: Path, out: Path, smoke: bool) -> None:
    results = {}
    for recipe, (mbs, nmb, steps) in THROUGHPUT.items():
        if smoke:
            mbs, nmb, steps = 2, 2, 8
        sets = smoke_model(smoke) + [f"train_iters={steps}", f"micro_batch_size={mbs}", f"global_batch_size={mbs * nmb}",
                                     "optim.warmup_iters=2", "optim.schedule=constant"] + ([] if smoke else ["data.num_workers=8"])
        rows = train_run(recipe, out / f"run_{recipe}", data, sets)[5:]
        med = {k: statistics.median(r[k] for r in rows) for k in ("tokens_per_s", "tflops_per_gpu", "step_time_s")}
        med["mfu"] = statistics.median(r["mfu"] for r in rows) if all("mfu" in r for r in rows) else None
        results[recipe] = {"micro_batch_size": mbs, "global_batch_size": mbs * nmb, "steps": steps, **med}
        mfu = f"{100 * med['mfu']:.1f}%" if med["mfu"] is not None else "n/a (no H100/H200 peak)"
        print(f"  {recipe:9} mbs {mbs:2} gbs {mbs * nmb:3}  {med['tokens_per_s']:>10,.0f} tokens/s  "
              f"{med['tflops_per_gpu']:6.1f} TFLOP/s/GPU  MFU {mfu}  step {med['step_time_s']:.3f} s")
    write(out, "throughput", results)
    log("(c) throughput measured")


def environment() -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    for mod in ("megatron.core", "transformer_engine"):
        try:
            info[mod] = __import__(mod, fromlist=["__version__"]).__version__
        except Exception:
            info[mod] = None
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=["prepare", "attention", "converge", "throughput", "all"])
    ap.add_argument("dir", nargs="?", help="prepare: output data directory")
    ap.add_argument("--data", type=Path, default=REPO / "gpu_bundle" / "data")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")))
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU: checks that every part runs")
    ap.add_argument("--vocab", type=int, default=32000, help="prepare: SentencePiece vocabulary size")
    ap.add_argument("--docs-per-lang", type=int, default=600, help="prepare: documents per language")
    args = ap.parse_args()
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    if args.part == "prepare":
        prepare(Path(args.dir or args.data), args.vocab, args.docs_per_lang)
        return
    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device (use --cpu-smoke to exercise the script on CPU)")
    log(f"environment: {environment()}")
    write(args.out, "environment", environment())
    ok = True
    if args.part in ("attention", "all"):
        ok &= attention(args.out, args.cpu_smoke)
    if args.part in ("converge", "all"):
        ok &= converge(args.data, args.out, args.cpu_smoke)
    if args.part in ("throughput", "all"):
        throughput(args.data, args.out, args.cpu_smoke)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
